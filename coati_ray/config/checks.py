"""The config's checks of single values and of the world it names (paths, model directories, the
output directory): each fails with one line, `config error: <key>: <problem>; <fix>`, before any
model loads or Ray resource is taken. The dataclasses' validate() methods call them."""

from __future__ import annotations

import os
from typing import Optional

from coati_ray.errors import ConfigError
from coati_ray.utils.shared_storage import job_path_problem


def _fail(key: str, problem: str, fix: str) -> None:
    raise ConfigError(f"config error: {key}: {problem}; {fix}")


def check_nice(nice: int, key: str) -> None:
    """A nice value a thread may set for itself without privilege: 0 (unchanged) to 19."""
    if not 0 <= nice <= 19:
        _fail(key, f"must be 0..19, got {nice}", "e.g. 19 for the stage that should yield (a negative value, "
                   "a higher priority, needs privileges and is not supported)")


def check_cpu_cores(cores: Optional[list[int]], key: str) -> None:
    """A core list is None or a non-empty list of distinct core ids >= 0 (whether the node has them is
    checked where the actor starts: only its node knows)."""
    if cores is None:
        return
    if not cores or any(c < 0 for c in cores) or len(set(cores)) != len(cores):
        _fail(key, f"must be a non-empty list of distinct core ids >= 0, got {cores}",
              "e.g. [0] or [2, 3], or leave it unset to let the OS schedule")


def check_flash_attn(wanted: bool, key: str) -> None:
    import importlib.util

    if wanted and importlib.util.find_spec("flash_attn") is None:
        _fail(key, "the flash-attn package is not installed", "install flash-attn on a CUDA machine, or remove "
              "the key (SDPA attention is used)")


def check_flash_attn_precision(model, strategy, model_key: str) -> None:
    """FlashAttention-2 computes in bf16/fp16 only: fp32 weights trained in fp32 cannot use it."""
    if model.use_flash_attn and model.dtype == "float32" and (strategy.name in ("naive", "ddp")
                                                              or strategy.precision == "fp32"):
        _fail(f"{model_key}.use_flash_attn", "FlashAttention-2 computes in bf16 or fp16, and this model trains "
              "in fp32", f"set {model_key}.dtype=bfloat16, or a colossalai strategy with precision=bf16")


# ---------------------------------------------------------------- filesystem checks


def _require_path(key: str, path: str) -> None:
    from coati_ray.storage.uri import is_uri

    if is_uri(path):  # reachable, readable and there, in one line naming the URI (redacted) if not
        from coati_ray.storage.preflight import check_readable

        check_readable(path, key)
        return
    problem = job_path_problem(key, path, is_output=False)
    if problem:
        _fail(key, *problem)
    if not os.path.exists(path):
        hint = ""
        if "assets" in path:
            hint = " (run `make assets` to build the tiny models)"
        elif "rm_tiny" in path or "sft_tiny" in path:
            hint = " (train it first: `make rm` / `make sft`, or run `make demo`)"
        _fail(key, f"'{path}' does not exist", "point it at an existing file or directory" + hint)


def _require_data(key: str, path: str) -> None:
    """A dataset: a local file or directory, or a hub dataset name (read, offline or not, by the data
    check before any model loads: coati_ray.data.loading)."""
    from coati_ray.models.hub import is_hub_id

    if not is_hub_id(path) or os.path.splitext(path)[1].lower() in (".jsonl", ".json", ".csv", ".parquet", ".arrow"):
        _require_path(key, path)


def check_chat_template(spec: str, key: str) -> None:
    """auto, coati, or a .jinja file that exists and compiles."""
    from coati_ray.data.template import read_template

    if spec not in ("auto", "coati"):
        _require_path(key, spec)
    try:
        read_template(spec)
    except ValueError as e:
        _fail(key, str(e), "use auto (the tokenizer's own template, else Coati's), coati, or a .jinja file")


def _require_dir(key: str, path: str) -> None:
    _require_path(key, path)
    if not os.path.isdir(path):
        _fail(key, f"'{path}' is a file, not a directory", "point it at a Hugging Face model directory")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def _require_model_dir(key: str, path: str) -> None:
    _require_dir(key, path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        _fail(key, f"'{path}' has no config.json", "point it at a directory written by save_pretrained()")
    model_config(key, path)
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in os.listdir(path)):
        _fail(key, f"'{path}' has a config.json but no weights (*.safetensors or *.bin)",
              "point it at a complete save_pretrained() directory (an interrupted copy?)")


def model_config(key: str, path: str) -> dict:
    """The model directory's config.json, read as JSON (no model code, no weights)."""
    import json

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            out = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        _fail(key, f"'{path}/config.json' is not valid JSON ({e})", "re-save the model with save_pretrained()")
    if not isinstance(out, dict):
        _fail(key, f"'{path}/config.json' is not a JSON object", "re-save the model with save_pretrained()")
    return out


def model_context(key: str, path: str) -> Optional[int]:
    """Longest sequence the model's position embeddings cover, from config.json (None: not stated)."""
    cfg = model_config(key, path)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(cfg.get(name), int):
            return cfg[name]
    return None


def require_fits_context(key: str, path: str, length: int, what: str, fix: str) -> None:
    context = model_context(key, path)
    if context is not None and length > context:
        _fail(key, f"{what} is {length} tokens but '{path}' has a context of {context}", fix)


def _require_writable(path: str) -> None:
    from coati_ray.storage.uri import is_uri

    if is_uri(path):  # write, read back and delete a probe object: endpoint, bucket, credentials, permission
        from coati_ray.storage.preflight import check_writable

        check_writable(path, "output_dir")
        return
    problem = job_path_problem("--output-dir", path, is_output=True)
    if problem:
        _fail("output_dir", *problem)
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        _fail("output_dir", f"'{probe}' is a file", "choose a directory path for --output-dir")
    if not os.access(probe, os.W_OK) or not _can_create_in(probe):
        _fail("output_dir", f"'{probe}' is not writable", "choose a writable --output-dir")


def _can_create_in(directory: str) -> bool:
    """Really try (os.access says yes to root everywhere, even on /proc): make and remove a temp dir."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".coati-write-probe-", dir=directory))
        return True
    except OSError:
        return False
