"""Is the run directory on storage every node sees, and are a Ray job's paths meaningful on the cluster?

Checkpoints are written by trainer ranks on their own nodes and then renamed and marked complete by the
driver; metrics and summaries by the driver. That only works when the output directory is one shared
filesystem. `write_probe` runs on each rank's node, `missing_probes` on the driver's; a rank whose probe the
driver cannot read is on a node with its own private copy of the path.

Under `ray job submit` the driver runs in a temporary copy of the uploaded working directory, on the head
node: a relative output directory would vanish with it, and relative inputs that `.gitignore` kept out of
the upload do not exist there.
"""

from __future__ import annotations

import os
import socket

PROBE_DIR = ".storage-probe"
# Set by Ray's job supervisor in the entrypoint's environment (ray._private.runtime_env.constants).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def under_ray_job() -> bool:
    return RAY_JOB_ENV in os.environ


def write_probe(output_dir: str, name: str, token: str) -> dict:
    """On a rank's node: write `<output_dir>/.storage-probe/<name>` holding `token`. Returns where it ran and
    the error, if the directory cannot even be written there."""
    report = {"name": name, "host": socket.gethostname(), "path": os.path.join(output_dir, PROBE_DIR, name),
              "error": None}
    try:
        os.makedirs(os.path.dirname(report["path"]), exist_ok=True)
        with open(report["path"], "w") as f:
            f.write(token)
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
    return report


def missing_probes(reports: list[dict], token: str) -> list[dict]:
    """On the driver's node: the reports whose probe file is absent or holds another token (another run's, or
    a node-local directory of the same name). Removes the probes it read."""
    missing = []
    for report in reports:
        try:
            with open(report["path"]) as f:
                ok = report["error"] is None and f.read() == token
            os.remove(report["path"])
        except OSError:
            ok = False
        if not ok:
            missing.append(report)
    return missing


def unshared_message(output_dir: str, missing: list[dict]) -> str:
    first = missing[0]
    where = ", ".join(f"{r['name']} on {r['host']}" for r in missing)
    why = f" ({first['error']})" if first["error"] else ", but the driver cannot read it back"
    return (f"run error: output_dir '{output_dir}' is not shared: {where} wrote its probe file{why}; put "
            "output_dir on storage every node mounts at the same path (NFS, a cloud bucket mount), since the "
            "driver completes the checkpoints the ranks write")


def job_path_problem(key: str, path: str, is_output: bool) -> tuple[str, str] | None:
    """Under `ray job submit`: (what is wrong, how to fix it) for a relative `path` that cannot work; None
    when it can, or when this is no Ray job."""
    if not under_ray_job() or os.path.isabs(path):
        return None
    if is_output:
        return (f"'{path}' is relative, and a Ray job runs in a temporary copy of its working directory that is "
                "deleted with it", f"pass an absolute path on storage every node mounts, e.g. {key} $PWD/{path}")
    if not os.path.exists(path):
        return (f"'{path}' is not in the job's uploaded working directory ({os.getcwd()}): --working-dir leaves "
                "out what .gitignore/.rayignore exclude", f"pass an absolute path every node can read, e.g. "
                f"{key}=$PWD/{path}")
    return None
