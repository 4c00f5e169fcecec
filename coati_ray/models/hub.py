"""Models and tokenizers named as users name them: a local directory, or a Hugging Face hub id.

A hub id is resolved through `huggingface_hub` and the node's cache, exactly as `from_pretrained` would
read it: `HF_HOME` / `HF_HUB_CACHE` pick the cache, `HF_HUB_OFFLINE=1` reads only what is cached, and
`HF_TOKEN` (read by huggingface_hub from the environment, never passed through us) opens gated repos.

The driver resolves every id once, before Ray starts, to the commit its revision names (`pin`), and the
config carries that commit from then on; every actor on every node then loads exactly that commit
through its own node's cache (`local_dir`), under a per-repo file lock so the processes of one node
download it once. A cluster therefore never mixes revisions, even when `main` moves during the run.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Optional

from coati_ray.errors import DataError, ModelError

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


def pin(path: str, revision: Optional[str], key: str, repo_type: str = "model") -> Resolved:
    """Resolve `path` (a local directory or a hub id at `revision`) to what every process will load.

    A hub id is downloaded into (or read from) the cache now, on the driver, so that what the checks read
    (config.json, the tokenizer) is what the actors load; the returned commit is what the config carries.
    An id that cannot be resolved ends here in one line naming the id, the revision and the cache.
    """
    if not is_hub_id(path):
        return Resolved(path)
    local = _snapshot(path, revision or "main", key, repo_type)
    return Resolved(local, os.path.basename(os.path.normpath(local)))


def local_dir(path: str, revision: Optional[str], key: str = "model.path", repo_type: str = "model") -> str:
    """The directory to load `path` from on this node: `path` itself when local, else the snapshot of the
    pinned `revision` in this node's cache (downloaded once per node, under the repo's lock)."""
    if not is_hub_id(path):
        return path
    return _cached_snapshot(path, revision or "main", key, repo_type)


@functools.lru_cache(maxsize=64)
def _cached_snapshot(repo_id: str, revision: str, key: str, repo_type: str) -> str:
    # a commit's snapshot never changes, so one lookup per process is enough; a branch is looked up once
    # per process too (only a config that was never pinned loads by branch, e.g. a library user's script)
    return _snapshot(repo_id, revision, key, repo_type)


def _snapshot(repo_id: str, revision: str, key: str, repo_type: str) -> str:
    from filelock import FileLock
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = cache_dir()
    where = f"{key}: hub {repo_type} '{repo_id}' at revision '{revision}' (cache {cache}"
    where += ", HF_HUB_OFFLINE=1)" if offline() else ")"
    error = DataError if repo_type == "dataset" else ModelError
    try:
        os.makedirs(os.path.join(cache, ".locks"), exist_ok=True)
        lock = os.path.join(cache, ".locks", f"coati-{repo_type}s--{repo_id.replace('/', '--')}.lock")
        with FileLock(lock):  # the processes of one node fetch a repo once; the others wait and read it
            return snapshot_download(repo_id, revision=revision, repo_type=repo_type, cache_dir=cache,
                                     local_files_only=offline())
    except GatedRepoError:
        raise error(f"{where} is gated and no token with access was found; accept its terms on the hub and "
                    "export HF_TOKEN (or run `huggingface-cli login`) on every node") from None
    except RepositoryNotFoundError:
        raise error(f"{where} was not found (or is private and no token with access was found); check the id, "
                    "or export HF_TOKEN on every node") from None
    except RevisionNotFoundError:
        raise error(f"{where}: the revision does not exist; use a branch, tag or commit of that repo") from None
    except LocalEntryNotFoundError:
        raise error(f"{where} is not in the cache and the hub cannot be reached; download it first "
                    "(`huggingface-cli download " + repo_id + "`), point HF_HUB_CACHE at a cache that holds "
                    "it, or use a local directory") from None
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise error(f"{where} cannot be read ({first}); check the id and revision, or use a local "
                    "directory") from None
