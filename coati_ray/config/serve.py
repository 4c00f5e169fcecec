"""Configuration of `launch.serve`: the model as `launch.generate` loads it, and how the endpoint is exposed."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

from coati_ray.config.checks import _fail, model_context
from coati_ray.config.fields import opt
from coati_ray.config.generate import GenerateConfig


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig(GenerateConfig):
    """An OpenAI-compatible endpoint on Ray Serve for a checkpoint (full, or a base + LoRA adapters, 8/4-bit).

    The model keys are launch.generate's (one loader for both); its sampling keys (generation.*, n, batch_size,
    seed) are not used here: each request says how it samples, and max_batch_size how many sequences decode at once.
    """

    host: str = opt("127.0.0.1", "address the HTTP proxy binds; anything but loopback needs api_key_env")
    port: int = opt(8000, "HTTP port of Serve's proxy")
    api_key_env: Optional[str] = opt(None, "name of an environment variable holding the bearer token clients must "
                                           "send (Authorization: Bearer ...); required off loopback")
    served_model_name: Optional[str] = opt(None, "the `model` clients name; default: `model` as given")
    app_name: str = opt("coati", "Serve application name (the dashboard's Serve view lists it)")
    route_prefix: str = opt("/", "where the application's routes start (/v1/... under it)")
    num_replicas: int = opt(1, "replicas when not autoscaling")
    min_replicas: Optional[int] = opt(None, "autoscaling: fewest replicas (with max_replicas)")
    max_replicas: Optional[int] = opt(None, "autoscaling: most replicas; set to autoscale on ongoing requests")
    target_ongoing_requests: float = opt(16.0, "autoscaling: ongoing requests per replica Serve aims for")
    max_ongoing_requests: int = opt(128, "requests one replica holds at once (queued beyond that at the proxy)")
    max_batch_size: int = opt(32, "sequences decoded together (a request with n asks for n)")
    batch_wait_timeout_s: float = opt(0.05, "how long a batch waits to fill before decoding starts")
    num_cpus: float = opt(1.0, "CPUs reserved per replica")
    num_gpus: float = opt(0.0, "GPUs per replica (the model goes to CUDA when > 0)")
    torch_threads: Optional[int] = opt(None, "torch threads per replica; default: num_cpus rounded down, at least 1")
    max_n: int = opt(16, "largest `n` a request may ask")
    default_max_tokens: int = opt(256, "new tokens for a request that gives no max_tokens (cut to the context)")
    context_length: Optional[int] = opt(None, "prompt + completion tokens allowed; default: the model's positions")
    max_body_bytes: int = opt(1_000_000, "largest request body accepted (413 beyond)")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @property
    def autoscaling(self) -> Optional[dict]:
        if self.max_replicas is None:
            return None
        return {"min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                "max_replicas": self.max_replicas, "target_ongoing_requests": self.target_ongoing_requests}

    def api_key(self) -> Optional[str]:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def context(self) -> int:
        return self.context_length or model_context("model", self.local("model")) or 2048

    def validate(self) -> None:
        """The endpoint's settings first (cheap, and the ones a user typed), then the model's (pins hub ids)."""
        if self.reward_model is not None:
            _fail("reward_model", "the server answers with the policy alone", "drop --reward-model (best of n is "
                  "launch.generate's)")
        if not 0 < self.port < 65536:
            _fail("port", f"must be 1..65535, got {self.port}", "e.g. --port 8000")
        if self.api_key_env is not None and not self.api_key():
            _fail("api_key_env", f"the environment variable {self.api_key_env} is unset or empty",
                  f"export {self.api_key_env}=<a long random token> before starting the server")
        if not is_loopback(self.host) and self.api_key_env is None:
            _fail("host", f"'{self.host}' is reachable from other machines and no bearer token is set",
                  "add --api-key-env NAME (an environment variable holding the token clients send), or bind "
                  "127.0.0.1")
        if not self.route_prefix.startswith("/"):
            _fail("route_prefix", f"must start with '/', got '{self.route_prefix}'", "e.g. /")
        if self.num_replicas < 1:
            _fail("num_replicas", f"must be >= 1, got {self.num_replicas}", "e.g. --replicas 1")
        if self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            if not 0 <= low <= self.max_replicas or self.max_replicas < 1:
                _fail("max_replicas", f"needs 0 <= min_replicas ({low}) <= max_replicas ({self.max_replicas}), "
                      "max_replicas >= 1", "e.g. --min-replicas 1 --max-replicas 4")
        elif self.min_replicas is not None:
            _fail("min_replicas", "autoscaling needs its upper bound too", "add --max-replicas N")
        for key in ("max_batch_size", "max_ongoing_requests", "max_n", "default_max_tokens", "max_body_bytes"):
            if getattr(self, key) < 1:
                _fail(key, f"must be >= 1, got {getattr(self, key)}", "see --help-config")
        if self.batch_wait_timeout_s < 0 or self.num_cpus < 0 or self.num_gpus < 0:
            _fail("batch_wait_timeout_s", "batch_wait_timeout_s, num_cpus and num_gpus must be >= 0",
                  "e.g. batch_wait_timeout_s=0.05 num_cpus=1")
        if self.num_gpus > 0:
            import torch

            if not torch.cuda.is_available():
                _fail("num_gpus", f"{self.num_gpus} GPUs per replica asked on a machine without CUDA",
                      "set --num-gpus 0 (the replica runs on CPU)")
        super().validate()
        if self.context_length is not None and self.context_length < 2:
            _fail("context_length", f"must be >= 2, got {self.context_length}", "leave it unset for the model's own")

    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.num_cpus))
