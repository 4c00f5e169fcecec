"""Hugging Face caches built by the tests themselves, laid out exactly as huggingface_hub and datasets write
them on a user's machine, so hub ids are resolved offline (HF_HUB_OFFLINE=1) the way a user's cache is read.

    models--<org>--<name>/snapshots/<commit>/<files>   refs/main (holds the commit)    (huggingface_hub)
    <org>___<name>/<subset>/0.0.0/<commit>/<name>-<split>.arrow + dataset_info.json  (datasets' cache)
"""

from __future__ import annotations

import hashlib
import os
import shutil


def fake_commit(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def add_model_snapshot(cache: str, repo_id: str, source_dir: str, commit: str = None, ref: str = "main") -> str:
    """Copy `source_dir` into the hub cache as `repo_id` at `commit` and point `refs/<ref>` at it."""
    commit = commit or fake_commit(repo_id + source_dir)
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(source_dir, os.path.join(repo, "snapshots", commit), dirs_exist_ok=True)
    point_ref(cache, repo_id, commit, ref)
    return commit


def point_ref(cache: str, repo_id: str, commit: str, ref: str = "main") -> None:
    refs = os.path.join(cache, "models--" + repo_id.replace("/", "--"), "refs")
    os.makedirs(refs, exist_ok=True)
    with open(os.path.join(refs, ref), "w") as f:
        f.write(commit)


def add_dataset(datasets_cache: str, repo_id: str, subset: str, splits: dict, commit: str = None) -> str:
    """Prepare jsonl files (split -> path) as `datasets.load_dataset(repo_id, subset)` caches a hub dataset:
    the packaged json builder writes the Arrow files and dataset_info.json, under the repo's cache name."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    commit = commit or fake_commit(repo_id + subset)
    org, name = repo_id.split("/")
    builder = Json(cache_dir=datasets_cache, dataset_name=name, config_name=subset, data_files=dict(splits),
                   hash=commit)
    builder.download_and_prepare()
    built = os.path.dirname(os.path.dirname(builder.cache_dir))  # <name>/<subset>-<data files hash>
    target = os.path.join(datasets_cache, f"{org}___{name}", subset)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(built, target)
    shutil.rmtree(os.path.join(datasets_cache, name), ignore_errors=True)
    datasets.disable_progress_bars()
    return commit
