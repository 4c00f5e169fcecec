"""Serving a trained policy behind an OpenAI-compatible API, without Ray: request checks and response shapes
(`openai_api`), the batched decode that answers many requests at once (`engine`). The Ray Serve deployment that
puts them behind HTTP is actors/serve.py; the command is launch/serve.py."""
