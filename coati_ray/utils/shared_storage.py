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

from coati_ray.storage.preflight import PROBE_DIR  # noqa: F401 (where the probes go)
# Set by Ray's job supervisor in the entrypoint's environment (ray._private.runtime_env.constants).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def under_ray_job() -> bool:
    return RAY_JOB_ENV in os.environ


def write_probe(output_dir: str, name: str, token: str) -> dict:
    """On a rank's (or a node's) node: write `<output_dir>/.storage-probe/<name>` holding `token` (a local path or
    a URI). Returns where it ran and the error, if the directory cannot even be written there."""
    from coati_ray.storage.preflight import probe_here

    return probe_here(output_dir, name, token)


def missing_probes(reports: list[dict], token: str) -> list[dict]:
    """On the driver's node: the reports whose probe file is absent or holds another token (another run's, or
    a node-local directory of the same name). Removes the probes it read."""
    from coati_ray.storage.preflight import read_probe

    return [report for report in reports if not read_probe(report, token)]


def unshared_message(output_dir: str, missing: list[dict], before_start: bool = False) -> str:
    from coati_ray.storage.uri import is_uri, redact

    first = missing[0]
    where = ", ".join(f"{r['name']} on {r['host']}" for r in missing)
    if is_uri(output_dir):
        return (f"run error: output_dir '{redact(output_dir)}' cannot be written from {where} ({first['error']}); "
                "give every node the same credentials and endpoint (AWS_* / GOOGLE_APPLICATION_CREDENTIALS in "
                "its environment, e.g. a KubeRay Secret through envFrom)")
    why = f" ({first['error']})" if first["error"] else ", but the driver cannot read it back"
    return (f"run error: output_dir '{output_dir}' is not shared: {where} wrote its probe file{why}; put "
            "output_dir on storage every node mounts at the same path (NFS, a cloud bucket mount) or on an object "
            "store (output_dir=s3://bucket/run, gs://, hdfs://), since "
            + ("the next stage and --resume read what each node writes" if before_start else
               "the driver completes the checkpoints the ranks write"))


def job_path_problem(key: str, path: str, is_output: bool) -> tuple[str, str] | None:
    """Under `ray job submit`: (what is wrong, how to fix it) for a relative `path` that cannot work; None
    when it can, or when this is no Ray job."""
    from coati_ray.storage.uri import is_uri

    if not under_ray_job() or os.path.isabs(path) or is_uri(path):
        return None
    if is_output:
        return (f"'{path}' is relative, and a Ray job runs in a temporary copy of its working directory that is "
                "deleted with it", f"pass an absolute path on storage every node mounts, e.g. {key} $PWD/{path}")
    if not os.path.exists(path):
        return (f"'{path}' is not in the job's uploaded working directory ({os.getcwd()}): --working-dir leaves "
                "out what .gitignore/.rayignore exclude", f"pass an absolute path every node can read, e.g. "
                f"{key}=$PWD/{path}")
    return None
