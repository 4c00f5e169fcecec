"""A trained policy as a Ray Serve application with an OpenAI-compatible API.

    url = start_server(cfg)   # cfg: a validated ServeConfig; Ray already connected (actors.cluster.connect)

Routes (under cfg.route_prefix): GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both also with
`stream: true`, server-sent events), GET /stats (this replica's batch sizes and token counts), GET /health.

Each replica loads the model as `launch.generate` does (coati_ray.inference.Policy: LoRA adapters, int8/int4,
the chat template it trained with) and answers through Serve's request batching: every sequence a request asks
for (n of them) is one item of `_decode`, a streaming batch handler that decodes up to max_batch_size sequences
together (coati_ray/serving/engine.py) and hands each caller its own steps. Requests are checked and tokenized
before they join a batch (coati_ray/serving/openai_api.py), so a bad one gets its 4xx alone. Batch sizes go to
Ray's metrics (`coati_serve_batch_size`, Prometheus / Grafana) and to /stats.
"""


import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from coati_ray.serving import openai_api as api
from coati_ray.serving.engine import Row

app = FastAPI(title="coati_ray OpenAI-compatible server")


def _error(err: api.APIError) -> JSONResponse:
    return JSONResponse(api.error_body(err), status_code=err.status)


@app.exception_handler(api.APIError)
async def _api_error(request: Request, err: api.APIError):
    return _error(err)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    return _error(api.APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", None, code))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError):
    return _error(api.APIError(400, str(err), None, "invalid_request"))


@app.exception_handler(Exception)
async def _server_error(request: Request, err: Exception):
    """A fault in the server itself answers 500 in OpenAI's shape; the replica goes on serving."""
    return _error(api.APIError(500, f"the server failed on this request ({type(err).__name__}: {err})", None,
                               "server_error"))


def token_hash(token: str) -> str:
    """Replicas keep the bearer token's SHA-256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@serve.deployment(name="OpenAIServer")
@serve.ingress(app)
class OpenAIServer:
    def __init__(self, cfg, key_hash: Optional[str] = None):
        import torch
        from ray.util import metrics

        from coati_ray.data.template import ChatFormat
        from coati_ray.inference import Policy
        from coati_ray.serving.engine import Engine

        torch.set_num_threads(cfg.threads())
        self.cfg, self.key_hash, self.name = cfg, key_hash, cfg.model_name
        self.context, self.created = cfg.context(), int(time.time())
        self.policy = Policy.load(cfg)
        self.format = ChatFormat.of(self.policy.tokenizer)
        self.engine = Engine(self.policy.actor.model, self.policy.tokenizer, self.format.stop_token_ids,
                             self.policy.device)
        self._decode.set_max_batch_size(cfg.max_batch_size)
        self._decode.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        tags = {"app": cfg.app_name}
        self.batch_metric = metrics.Histogram("coati_serve_batch_size", "sequences decoded together per batch",
                                              boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("app",))
        self.latency_metric = metrics.Histogram("coati_serve_request_seconds", "request latency, first byte to "
                                                "last", boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60], tag_keys=("app",))
        self.tokens_metric = metrics.Counter("coati_serve_tokens", "prompt and completion tokens",
                                             tag_keys=("app", "kind"))
        for m in (self.batch_metric, self.latency_metric, self.tokens_metric):
            m.set_default_tags(tags)
        self.stats = {"requests": 0, "errors": 0, "sequences": 0, "batches": 0, "prompt_tokens": 0,
                      "completion_tokens": 0}
        self.batch_sizes: Counter = Counter()

    # ------------------------------------------------------------------ the batch

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05)
    async def _decode(self, rows: list[Row]):
        """Serve's batching: the rows of whichever requests arrived together, decoded as one batch; each caller
        receives its row's Steps (None for a step that gave it nothing), then the end of its stream."""
        self.batch_sizes[len(rows)] += 1
        self.stats["batches"] += 1
        self.stats["sequences"] += len(rows)
        self.batch_metric.observe(len(rows))
        steps = self.engine.steps(rows)
        finished = [False] * len(rows)
        while not all(finished):
            step = await asyncio.to_thread(next, steps, None)  # the event loop keeps taking requests meanwhile
            if step is None:
                break
            out = []
            for i, s in enumerate(step):
                out.append(StopIteration if finished[i] else s)
                finished[i] = finished[i] or (s is not None and s.finish_reason is not None)
            yield out

    async def _steps(self, row: Row):
        async for step in self._decode(row):
            if step is not None:
                yield step

    # ------------------------------------------------------------------ plumbing

    def _authorize(self, request: Request) -> None:
        if self.key_hash is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token_hash(token), self.key_hash):
            raise api.APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", None,
                               "invalid_api_key")

    async def _body(self, request: Request):
        self._authorize(request)
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise api.APIError(413, f"request body of {declared} bytes is over this server's {limit}", None,
                               "request_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise api.APIError(413, f"request body is over this server's {limit} bytes", None,
                                   "request_too_large")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise api.APIError(400, f"the request body is not valid JSON ({e})", None, "invalid_json") from None

    def _rows(self, prompt_ids: list, sampling: api.Sampling, param: str, chat: bool, logprobs=None,
              echo=False) -> list[Row]:
        new = api.resolve_max_tokens(len(prompt_ids), sampling.max_tokens, self.context, self.cfg.default_max_tokens,
                                     param)
        return [Row(prompt_ids, new, sampling.temperature, sampling.top_p,
                    None if sampling.seed is None else sampling.seed * 1000003 + j, tuple(sampling.stop), chat,
                    logprobs, echo) for j in range(sampling.n)]

    def _count(self, prompt_tokens: int, completion_tokens: int, started: float) -> None:
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += prompt_tokens
        self.stats["completion_tokens"] += completion_tokens
        self.tokens_metric.inc(prompt_tokens, tags={"kind": "prompt"})
        self.tokens_metric.inc(completion_tokens, tags={"kind": "completion"})
        self.latency_metric.observe(time.time() - started)

    async def _collect(self, rows: list[Row]) -> list[tuple[str, str, int, Optional[dict]]]:
        """Every row to its end, concurrently: (text, finish_reason, completion tokens, scores) per row."""
        async def one(row):
            text, last = [], None
            async for step in self._steps(row):
                text.append(step.text)
                last = step
            return "".join(text), last.finish_reason, last.completion_tokens, last.scores
        return list(await asyncio.gather(*(one(r) for r in rows)))

    async def _merged(self, rows: list[Row]):
        """(row index, Step) as the rows produce them, all rows concurrently."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, row):
            try:
                async for step in self._steps(row):
                    await queue.put((i, step))
            finally:
                await queue.put((i, None))
        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(rows)]
        open_rows = len(rows)
        while open_rows:
            i, step = await queue.get()
            if step is None:
                open_rows -= 1
            else:
                yield i, step
        await asyncio.gather(*tasks)

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    def health(self):
        return {"status": "ok"}

    @app.get("/v1/models")
    def models(self, request: Request):
        self._authorize(request)
        return api.models_response(self.name, self.created)

    @app.get("/stats")
    def batch_stats(self, request: Request):
        """This replica's counts: what batching did (sizes, by how often) and the tokens served."""
        self._authorize(request)
        sizes = dict(sorted(self.batch_sizes.items()))
        total = sum(sizes.values())
        return {**self.stats, "batch_sizes": {str(k): v for k, v in sizes.items()},
                "max_batch_size_seen": max(sizes, default=0),
                "mean_batch_size": sum(k * v for k, v in sizes.items()) / total if total else 0.0,
                "max_batch_size": self.cfg.max_batch_size, "model": self.name}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        started = time.time()
        try:
            req = api.parse_chat(await self._body(request), self.name, self.cfg.max_n, self.context)
            from coati_ray.data.template import normalize_messages

            try:
                prompt_ids = self.format.prompt_ids(normalize_messages(req.messages))
            except ValueError as e:
                raise api.APIError(400, str(e), "messages", "invalid_value") from None
            rows = self._rows(prompt_ids, req.sampling, "messages", chat=True)
        except api.APIError:
            self.stats["errors"] += 1
            raise
        rid = api.new_id("chatcmpl")
        if req.stream:
            return StreamingResponse(self._chat_stream(rid, rows, len(prompt_ids), req.include_usage, started),
                                     media_type="text/event-stream")
        done = await self._collect(rows)
        completion = sum(d[2] for d in done)
        self._count(len(prompt_ids), completion, started)
        return api.chat_response(rid, self.name, [d[0] for d in done], [d[1] for d in done], len(prompt_ids),
                                 completion)

    async def _chat_stream(self, rid: str, rows: list[Row], prompt_tokens: int, include_usage: bool,
                           started: float):
        created = int(time.time())
        for i in range(len(rows)):
            yield api.sse(api.chat_chunk(rid, self.name, created, i, {"role": "assistant", "content": ""}))
        completion = 0
        async for i, step in self._merged(rows):
            if step.text:
                yield api.sse(api.chat_chunk(rid, self.name, created, i, {"content": step.text}))
            if step.finish_reason:
                completion += step.completion_tokens
                yield api.sse(api.chat_chunk(rid, self.name, created, i, {}, step.finish_reason))
        if include_usage:
            yield api.sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                           "choices": [], "usage": api.usage(prompt_tokens, completion)})
        self._count(prompt_tokens, completion, started)
        yield api.sse("[DONE]")

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        started = time.time()
        try:
            req = api.parse_completion(await self._body(request), self.name, self.cfg.max_n, self.context)
            tok = self.policy.tokenizer
            prompts = [p if isinstance(p, list) else tok(p)["input_ids"] for p in req.prompts]
            vocab = len(tok)
            if any(not 0 <= t < vocab for p in prompts for t in p):
                raise api.APIError(400, f"prompt token ids must be in [0, {vocab})", "prompt", "invalid_value")
            rows = [r for p in prompts for r in self._rows(p, req.sampling, "prompt", chat=False,
                                                            logprobs=req.logprobs, echo=req.echo)]
        except api.APIError:
            self.stats["errors"] += 1
            raise
        rid, prompt_tokens = api.new_id("cmpl"), sum(len(p) for p in prompts)
        if req.stream:
            return StreamingResponse(self._completion_stream(rid, rows, prompt_tokens, req.include_usage, started),
                                     media_type="text/event-stream")
        done = await self._collect(rows)
        texts = [p if isinstance(p, str) else tok.decode(p) for p in req.prompts]
        choices = [{"text": (texts[k // req.sampling.n] if req.echo else "") + text, "finish_reason": reason,
                    "logprobs": scores} for k, (text, reason, _, scores) in enumerate(done)]
        completion = sum(d[2] for d in done)
        self._count(prompt_tokens, completion, started)
        return api.completion_response(rid, self.name, choices, prompt_tokens, completion)

    async def _completion_stream(self, rid: str, rows: list[Row], prompt_tokens: int, include_usage: bool,
                                 started: float):
        created, completion = int(time.time()), 0
        async for i, step in self._merged(rows):
            if step.text or step.finish_reason:
                yield api.sse(api.completion_chunk(rid, self.name, created, i, step.text, step.finish_reason))
            if step.finish_reason:
                completion += step.completion_tokens
        if include_usage:
            yield api.sse({"id": rid, "object": "text_completion", "created": created, "model": self.name,
                           "choices": [], "usage": api.usage(prompt_tokens, completion)})
        self._count(prompt_tokens, completion, started)
        yield api.sse("[DONE]")


def build_app(cfg):
    """The Serve application of a validated ServeConfig: replicas or autoscaling bounds, resources per replica."""
    options = {"ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                                     "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}},
               "max_ongoing_requests": cfg.max_ongoing_requests}
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling
    else:
        options["num_replicas"] = cfg.num_replicas
    key = cfg.api_key()
    return OpenAIServer.options(**options).bind(cfg, token_hash(key) if key else None)


def start_server(cfg) -> str:
    """Start Serve's proxy on cfg.host:cfg.port (when Serve is not running yet on this cluster) and deploy the
    application; returns its OpenAI base URL once every replica is up."""
    return start_servers([cfg])[0]


def start_servers(cfgs: list) -> list[str]:
    """Several applications behind one proxy (the same host and port; each its own app_name and route_prefix),
    their replicas started together; their base URLs once all are up."""
    if len({(c.host, c.port) for c in cfgs}) != 1:
        raise ValueError("applications behind one Serve proxy share its host and port")
    serve.start(http_options={"host": cfgs[0].host, "port": cfgs[0].port})
    serve.run_many([serve.RunTarget(build_app(c), name=c.app_name, route_prefix=c.route_prefix) for c in cfgs])
    return [base_url(c) for c in cfgs]


def base_url(cfg) -> str:
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/v1"


def stop_server(app_name: str, everything: bool) -> None:
    """Take the application down; `everything` stops Serve itself (an embedded Ray this process started), else
    a cluster's Serve keeps its other applications."""
    if everything:
        serve.shutdown()
    else:
        serve.delete(app_name)
