"""Models and tokenizers named as users name them: a local directory, or a Hugging Face hub id.

A hub id is resolved through `huggingface_hub` and the node's cache, exactly as `from_pretrained` would
read it: `HF_HOME` / `HF_HUB_CACHE` pick the cache, `HF_HUB_OFFLINE=1` reads only what is cached, and
`HF_TOKEN` (read by huggingface_hub from the environment, never passed through us) opens gated repos.

The driver resolves every id once, before Ray starts, to the commit its revision names (`pin`), and the
config carries that commit from then on; every actor on every node then loads exactly that commit
through its own node's cache (`local_dir`), under a per-repo file lock so the processes of one node
download it once. A cluster therefore never mixes revisions, even when `main` moves during the run.

Only what is loaded is downloaded (`model_files`, `dataset_files`): a model's config, tokenizer and generation
files and the one weight format `from_pretrained` reads (safetensors when the repo has them, else .bin; a LoRA
repo's adapter), never `original/`, GGUF, .pth, Flax, TF or ONNX copies; a dataset's `data_dir` (or its
configuration's data files) and its card. Hub datasets are pinned the same way and read from their snapshot
(`datasets.load_dataset(<snapshot dir>, ...)`), so offline a run reads the commit it pinned from the cached refs,
not whichever build `datasets` cached last.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from coati_ray.errors import ConfigError, DataError, ModelError

# What huggingface_hub accepts as a repo id: "name" or "namespace/name" of [A-Za-z0-9._-], no "--" or "..".
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_hub_id(path: Optional[str]) -> bool:
    """True when `path` names a hub repo: it is not an existing local path and has a repo id's shape
    ("name" or "org/name"). A local directory always wins, as it does for `from_pretrained`."""
    if not path or os.path.exists(path) or path.startswith((".", "/", "~")):
        return False
    return bool(_REPO_ID.match(path)) and "--" not in path and ".." not in path


def is_commit(revision: Optional[str]) -> bool:
    return bool(revision) and bool(_COMMIT.match(revision))


def cache_dir() -> str:
    """The hub cache this process reads and writes (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/...)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class Resolved:
    """A model reference as loaded: the local directory, and the commit when it came from the hub."""

    local_dir: str
    commit: Optional[str] = None


@dataclass(frozen=True)
class Selection:
    """Which files of a repo a process loads, and so downloads.

    `kind`: "model" (config, tokenizer and generation files + the weights from_pretrained reads), "tokenizer"
    (those files without weights), "dataset" (a dataset's data files and card). For a dataset, `data_dir`
    narrows it to one directory (`load_dataset(..., data_dir=...)`) and `config_name` to the data files of one
    configuration of its card (`load_dataset(..., name=...)`); `section` (e.g. "data") and `revision_key` (e.g.
    "data.eval_revision") name the config keys an error points at.
    """

    kind: str = "model"
    data_dir: Optional[str] = None
    config_name: Optional[str] = None
    section: str = "data"
    revision_key: str = "data.revision"

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"


MODEL = Selection("model")
TOKENIZER = Selection("tokenizer")

# Files beside the weights that loading reads: config.json, generation_config.json, tokenizer.json,
# tokenizer_config.json, special_tokens_map.json, vocab.json / vocab.txt, merges.txt, tokenizer.model (SentencePiece),
# *.tiktoken, chat_template.jinja, adapter_config.json, value_head.json, modelling code (*.py, trust_remote_code).
# Anything else is not read by from_pretrained: .pth / .pt / .ckpt, .gguf, .msgpack (Flax), .h5 (TF), .onnx, images.
_SIDE_FILES = (".json", ".txt", ".model", ".tiktoken", ".jinja", ".py", ".spm", ".vocab", ".codes")
# (single file, its sharded index) of each weight family, in the order transformers / peft look for them.
_WEIGHTS = {
    "base": (("model.safetensors", "model.safetensors.index.json"),
             ("pytorch_model.bin", "pytorch_model.bin.index.json")),
    "adapter": (("adapter_model.safetensors", None), ("adapter_model.bin", None)),  # peft: a LoRA repo
    "value_head": (("value_head.safetensors", None),),  # coati_ray's critic / reward model head
}


def model_files(files: Iterable[str], read_index: Callable[[str], dict], weights: bool = True) -> list[str]:
    """The files of a model repo (paths as the hub lists them) that loading it reads: the side files of its
    root and, per weight family, the first format present as transformers / peft choose it (model.safetensors,
    else its index and the shards it names, else pytorch_model.bin, else its index and shards). `read_index(name)`
    returns a downloaded index file's JSON. Subfolders (original/, onnx/, ...) are never loaded."""
    root = [f for f in files if "/" not in f]
    keep = [f for f in root if f.endswith(_SIDE_FILES) and not f.endswith(".index.json")]
    if not weights:
        return sorted(keep)
    present = set(root)
    for formats in _WEIGHTS.values():
        for single, index in formats:
            if single in present:
                keep.append(single)
                break
            if index is not None and index in present:
                shards = set(read_index(index).get("weight_map", {}).values())
                keep += [index] + sorted(shards)
                break
    return sorted(set(keep))


def dataset_files(files: Iterable[str], selection: Selection, read_card: Callable[[], dict]) -> list[str]:
    """The files of a dataset repo that `load_dataset` reads for `selection`: those under its data_dir, or
    those its card's configuration `config_name` names (glob patterns), or all of them; always the card
    (README.md: its YAML declares the configurations). `read_card()` returns {config name: config} of the card."""
    files = [f for f in files if not f.startswith(".git")]
    card = [f for f in files if f in ("README.md", ".huggingface.yaml")]
    if selection.data_dir:
        prefix = selection.data_dir.strip("/") + "/"
        return sorted(set(card + [f for f in files if f.startswith(prefix)]))
    if selection.config_name:
        configs = read_card()
        if selection.config_name not in configs:
            return sorted(card)  # the card alone: enough to say which configurations there are
        patterns = _card_patterns(configs[selection.config_name])
        if patterns:
            return sorted(set(card + [f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns)]))
    return sorted(files)


def _card_patterns(config: dict) -> list[str]:
    """The data-file glob patterns of one configuration of a dataset card (a str, a list, {split: patterns} or
    [{split, path}])."""
    data_files, data_dir = config.get("data_files"), (config.get("data_dir") or "").strip("/")
    if data_files is None:
        return [data_dir + "/*"] if data_dir else []
    if isinstance(data_files, dict):
        data_files = list(data_files.values())
    out = []
    for item in data_files if isinstance(data_files, list) else [data_files]:
        paths = item.get("path", []) if isinstance(item, dict) else item
        out += [paths] if isinstance(paths, str) else list(paths)
    return [os.path.join(data_dir, p) if data_dir else p for p in out]


def pin(path: str, revision: Optional[str], key: str, repo_type: str = "model",
        selection: Optional[Selection] = None) -> Resolved:
    """Resolve `path` (a local directory or a hub id at `revision`) to what every process will load.

    A hub id is downloaded into (or read from) the cache now, on the driver, so that what the checks read
    (config.json, the tokenizer) is what the actors load; the returned commit is what the config carries.
    An id that cannot be resolved ends here in one line naming the id, the revision and the cache.
    """
    if not is_hub_id(path):  # a local directory, or a URI read through the storage cache (coati_ray/storage)
        return Resolved(path)
    local = _snapshot(path, revision or "main", key, _selection(repo_type, selection))
    return Resolved(local, os.path.basename(os.path.normpath(local)))


def local_dir(path: str, revision: Optional[str], key: str = "model.path", repo_type: str = "model",
              selection: Optional[Selection] = None) -> str:
    """The directory to load `path` from on this node: `path` itself when local, else the snapshot of the
    pinned `revision` in this node's cache (downloaded once per node, under the repo's lock); a URI
    (s3://, gs://, hdfs://: a checkpoint an earlier stage uploaded) is its copy in this node's storage cache."""
    from coati_ray.storage.uri import is_uri

    if is_uri(path):
        from coati_ray.storage.cache import local_copy

        return local_copy(path, key)
    if not is_hub_id(path):
        return path
    return _cached_snapshot(path, revision or "main", key, _selection(repo_type, selection))


def _selection(repo_type: str, selection: Optional[Selection]) -> Selection:
    if selection is not None:
        return selection
    return Selection("dataset") if repo_type == "dataset" else MODEL


@functools.lru_cache(maxsize=64)
def _cached_snapshot(repo_id: str, revision: str, key: str, selection: Selection) -> str:
    # a commit's snapshot never changes, so one lookup per process is enough; a branch is looked up once
    # per process too (only a config that was never pinned loads by branch, e.g. a library user's script)
    return _snapshot(repo_id, revision, key, selection)


def _snapshot(repo_id: str, revision: str, key: str, selection: Selection) -> str:
    from filelock import FileLock
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_type = selection.repo_type
    cache = cache_dir()
    dataset = repo_type == "dataset"
    named = "".join(f" {what} '{value}'" for what, value in (("subset", selection.data_dir),
                                                             ("config", selection.config_name)) if value)
    where = f"{key}: hub {repo_type} '{repo_id}'{named} at revision '{revision}' (cache {cache}"
    where += ", HF_HUB_OFFLINE=1)" if offline() else ")"
    error = DataError if dataset else ModelError
    where = ("data error: " if dataset else "") + where
    try:
        os.makedirs(os.path.join(cache, ".locks"), exist_ok=True)
        lock = os.path.join(cache, ".locks", f"coati-{repo_type}s--{repo_id.replace('/', '--')}.lock")
        with FileLock(lock):  # the processes of one node fetch a repo once; the others wait and read it
            local, files = _download(repo_id, revision, selection, cache)
    except GatedRepoError:
        raise error(f"{where} is gated and no token with access was found; accept its terms on the hub and "
                    "export HF_TOKEN (or run `huggingface-cli login`) on every node") from None
    except RepositoryNotFoundError:
        raise error(f"{where} was not found (or is private and no token with access was found); check the id, "
                    "or export HF_TOKEN on every node") from None
    except RevisionNotFoundError:
        if dataset:
            raise ConfigError(f"config error: {selection.revision_key}: hub dataset '{repo_id}' has no revision "
                              f"'{revision}' ({where.split('(', 1)[1]}; use a branch, tag or commit of that repo, "
                              f"or remove {selection.revision_key} to read main") from None
        raise error(f"{where}: the revision does not exist; use a branch, tag or commit of that repo") from None
    except LocalEntryNotFoundError:
        download = "huggingface-cli download " + ("--repo-type dataset " if dataset else "") + repo_id
        raise error(f"{where} is not in the cache and the hub cannot be reached; download it first "
                    f"(`{download}`), point HF_HUB_CACHE at a cache that holds it, or use a local "
                    f"{'file' if dataset else 'directory'}") from None
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise error(f"{where} cannot be read ({first}); check the id and revision, or use a local "
                    "directory") from None
    if dataset:
        _check_dataset(local, repo_id, selection, files)
    return local


def _download(repo_id: str, revision: str, selection: Selection, cache: str) -> tuple[str, Optional[list[str]]]:
    """(The snapshot directory of `repo_id` at `revision` holding the files `selection` loads, the repo's file
    list or None offline): downloaded (those files only) when the hub can be reached, else read from the
    cache (the refs name the commit)."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import OfflineModeIsEnabled
    from requests.exceptions import ConnectionError as Unreachable, Timeout

    repo_type = selection.repo_type
    if offline():
        return snapshot_download(repo_id, revision=revision, repo_type=repo_type, cache_dir=cache,
                                 local_files_only=True), None
    try:
        info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type)
    except (Unreachable, Timeout, OfflineModeIsEnabled):  # as from_pretrained does: the cached copy, if any
        return snapshot_download(repo_id, revision=revision, repo_type=repo_type, cache_dir=cache,
                                 local_files_only=True), None
    files = [s.rfilename for s in info.siblings or []]

    def fetch(name: str) -> str:  # one file at the commit just resolved, into the same cache
        return hf_hub_download(repo_id, name, revision=info.sha, repo_type=repo_type, cache_dir=cache)

    if selection.kind == "dataset":
        wanted = dataset_files(files, selection, lambda: _card_configs(fetch("README.md") if "README.md" in files
                                                                       else None))
    else:
        wanted = model_files(files, lambda name: _read_json(fetch(name)), weights=selection.kind == "model")
    # the patterns are the exact names: a "[", "*" or "?" in a file name is escaped for fnmatch
    patterns = [re.sub(r"([\[\]*?])", r"[\1]", name) for name in wanted]
    local = snapshot_download(repo_id, revision=info.sha, repo_type=repo_type, cache_dir=cache,
                              allow_patterns=patterns)  # the commit resolved above, even if the branch moved since
    if revision != info.sha:  # the cache's refs/<branch or tag>, for a later offline run naming the revision
        ref = os.path.join(os.path.dirname(os.path.dirname(local)), "refs", revision)
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as f:
            f.write(info.sha)
    return local, files


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _card_configs(readme: Optional[str]) -> dict:
    """{configuration name: its YAML} of a dataset card (README.md), as `datasets` reads them."""
    if readme is None:
        return {}
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    return dict(MetadataConfigs.from_dataset_card_data(DatasetCard.load(readme).data))


def _check_dataset(local: str, repo_id: str, selection: Selection, files: Optional[list[str]]) -> None:
    """The repo (`files`, its file list; None: what the cached snapshot holds) has what `selection` names: its
    data_dir is a directory with files, its config_name a configuration of the card; else one line naming what
    there is, before anything loads."""
    commit = os.path.basename(os.path.normpath(local))[:12]
    cached = "" if files is not None else " in the cache (download it while online)"
    if files is None:
        files = [os.path.relpath(os.path.join(root, name), local) for root, _, names in os.walk(local)
                 for name in names]
    if selection.data_dir:
        prefix = selection.data_dir.strip("/") + "/"
        if not any(f.startswith(prefix) for f in files):
            dirs = sorted({f.split("/")[0] for f in files if "/" in f and f[0] != "."})
            raise ConfigError(f"config error: {selection.section}.subset: hub dataset '{repo_id}' at {commit} has "
                              f"no files under '{selection.data_dir}/'{cached} (its directories: "
                              f"{', '.join(dirs) or 'none'}); set {selection.section}.subset to one of them (a "
                              f"data_dir, as Coati's --subset), or {selection.section}.config_name to a "
                              "configuration of its dataset card")
    if selection.config_name:
        readme = os.path.join(local, "README.md")
        configs = _card_configs(readme if os.path.isfile(readme) else None)
        if selection.config_name not in configs:
            raise ConfigError(f"config error: {selection.section}.config_name: hub dataset '{repo_id}' at {commit} "
                              f"has no configuration '{selection.config_name}' in its card (it has: "
                              f"{', '.join(configs) or 'none'}); use one of them, or {selection.section}.subset "
                              "for a directory of the repo")
