"""Serve a trained policy with an OpenAI-compatible API on Ray Serve:
python -m launch.serve --model DIR|HUB_ID [--lora DIR] [--quantize none|int8|int4] [--host 127.0.0.1 --port 8000]
    [--api-key-env NAME] [--replicas N | --min-replicas A --max-replicas B] [--max-batch-size 32] [key=value ...]

GET /v1/models, POST /v1/chat/completions and /v1/completions (stream: true for server-sent events), with
temperature, top_p, max_tokens, n, stop and seed; usage counts tokens. Prompts are rendered with the chat template
the checkpoint trained with and its end-of-turn token ends an answer, as in training and launch.generate; the model
loads as launch.generate loads it (LoRA adapters, 8/4-bit, hub ids pinned to a commit). Concurrent requests are
decoded in batches (Serve's request batching); GET /stats shows the batch sizes. The server binds loopback unless
--host says otherwise, and then only with a bearer token (--api-key-env). It runs on the Ray cluster it finds
(RAY_ADDRESS, or one `ray start` began here) or on an embedded local Ray whose dashboard shows it in the Serve
view; Ctrl-C stops it.
"""

from __future__ import annotations

import json
import sys
import time

from coati_ray.errors import CoatiError
from launch.common import OneLineParser, fail, print_config_help, quiet_libraries, stop_cleanly_on_sigterm

FLAGS = {"model": "model", "lora": "lora", "quantize": "quantize", "revision": "revision", "host": "host",
         "port": "port", "api_key_env": "api_key_env", "served_model_name": "served_model_name",
         "replicas": "num_replicas", "min_replicas": "min_replicas", "max_replicas": "max_replicas",
         "max_batch_size": "max_batch_size", "batch_wait_timeout_s": "batch_wait_timeout_s",
         "num_cpus": "num_cpus", "num_gpus": "num_gpus", "app_name": "app_name", "route_prefix": "route_prefix"}


def parser():
    p = OneLineParser(prog="python -m launch.serve", description=__doc__)
    p.add_argument("--config", help="YAML with ServeConfig keys (optional)")
    p.add_argument("--model", help="model directory (a stage's checkpoints/final, a LoRA base) or hub id")
    p.add_argument("--revision", help="hub revision of --model (pinned to its commit)")
    p.add_argument("--lora", help="LoRA adapters (a LoRA run's step checkpoint model/) on --model")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), help="8/4-bit linear layers (bitsandbytes)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; anything else needs --api-key-env)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--api-key-env", help="environment variable holding the bearer token clients must send")
    p.add_argument("--served-model-name", help="the model name clients use (default: --model as given)")
    p.add_argument("--replicas", type=int, help="replicas (fixed)")
    p.add_argument("--min-replicas", type=int, help="autoscaling lower bound")
    p.add_argument("--max-replicas", type=int, help="autoscaling upper bound (turns autoscaling on)")
    p.add_argument("--max-batch-size", type=int, help="sequences decoded together (default 32)")
    p.add_argument("--batch-wait-timeout-s", type=float, help="how long a batch waits to fill (default 0.05)")
    p.add_argument("--num-cpus", type=float, help="CPUs per replica (default 1)")
    p.add_argument("--num-gpus", type=float, help="GPUs per replica (default 0)")
    p.add_argument("--app-name", help="Serve application name (default coati)")
    p.add_argument("--route-prefix", help="where the routes start (default /)")
    p.add_argument("--ray-address", help="Ray cluster address (default: auto, else an embedded local Ray)")
    p.add_argument("--no-dashboard", action="store_true", help="embedded Ray without its dashboard")
    p.add_argument("--help-config", action="store_true", help="list every config key with its type and default")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. default_max_tokens=64 max_n=8")
    return p


def load(args):
    """The validated ServeConfig: flags become overrides; every check runs before Ray or a model."""
    from coati_ray.config import load_config
    from coati_ray.config.serve import ServeConfig

    overrides = list(args.overrides)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(ServeConfig, args.config, overrides)
    cfg.validate()
    return cfg


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    quiet_libraries()
    if args.help_config:
        from coati_ray.config.serve import ServeConfig

        return print_config_help(ServeConfig)
    try:
        cfg = load(args)
    except (CoatiError, ValueError) as e:
        return fail(e)
    stop_cleanly_on_sigterm()
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it even when started in the background
    from actors.cluster import connect

    started = connect(args.ray_address, dashboard=not args.no_dashboard, info=print)
    from actors.serve import start_server, stop_server

    try:
        try:
            url = start_server(cfg)
        except Exception as e:  # a replica that failed to load its model: Serve says why in its own words
            return fail(CoatiError(f"serve error: the application did not start ({str(e).strip().splitlines()[-1]})"))
        auth = f" -H 'Authorization: Bearer ${cfg.api_key_env}'" if cfg.api_key_env else ""
        print(f"serving '{cfg.model_name}' at {url} (Ctrl-C stops)", flush=True)
        body = {"model": cfg.model_name, "messages": [{"role": "user", "content": "sort: 9 3 7 1"}]}
        print(f"  curl {url}/chat/completions -H 'Content-Type: application/json'{auth} -d '{json.dumps(body)}'",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            stop_server(cfg.app_name, everything=started)
        except Exception:  # Ray already gone (its own Ctrl-C handling): nothing left to stop
            pass
        if started:
            import ray

            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
