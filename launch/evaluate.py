"""Benchmark a checkpoint, or a running endpoint, with lm-evaluation-harness:
python -m launch.evaluate --model DIR|HUB_ID [--lora DIR] [--quantize int8|int4] --tasks a,b [--include-path DIR]
python -m launch.evaluate --endpoint http://127.0.0.1:8000/v1 [--api chat|completions] --tasks a,b [...]
    [--output-dir runs/eval] [--limit N] [--num-fewshot K] [--batch-size 16] [--no-chat]

Tasks are lm-eval YAML files of your own (multiple choice or generation over local jsonl; --include-path names
their folder), this repository's gold tasks (coati_sorting, coati_calc: exact match and the task's gold score), or
lm-eval's catalogue. A checkpoint runs in this process as lm-eval's `coati` model: prompts rendered with the chat
template it trained with, answers ended by its end-of-turn token (--no-chat: raw text, for base models). An
endpoint (launch.serve, or any OpenAI-compatible server) is evaluated through lm-eval's own clients:
`local-chat-completions` for generation tasks (the server applies the template), `local-completions` with
--api completions for multiple choice (log-probs of raw text; needs --tokenizer or --model for token counts).
Results: <output-dir>/lm_eval.json and lm_eval.md, and the table on the terminal. --model and --output-dir may be
URIs (s3://, gs://, hdfs://): the model is read through this node's cache, the results uploaded when written.
"""

from __future__ import annotations

import os
import sys
import time

from coati_ray.errors import CoatiError, ConfigError
from coati_ray.storage.staging import staged_writes
from coati_ray.storage.uri import join, redact
from launch.common import OneLineParser, fail, quiet_libraries


def parser():
    p = OneLineParser(prog="python -m launch.evaluate", description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="checkpoint directory or hub id to evaluate in this process")
    what.add_argument("--endpoint", help="an OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", action="append", default=[], help="a folder of task YAML files (repeatable)")
    p.add_argument("--output-dir", default="runs/eval", help="where lm_eval.json / lm_eval.md go, a directory or a URI (default runs/eval)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier lm_eval.json in --output-dir")
    p.add_argument("--limit", type=float, help="documents per task (a fraction below 1)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (the task's own default otherwise)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (in-process model)")
    p.add_argument("--seed", type=int, default=0, help="seed of lm-eval's sampling and of any sampled answers")
    p.add_argument("--lora", help="LoRA adapters on --model")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none", help="8/4-bit linear layers")
    p.add_argument("--revision", help="hub revision of --model")
    p.add_argument("--no-chat", action="store_true", help="score and continue raw text, without the chat template")
    p.add_argument("--api", choices=("chat", "completions"), default="chat", help="endpoint API lm-eval uses")
    p.add_argument("--endpoint-model", help="the endpoint's model name (default: the one it lists)")
    p.add_argument("--tokenizer", help="tokenizer directory for --api completions (default: --model)")
    p.add_argument("--api-key-env", help="environment variable holding the endpoint's bearer token")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight to the endpoint")
    return p


def endpoint_model(url: str, name, key) -> str:
    """The model the endpoint serves (checked now: an unreachable or locked server is one line, not a traceback)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + "/models",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            served = [m["id"] for m in json.load(reply).get("data", [])]
    except urllib.error.HTTPError as e:
        raise ConfigError(f"config error: endpoint: GET {url}/models answered {e.code}; pass --api-key-env NAME when "
                          "the server wants a bearer token") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConfigError(f"config error: endpoint: {url} cannot be reached ({getattr(e, 'reason', e)}); start it "
                          "(make serve) or fix the URL") from None
    if name is None and len(served) == 1:
        return served[0]
    if name not in served:
        raise ConfigError(f"config error: endpoint_model: '{name}' is not served at {url} (it serves "
                          f"{', '.join(served) or 'nothing'}); pass --endpoint-model with one of them")
    return name


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    quiet_libraries()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    started = time.time()
    try:
        check_output(args.output_dir, args.overwrite)
        with staged_writes(args.output_dir) as out:  # a URI: written here, uploaded when the results are in
            evaluate(args, tasks, out, started)
    except (CoatiError, ValueError) as e:
        return fail(e)
    except NotImplementedError as e:  # lm-eval's chat client cannot score log-likelihoods
        return fail(CoatiError(f"evaluate error: {e} (pass --api completions --tokenizer DIR for multiple choice)"))
    print(f"wrote {redact(join(args.output_dir, 'lm_eval.json'))}")
    return 0


def check_output(output_dir: str, overwrite: bool) -> None:
    """Before any model loads: an earlier result is not overwritten unasked, and a URI can be written (one we
    cannot write, or one carrying credentials, is refused)."""
    from coati_ray.storage.fs import exists
    from coati_ray.storage.preflight import check_scheme, check_writable
    from coati_ray.storage.uri import is_uri

    check_scheme("--output-dir", output_dir)
    result = join(output_dir, "lm_eval.json")
    if is_uri(output_dir):
        check_writable(output_dir, "--output-dir")
    if exists(result) and not overwrite:
        raise ConfigError(f"config error: output_dir: '{redact(result)}' exists; pass --overwrite or another "
                          "--output-dir")


def evaluate(args, tasks: list[str], out: str, started: float) -> None:
    """The harness over `tasks`, its results written under `out` (the output directory, or its local staging)."""
    from coati_ray.evaluation.lm_eval_run import resolve_tasks, results_markdown, run_harness, write_results

    if args.model:
        from coati_ray.storage.preflight import check_scheme

        check_scheme("--model", args.model)
    manager, names = resolve_tasks(tasks, args.include_path, out)
    if args.endpoint:
        key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
        if args.api_key_env and not key:
            raise ConfigError(f"config error: api_key_env: {args.api_key_env} is unset or empty")
        name = endpoint_model(args.endpoint, args.endpoint_model, key)
        model_args = {"model": name, "num_concurrent": args.concurrency, "max_retries": 1}
        if args.api == "chat":
            lm, model_args = "local-chat-completions", {**model_args, "base_url": args.endpoint.rstrip("/") +
                                                       "/chat/completions", "tokenized_requests": False}
        else:
            tokenizer = args.tokenizer or args.model
            if tokenizer is None:
                raise ConfigError("config error: tokenizer: --api completions counts tokens; pass --tokenizer DIR "
                                  "(the served model's directory)")
            lm, model_args = "local-completions", {**model_args, "base_url": args.endpoint.rstrip("/") +
                                                   "/completions", "tokenizer_backend": "huggingface",
                                                   "tokenizer": tokenizer, "tokenized_requests": True}
        os.environ["OPENAI_API_KEY"] = key or "unused"  # lm-eval's API clients send it as the bearer token
        meta = {"endpoint": args.endpoint, "model": name, "api": args.api}
        results = run_harness(lm, names, manager, model_args=model_args, limit=args.limit,
                              num_fewshot=args.num_fewshot, apply_chat_template=args.api == "chat",
                              seed=args.seed)
    else:
        from coati_ray.evaluation.lm_eval_model import CoatiLM

        lm = CoatiLM(pretrained=args.model, lora=args.lora, quantize=args.quantize, revision=args.revision,
                     chat=not args.no_chat, batch_size=args.batch_size)
        meta = {"model": redact(args.model), "lora": args.lora, "quantize": args.quantize, "chat": not args.no_chat}
        results = run_harness(lm, names, manager, limit=args.limit, num_fewshot=args.num_fewshot, seed=args.seed)
    meta.update(tasks=names, limit=args.limit, num_fewshot=args.num_fewshot, seconds=round(time.time() - started, 1))
    write_results(out, results, meta)
    print(results_markdown(results))


if __name__ == "__main__":
    sys.exit(main())
