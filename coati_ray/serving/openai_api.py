"""The OpenAI API's wire format, checked and shaped without Ray or a model: what a request may say, and what
the answer looks like, so the official `openai` client (and lm-evaluation-harness's `local-completions` /
`local-chat-completions`) read our server as they read OpenAI's.

A bad request raises `APIError(status, message, param, code)`; `error_body` is OpenAI's
`{"error": {"message", "type", "param", "code"}}`. Every check here runs before a request reaches the
model's batch, so one bad request never fails the requests batched with it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Optional, Union

MAX_STOP = 4  # OpenAI's limit on `stop` sequences
MAX_LOGPROBS = 5  # completions' `logprobs`: at most this many alternatives per token, as OpenAI
ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class APIError(Exception):
    """A request the server refuses: an HTTP status (4xx) and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "invalid_request_error",
                             413: "invalid_request_error"}.get(status, "invalid_request_error" if status < 500
                                                                else "server_error")


def error_body(err: APIError) -> dict:
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}


@dataclass
class Sampling:
    """What one request asks of the sampler. temperature 0 is greedy; seed None draws a fresh stream."""

    max_tokens: Optional[int]  # None: as many as the context allows, up to the server's default
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list = field(default_factory=list)
    seed: Optional[int] = None


@dataclass
class ChatRequest:
    messages: list
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


@dataclass
class CompletionRequest:
    prompts: list  # each a text or a list of token ids
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: Optional[int] = None


def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise APIError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}", key,
                       "invalid_type")
    if not lo <= value <= hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {value}", key, "invalid_value")
    return value


def _check_model(body: dict, served: str) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter", "model", "missing_required_parameter")
    if model != served:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{served}' (GET /v1/models)",
                       "model", "model_not_found")


def _sampling(body: dict, max_n: int, context: int) -> Sampling:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", None, 0, 2**31 - 1, integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP} of them", "stop",
                       "invalid_value")
    return Sampling(max_tokens=max_tokens,
                    temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
                    top_p=float(_number(body, "top_p", 1.0, 0.0, 1.0)) or 1e-6,  # 0: keep the top token only
                    n=_number(body, "n", 1, 1, max_n, integer=True), stop=stop,
                    seed=_number(body, "seed", None, -2**63, 2**63 - 1, integer=True))


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise APIError(400, f"'stream' must be a boolean, got {stream!r}", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options", "invalid_type")
    return bool(stream), bool(options.get("include_usage", False))


def _content(content, j: int):
    """A message's content: a string, or OpenAI's list of parts of which only text parts are read."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
            raise APIError(400, f"messages[{j}].content: only text parts are supported by this model",
                           f"messages[{j}].content", "invalid_value")
        return "".join(p["text"] for p in content)
    raise APIError(400, f"messages[{j}].content must be a string or a list of text parts",
                   f"messages[{j}].content", "invalid_type")


def parse_chat(body, served: str, max_n: int, context: int) -> ChatRequest:
    """POST /v1/chat/completions's body -> a ChatRequest whose messages are the template's {role, content}."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", None, "invalid_json")
    _check_model(body, served)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content}", "messages", "invalid_value")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLE_NAMES:
            raise APIError(400, f"messages[{j}] needs a 'role' of {', '.join(ROLE_NAMES)}", f"messages[{j}].role",
                           "invalid_value")
        content = _content(m.get("content"), j)
        if content is None and not (m["role"] == "assistant" and m.get("tool_calls")):
            raise APIError(400, f"messages[{j}] needs 'content'", f"messages[{j}].content", "invalid_value")
        message = {k: v for k, v in m.items() if k in ("tool_calls", "name", "tool_call_id") and v is not None}
        out.append({**message, "role": ROLE_NAMES[m["role"]], "content": content or ""})
    stream, include_usage = _stream(body)
    return ChatRequest(out, _sampling(body, max_n, context), stream, include_usage)


def _is_ids(x) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_completion(body, served: str, max_n: int, context: int, max_prompts: int = 64) -> CompletionRequest:
    """POST /v1/completions's body: `prompt` a text, token ids, or a list of either (one choice group each)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", None, "invalid_json")
    _check_model(body, served)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise APIError(400, "'prompt' must be a string, a list of token ids, or a list of either", "prompt",
                       "invalid_value")
    if len(prompts) > max_prompts:
        raise APIError(400, f"at most {max_prompts} prompts per request, got {len(prompts)}", "prompt",
                       "invalid_value")
    stream, include_usage = _stream(body)
    logprobs = _number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise APIError(400, f"'echo' must be a boolean, got {echo!r}", "echo", "invalid_type")
    if stream and (echo or logprobs is not None):
        raise APIError(400, "'echo' and 'logprobs' are not supported with stream", "stream", "invalid_value")
    return CompletionRequest(prompts, _sampling(body, max_n, context), stream, include_usage, echo, logprobs)


def resolve_max_tokens(prompt_tokens: int, asked: Optional[int], context: int, default: int, param: str) -> int:
    """The new tokens a request gets: what it asked (refused when prompt + asked exceeds the context), else the
    server's default cut to what the context has left (refused when the prompt alone fills it)."""
    if asked is not None and prompt_tokens + asked > context:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_tokens + asked} tokens ({prompt_tokens} in the {param}, {asked} in the "
                            "completion). Please reduce the length of the messages or completion.",
                       param, "context_length_exceeded")
    if asked is None and prompt_tokens >= context:
        raise APIError(400, f"This model's maximum context length is {context} tokens, and the {param} alone "
                            f"take {prompt_tokens}. Please shorten them.", param, "context_length_exceeded")
    return asked if asked is not None else min(default, context - prompt_tokens)


# ---------------------------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def models_response(served: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": served, "object": "model", "created": created,
                                        "owned_by": "coati_ray"}]}


def chat_response(rid: str, served: str, texts: list[str], reasons: list[str], prompt_tokens: int,
                  completion_tokens: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": served,
            "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} for i, (text, reason) in enumerate(zip(texts, reasons))],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(rid: str, served: str, created: int, index: int, delta: dict,
               finish_reason: Optional[str] = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def completion_response(rid: str, served: str, choices: list[dict], prompt_tokens: int,
                        completion_tokens: int) -> dict:
    """`choices`: {text, finish_reason, logprobs (None or OpenAI's legacy logprobs object)}, in index order."""
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": served,
            "system_fingerprint": None,
            "choices": [{"index": i, **c} for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(rid: str, served: str, created: int, index: int, text: str,
                     finish_reason: Optional[str] = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": served,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def legacy_logprobs(tokens: list[str], token_logprobs: list, top: list, offsets: list[int]) -> dict:
    """Completions' `logprobs` object: each token's text, log-probability (None for the first prompt token), the
    top alternatives as {token text: log-prob}, and where each token starts in the returned text."""
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def sse(data: Union[dict, str]) -> str:
    """One server-sent event as OpenAI streams them: `data: <json>` and a blank line; "[DONE]" ends a stream."""
    import json

    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
