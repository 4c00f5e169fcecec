"""Runs whose output_dir is an object-store URI, against a real S3-compatible server on loopback (moto in its own
process): every file of the run lands at the URI, nothing stays in the node-local staging, a checkpoint whose
upload never finished is never resumed from, and what was trained is loaded back from the URI."""

import json
import os

import pytest

from tests.conftest import REPO, data_path


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """A bucket on the test server, and this module's node-local storage root (COATI_CACHE_DIR), set before any
    Ray starts so that the actors inherit both."""
    saved = os.environ.get("COATI_CACHE_DIR")
    os.environ["COATI_CACHE_DIR"] = str(tmp_path_factory.mktemp("coati-cache"))
    yield s3_server.create_bucket("runs")
    if saved is None:
        os.environ.pop("COATI_CACHE_DIR", None)
    else:
        os.environ["COATI_CACHE_DIR"] = saved


def staging_left() -> list[str]:
    from coati_ray.storage.staging import staging_root

    root = staging_root()
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def remote_files(uri: str) -> set[str]:
    from coati_ray.storage.fs import list_files

    return set(list_files(uri))


def remote_json(uri: str):
    from coati_ray.storage.fs import read_text

    return json.loads(read_text(uri))


def remote_metrics(uri: str) -> list[dict]:
    from coati_ray.storage.fs import read_text

    return [json.loads(line) for line in read_text(uri + "/metrics.jsonl").splitlines() if line.strip()]


def sft(out: str, *overrides, resume=None) -> int:
    from launch.sft import main

    argv = ["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), "--output-dir", out, "ray.dashboard=false",
            *overrides]
    return main(argv + (["--resume"] if resume else []))


def sft_data(model: str) -> list[str]:
    return [f"model.path={model}", f"data.train_path={data_path('sft', 'train.jsonl')}", "data.eval_path=null"]


def copy_remote(src: str, dst: str, tmp_path, files=None) -> None:
    from coati_ray.storage.fs import download, list_files, upload

    names = sorted(files if files is not None else list_files(src))
    local = tmp_path / "copy"
    download(src, str(local), names)
    upload(str(local), dst, names)


def test_sft_to_s3_resumes_past_an_unfinished_upload_and_generates_from_the_uri(bucket, tiny_llama, tmp_path,
                                                                                capsys):
    from coati_ray.storage.fs import delete
    from coati_ray.storage.uri import join

    common = [*sft_data(tiny_llama), "trainer.max_steps=8", "trainer.save_every=4", "trainer.keep_checkpoints=5"]
    full = join(bucket, "sft-full")
    assert sft(full, *common) == 0
    files = remote_files(full)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints/step_000004/manifest.json",
            "checkpoints/step_000004/trainer_state.json", "checkpoints/step_000004/model/config.json",
            "checkpoints/final/manifest.json", "checkpoints/final/model.safetensors"} <= files, sorted(files)
    assert [r["step"] for r in remote_metrics(full)] == list(range(1, 9))
    assert remote_json(join(full, "summary.json"))["final_checkpoint"] == join(full, "checkpoints", "final")
    assert staging_left() == []  # every staged write was uploaded and removed
    manifest = remote_json(join(full, "checkpoints", "step_000004", "manifest.json"))
    assert manifest["files"]["trainer_state.json"] > 0 and "model/config.json" in manifest["files"]

    # A run "killed" while uploading its step-6 checkpoint: step 4 complete, step 6's files there but no
    # manifest, and metrics two lines past the last complete checkpoint.
    crashed = join(bucket, "sft-crashed")
    copy_remote(join(full, "checkpoints", "step_000004"), join(crashed, "checkpoints", "step_000004"), tmp_path)
    half = sorted(f for f in remote_files(join(full, "checkpoints", "step_000004")) if f != "manifest.json")
    copy_remote(join(full, "checkpoints", "step_000004"), join(crashed, "checkpoints", "step_000006"),
                tmp_path / "half", files=half[: len(half) // 2])
    from coati_ray.storage.fs import write_text

    write_text(join(crashed, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in remote_metrics(full)[:6]))
    from coati_ray.utils.run_dir import latest_checkpoint

    assert latest_checkpoint(crashed) == join(crashed, "checkpoints", "step_000004")
    capsys.readouterr()
    assert sft(crashed, *common, resume=True) == 0
    assert f"resumed from {join(crashed, 'checkpoints', 'step_000004')} at step 4" in capsys.readouterr().out
    rows = remote_metrics(crashed)
    assert [r["step"] for r in rows] == list(range(1, 9))  # none skipped, none twice
    for a, b in zip(remote_metrics(full)[4:], rows[4:]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert latest_checkpoint(crashed) == join(crashed, "checkpoints", "step_000004")  # step 6: still unfinished
    assert staging_left() == []

    from coati_ray.storage.cache import local_copy

    from safetensors.torch import load_file

    wa = load_file(os.path.join(local_copy(join(full, "checkpoints", "final")), "model.safetensors"))
    wb = load_file(os.path.join(local_copy(join(crashed, "checkpoints", "final")), "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5

    from launch.generate import main as generate

    capsys.readouterr()
    assert generate(["--model", join(full, "checkpoints", "final"), "--prompt", "Sort: 3 1 2",
                     "generation.max_new_tokens=4"]) == 0
    assert capsys.readouterr().out.strip()  # it answered
    delete(full)


def test_evaluate_reads_a_model_from_the_uri_and_writes_its_results_there(bucket, tiny_llama, capsys):
    """launch.evaluate --model s3://... --output-dir s3://...: the model through this node's cache, the results
    uploaded once written (nothing left in staging), and a second run refused before any model loads."""
    from coati_ray.storage.fs import upload
    from coati_ray.storage.uri import join
    from launch.evaluate import main

    model, out = join(bucket, "eval-model"), join(bucket, "eval")
    upload(tiny_llama, model)
    args = ["--model", model, "--tasks", "coati_sorting", "--limit", "4", "--output-dir", out]
    assert main(args) == 0
    assert f"wrote {join(out, 'lm_eval.json')}" in capsys.readouterr().out
    saved = remote_json(join(out, "lm_eval.json"))
    assert saved["model"] == model and saved["results"]["coati_sorting"]["samples"] == 4
    assert "lm_eval.md" in remote_files(out) and staging_left() == []
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and join(out, "lm_eval.json") in err[0], err


class Killed(BaseException):
    """The driver's process ending where it stands (not an error any handler would catch)."""


@pytest.mark.slow
def test_ppo_to_s3_killed_during_a_checkpoint_upload_resumes_from_the_one_before(bucket, tiny_llama, reward_dir,
                                                                                 monkeypatch):
    """A PPO run whose driver dies while its final checkpoint is being uploaded (every rank's part and the markers
    are there, the manifest is not): step 1 stays the latest, and the run resumed from it remakes and trains the
    batches of step 2 (the same ones), none skipped, none twice, with the files only at the URI."""
    import ray

    from actors.driver import RLJob
    from coati_ray.storage import checkpoint
    from coati_ray.storage.uri import join
    from coati_ray.utils.run_dir import latest_checkpoint
    from tests.ppo_helpers import ppo_config

    uri = join(bucket, "ppo-killed")
    cfg = ppo_config(tiny_llama, reward_dir, uri, "algorithm.max_steps=2", "algorithm.save_every=1",
                     "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "maker.num_makers=1",
                     "ray.dashboard=false")
    seal = checkpoint.seal

    def killed_before_the_final_manifest(target, meta=None):
        if target.endswith("final"):
            raise Killed()
        return seal(target, meta)

    first, resumed = {}, {}
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        monkeypatch.setattr(checkpoint, "seal", killed_before_the_final_manifest)
        with pytest.raises(Killed):
            RLJob(cfg).run(on_step=lambda job, step, m: first.__setitem__(step, m["consumed"]))
        monkeypatch.undo()
        files = remote_files(uri)
        assert {"checkpoints/final/driver_state.json", "checkpoints/final/critic/model/config.json",
                "checkpoints/step_000001/manifest.json"} <= files and "checkpoints/final/manifest.json" not in files
        assert latest_checkpoint(uri) == join(uri, "checkpoints", "step_000001")

        summary = RLJob(cfg, resume_from=latest_checkpoint(uri)).run(
            on_step=lambda job, step, m: resumed.__setitem__(step, m["consumed"]))
    finally:
        ray.shutdown()
    assert sorted(first) == [1, 2] and sorted(resumed) == [2] and summary["steps"] == 2
    for role in ("actor", "critic"):
        assert resumed[2][role]["batch_ids"] == first[2][role]["batch_ids"]  # the unsaved step made again
        ids = [b for steps in (first[1], resumed[2]) for b in steps[role]["batch_ids"]]
        assert ids == list(range(len(ids))), (role, ids)  # none skipped, none twice
    assert [r["step"] for r in remote_metrics(uri) if "reward" in r] == [1, 2]
    assert "checkpoints/final/manifest.json" in remote_files(uri)  # made again, complete this time
    assert staging_left() == []


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint"])
def test_a_bad_output_uri_is_one_line_before_anything_loads(case, bucket, tiny_llama, capsys, monkeypatch):
    from coati_ray.storage import fs

    out = "s3://no-such-bucket/run" if case == "missing bucket" else "s3://runs/run"
    if case == "unreachable endpoint":
        from tests.s3_server import free_port

        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        fs.reset()
    try:
        assert sft(out, *sft_data(tiny_llama), "trainer.max_steps=2") == 2
    finally:
        fs.reset()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert out in err[0] and ("does not exist" if case == "missing bucket" else "cannot be reached") in err[0]
    assert "testing" not in err[0].replace("s3://runs", "")  # the secret key is never shown
    assert staging_left() == []


@pytest.mark.slow
def test_the_pipeline_to_s3_end_to_end_then_resumed_reported_and_served_from_the_uri(bucket, tiny_llama, capsys):
    """SFT -> RM -> PPO (and lm-eval) with output_dir=s3://...: every stage hands the next its checkpoint by URI
    (read through each node's cache), the report lands beside them, and nothing stays in the staging area."""
    import ray

    from coati_ray.storage.uri import join
    from launch.generate import main as generate
    from launch.pipeline import main
    from launch.report import main as report
    from tests.test_pipeline import DEMO, short_overrides

    out = join(bucket, "pipeline")
    args = ["--config", DEMO, "--output-dir", out, *short_overrides(tiny_llama), "evaluate.limit=6"]
    assert main(args) == 0
    assert not ray.is_initialized()
    printed = capsys.readouterr().out
    assert f"report: {join(out, 'report.md')}" in printed
    files = remote_files(out)
    for name in ("config.yaml", "summary.json", "report.md", "samples.md", "plots/ppo.png", "plots/sft.png",
                 "sft/summary.json", "sft/metrics.jsonl", "sft/checkpoints/final/manifest.json",
                 "rm/checkpoints/final/value_head.safetensors", "rm/checkpoints/final/manifest.json",
                 "ppo/metrics.jsonl", "ppo/checkpoints/final/manifest.json",
                 "ppo/checkpoints/final/actor/model/model.safetensors"):
        assert name in files, (name, sorted(files))
    summary = remote_json(join(out, "summary.json"))
    assert summary["ppo_steps"] == 2 and summary["gold_score_ppo"] is not None
    assert remote_json(join(out, "ppo", "config.yaml").replace("config.yaml", "summary.json"))["steps"] == 2
    assert staging_left() == []

    assert main(args + ["--resume"]) == 0  # every stage found complete at the URI, none trained again
    assert capsys.readouterr().out.count("already complete") == 3

    assert report([out]) == 0
    assert f"wrote {join(out, 'report.md')}" in capsys.readouterr().out
    assert generate(["--model", join(out, "ppo", "checkpoints", "final", "actor", "model"), "--prompt", "Sort: 2 1",
                     "generation.max_new_tokens=4"]) == 0
    assert capsys.readouterr().out.strip()
    assert staging_left() == []


@pytest.mark.slow
def test_on_a_multi_node_cluster_files_go_only_to_the_uri_and_a_lost_trainer_node_is_survived(bucket, tiny_llama,
                                                                                                reward_dir):
    """`ray.cluster_utils.Cluster`: a head without CPUs (the driver and the buffer) and four 1-CPU nodes for the
    trainer ranks and the maker. The checkpoints are written by trainer ranks on other nodes than the driver's and
    reach the URI only. At step 3 the node of the critic's rank is removed without warning: the job restarts its
    actors from the step-2 checkpoint on the nodes left (downloading it there) and finishes, every batch trained
    once."""
    import ray
    from ray.cluster_utils import Cluster

    from actors.driver import RLJob
    from coati_ray.storage.uri import join
    from tests.ppo_helpers import ppo_config

    head = {"num_cpus": 0, "include_dashboard": False, "_system_config": {
        "health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 4}}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    for _ in range(4):  # after one is removed, the trainer ranks (0.5 CPU each) and the maker (1) still fit
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        driver_node = ray.get_runtime_context().get_node_id()
        uri = join(bucket, "multi-node")
        cfg = ppo_config(tiny_llama, reward_dir, uri, "algorithm.max_steps=4", "algorithm.save_every=2",
                         "algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "maker.num_makers=1",
                         "maker.num_cpus=1", "actor_trainer.resources.num_cpus_per_rank=0.5",
                         "critic_trainer.resources.num_cpus_per_rank=0.5")
        steps, removed = {}, []

        def node_of(handle) -> str:
            return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))

        def on_step(job, step, m):
            steps[step] = m["consumed"]
            trainer_nodes = {node_of(h) for ranks in job.groups.values() for h in ranks}
            assert driver_node not in trainer_nodes
            if step == 3 and not removed:
                where = node_of(job.groups["critic"][0])
                cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == where),
                                    allow_graceful=False)
                removed.append(where)

        summary = RLJob(cfg).run(on_step=on_step)
        assert removed and summary["steps"] == 4 and summary["trainer_restarts"] == 1, summary
        assert summary["trainer_restart_log"][0]["step"] == 2 and summary["trainer_restart_log"][0]["makers_kept"]
        for role in ("actor", "critic"):
            ids = [b for s in sorted(steps) for b in steps[s][role]["batch_ids"]]
            assert sorted(ids) == list(range(len(ids))), (role, ids)  # none skipped, none twice
        files = remote_files(uri)
        assert {"checkpoints/step_000002/manifest.json", "checkpoints/step_000002/critic/rng/rank_0.pt",
                "checkpoints/final/actor/model/config.json", "summary.json", "metrics.jsonl"} <= files
        assert [r["step"] for r in remote_metrics(uri) if "reward" in r] == [1, 2, 3, 4]
        assert staging_left() == []
    finally:
        ray.shutdown()
        cluster.shutdown()
