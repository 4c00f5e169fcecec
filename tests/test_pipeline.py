"""The main job, shortened: SFT -> RM -> PPO in one Ray job, then the gold-score report.

The real demo (configs/demo.yaml) runs minutes; here every stage takes a few steps on the 2-layer
tiny llama, which is enough to check that the stages feed each other through HF checkpoints and
that the run directory holds everything the report promises.
"""

import json
import os

import pytest

from coati_ray.config import load_config
from coati_ray.config.pipeline import PipelineConfig, prepare_pipeline_dict
from coati_ray.errors import ConfigError
from tests.conftest import REPO

DEMO = os.path.join(REPO, "configs", "demo.yaml")
REPORT_KEYS = ("gold_score_sft", "gold_score_ppo", "rm_accuracy", "kl_to_initial", "ppo_steps", "wall_seconds")


def short_overrides(tiny_llama: str) -> list[str]:
    return [
        f"sft.model.path={tiny_llama}", "sft.trainer.max_steps=4", "sft.trainer.save_every=2",
        "sft.trainer.log_every=2", "sft.resources.num_cpus_per_rank=0.5", "sft.resources.torch_threads=1",
        "rm.trainer.max_steps=4", "rm.trainer.save_every=null", "rm.trainer.log_every=2",
        "rm.resources.num_cpus_per_rank=0.5", "rm.resources.torch_threads=1",
        "ppo.algorithm.max_steps=2", "ppo.algorithm.eval_every=1", "ppo.algorithm.save_every=null", "ppo.algorithm.eval_samples_per_prompt=1",
        "ppo.data.eval_max_samples=8", "ppo.generation.max_new_tokens=6", "ppo.buffer.timeout_s=120",
        "ray.dashboard=false",  # the embedded Ray starts faster without it
    ]


def load(overrides: list[str], out: str) -> PipelineConfig:
    cfg = load_config(PipelineConfig, DEMO, overrides, output_dir=out, prepare=prepare_pipeline_dict)
    cfg.link()
    return cfg


def test_pipeline_links_stages_and_seeds(tiny_llama, tmp_path):
    cfg = load(short_overrides(tiny_llama) + ["seed=7"], str(tmp_path / "run"))
    sft_final = str(tmp_path / "run" / "sft" / "checkpoints" / "final")
    rm_final = str(tmp_path / "run" / "rm" / "checkpoints" / "final")
    assert cfg.rm.model.path == sft_final and cfg.ppo.actor.path == sft_final
    assert cfg.ppo.critic.path == rm_final and cfg.ppo.reward_model.path == rm_final
    assert cfg.sft.output_dir == str(tmp_path / "run" / "sft")
    assert {cfg.sft.strategy.seed, cfg.rm.strategy.seed, cfg.ppo.algorithm.seed,
            cfg.ppo.actor_trainer.strategy.seed, cfg.ppo.critic_trainer.strategy.seed} == {7}
    cfg.validate()  # later stages are checked against the SFT base model before they exist


@pytest.mark.parametrize("override, needle", [
    ("rm.model.path=/somewhere", "rm.model.path is set by the pipeline"),
    ("ppo.reward_model.path=/somewhere", "ppo.reward_model.path is set by the pipeline"),
    ("sft.output_dir=/somewhere", "sft.output_dir is set by the pipeline"),
])
def test_pipeline_refuses_keys_it_sets(tiny_llama, tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle):
        load(short_overrides(tiny_llama) + [override], str(tmp_path / "run"))


@pytest.mark.parametrize("override, needle", [
    ("ppo.maker.num_makers=0", "maker.num_makers"),
    ("ppo.data.gold_task=chess", "gold_task"),
    ("rm.trainer.batch_size=3", "trainer.batch_size"),
    ("ppo.algorithm.eval_samples_per_prompt=0", "eval_samples_per_prompt"),
])
def test_pipeline_validates_every_stage_up_front(tiny_llama, tmp_path, override, needle):
    cfg = load(short_overrides(tiny_llama) + [override], str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=needle):
        cfg.validate()


def test_bad_ppo_prompt_stops_pipeline_before_sft(tiny_llama, tmp_path, capsys):
    """A broken PPO prompt file is found before any stage runs (nothing is written)."""
    from launch.pipeline import main

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "sort: 1 2"}\n{"text": "no prompt field"}\n')
    out = tmp_path / "run"
    rc = main(["--config", DEMO, "--output-dir", str(out), *short_overrides(tiny_llama),
               f"ppo.data.prompt_path={bad}"])
    err = capsys.readouterr().err
    assert rc == 2 and "row 2" in err and str(bad) in err, err
    assert not (out / "sft").exists()


def chat_overrides(chat_data: dict, stages=("sft", "rm", "ppo")) -> list[str]:
    """Every stage's data in role layout with a system turn (tests/conftest.py chat_data)."""
    out = []
    if "sft" in stages:
        out += [f"sft.data.train_path={chat_data['sft_train']}", f"sft.data.eval_path={chat_data['sft_eval']}",
                "sft.data.max_length=96"]
    if "rm" in stages:
        out += [f"rm.data.train_path={chat_data['pref_train']}", f"rm.data.eval_path={chat_data['pref_eval']}",
                "rm.data.max_length=96"]
    return out + [f"ppo.data.prompt_path={chat_data['prompts_train']}",
                  f"ppo.data.eval_prompt_path={chat_data['prompts_eval']}"]


def assert_template_travels(out, stages, needle: str) -> None:
    """Every stage's exported tokenizer keeps the chat template the run trained with."""
    for final in stages:
        config = json.loads((out / final / "tokenizer_config.json").read_text())
        assert needle in config["chat_template"], final


@pytest.mark.slow
def test_short_pipeline_end_to_end(tiny_chatml, chat_data, tmp_path, capsys):
    """On the ChatML model, with a system turn in every stage's rows."""
    import ray

    from launch.pipeline import main

    out = tmp_path / "run"
    args = ["--config", DEMO, "--output-dir", str(out), *short_overrides(tiny_chatml), *chat_overrides(chat_data),
            "ppo.algorithm.save_every=1", "evaluate.limit=6"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert not ray.is_initialized()  # the embedded Ray it started is gone

    summary = json.loads((out / "summary.json").read_text())
    for key in REPORT_KEYS:
        assert summary[key] is not None, key
        assert key in printed  # the terminal table
    assert summary["ppo_steps"] == 2
    assert 0.0 <= summary["gold_score_sft"] <= 1.0 and 0.0 <= summary["gold_score_ppo"] <= 1.0
    assert 0.0 <= summary["rm_accuracy"] <= 1.0 and summary["kl_to_initial"] > -1.0
    assert summary["evaluation"]["task"] == "sorting" and summary["evaluation"]["prompts"] == 8
    assert set(summary["stage_seconds"]) == {"sft", "rm", "ppo"}
    assert len(summary["samples_before"]) == len(summary["samples_after"]) > 0

    for stage in ("sft", "rm", "ppo"):
        assert (out / stage / "config.yaml").is_file() and (out / stage / "summary.json").is_file()
    assert (out / "sft" / "checkpoints" / "final" / "config.json").is_file()
    assert (out / "rm" / "checkpoints" / "final" / "value_head.safetensors").is_file()
    assert (out / "ppo" / "checkpoints" / "final" / "actor" / "model" / "model.safetensors").is_file()
    for name in ("config.yaml", "report.md", "samples.md", "plots/ppo.png", "plots/sft.png", "plots/rm.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "plots" / "ppo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = [r for r in map(json.loads, (out / "ppo" / "metrics.jsonl").read_text().splitlines())
             if "eval/gold_score" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]  # before PPO, every step, after the last
    assert summary["gold_score_sft"] == pytest.approx(evals[0]["eval/gold_score"])
    assert summary["gold_score_ppo"] == pytest.approx(evals[-1]["eval/gold_score"])
    report = (out / "report.md").read_text()
    assert "gold_score_ppo" in report and "plots/ppo.png" in report
    # lm-evaluation-harness on the base model and after SFT and PPO, its table beside the gold score
    assert set(summary["lm_eval"]["stages"]) == {"base", "sft", "ppo"}
    for label in ("base", "sft", "ppo"):
        assert summary["lm_eval"]["stages"][label]["coati_sorting"]["samples"] == 6
        assert (out / "lm_eval" / label / "lm_eval.json").is_file()
    assert "## lm-evaluation-harness" in report and "| coati_sorting | gold_score |" in report
    assert report.index("gold_score_ppo") < report.index("## lm-evaluation-harness")
    assert "lm-evaluation-harness:" in printed and "after PPO" in printed
    assert_template_travels(out, ("sft/checkpoints/final", "rm/checkpoints/final",
                                  "ppo/checkpoints/final/actor/model"), "<|im_start|>")

    # A second run into the same directory is refused, not mixed in or overwritten...
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # ...and --resume reuses the finished stages instead of training again.
    before = (out / "ppo" / "metrics.jsonl").read_text()
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already complete") == 3
    assert (out / "ppo" / "metrics.jsonl").read_text() == before

    # A PPO stage stopped after its first checkpoint (what a killed job leaves: step_000001, no final, no
    # summary) resumes from that checkpoint and finishes.
    import shutil

    for leftover in ("summary.json", "checkpoints/final", "checkpoints/step_000002"):
        path = out / "ppo" / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (out / "summary.json").unlink()
    assert (out / "ppo" / "checkpoints" / "step_000001" / "trainer_state.json").is_file()
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already complete") == 2 and "ppo: starting from" in printed and "step_000001" in printed
    resumed = json.loads((out / "ppo" / "summary.json").read_text())
    assert resumed["steps"] == 2 and (out / "ppo" / "checkpoints" / "final" / "actor" / "model").is_dir()
    steps = [r["step"] for r in map(json.loads, (out / "ppo" / "metrics.jsonl").read_text().splitlines())
             if "actor/loss" in r]
    assert steps == [1, 2]  # step 1 kept from the first run, step 2 trained on resume: none twice


@pytest.mark.slow
def test_rlvr_pipeline_runs_sft_then_grpo_without_a_reward_model_or_critic(tiny_chatml, chat_data, tmp_path, capsys):
    """configs/demo_rlvr.yaml shortened, on the ChatML model with a system turn: no rm stage, GRPO on the sorting
    verifier; nothing is linked to a reward model or critic, and the report says the training reward was the
    verifier."""
    from launch.pipeline import main

    rlvr = os.path.join(REPO, "configs", "demo_rlvr.yaml")
    overrides = [f"sft.model.path={tiny_chatml}", *chat_overrides(chat_data, ("sft",)), "sft.trainer.max_steps=4", "sft.trainer.save_every=null",
                 "sft.resources.num_cpus_per_rank=0.5", "sft.resources.torch_threads=1", "ppo.algorithm.max_steps=2",
                 "ppo.algorithm.eval_every=null", "ppo.algorithm.save_every=null", "ppo.algorithm.eval_samples_per_prompt=1",
                 "ppo.data.eval_max_samples=8", "ppo.generation.max_new_tokens=6", "ppo.algorithm.rollout_batch_size=32",
                 "ppo.algorithm.train_batch_size=32", "ppo.maker.batch_size=16", "ray.dashboard=false"]
    cfg = load_config(PipelineConfig, rlvr, overrides, output_dir=str(tmp_path / "cfg"), prepare=prepare_pipeline_dict)
    cfg.link()
    cfg.validate()
    assert cfg.stages == ("sft", "ppo") and cfg.ppo.reward_model is None and cfg.ppo.critic is None
    assert cfg.ppo.roles == ("actor",)
    out = tmp_path / "run"
    assert main(["--config", rlvr, "--output-dir", str(out), *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"sft", "ppo"} and summary["ppo_steps"] == 2
    assert summary["rm_accuracy"] is None and 0.0 <= summary["gold_score_ppo"] <= 1.0
    assert summary["evaluation"]["estimator"] == "grpo"
    assert "coati_ray.tasks.sorting:reward" in (out / "report.md").read_text()
    assert not (out / "rm").exists() and not (out / "ppo" / "checkpoints" / "final" / "critic").exists()
    assert_template_travels(out, ("sft/checkpoints/final", "ppo/checkpoints/final/actor/model"), "<|im_start|>")


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "configs", "gpu"))))
def test_gpu_configs_parse(name):
    """The README's GPU configs name real keys with the right types (they cannot run here: no CUDA,
    no 1B-class checkpoints), and their group sizes divide the batches as validate() requires."""
    from coati_ray.config.rl import RLConfig

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "gpu", name))
    p = cfg.algorithm
    assert p.rollout_batch_size % cfg.maker.batch_size == 0 and p.rollout_batch_size % p.train_batch_size == 0
    for group in (cfg.actor_trainer, cfg.critic_trainer):
        assert p.train_batch_size % (p.micro_batch_size * group.resources.num_ranks) == 0
        assert group.resources.num_gpus_per_rank > 0


@pytest.mark.slow
def test_expand_vocab_and_pretrain_run_before_sft_each_handing_the_next_its_checkpoint_by_uri(
        tiny_llama, tmp_path, s3_server, monkeypatch):
    """Colossal-LLaMA's order in one job: expand the vocabulary, pretrain on data the pipeline tokenizes with
    the expanded tokenizer, then SFT and GRPO on top (configs/demo_rlvr.yaml shortened), with output_dir on the
    S3-compatible test server: the prepared data and every checkpoint go to the URI and are read back from it
    (the local hand-off is the short pipeline's)."""
    from transformers import AutoTokenizer

    from coati_ray.storage.cache import local_copy
    from coati_ray.storage.fs import list_files, read_text
    from coati_ray.storage.uri import join
    from launch.pipeline import main

    monkeypatch.setenv("COATI_CACHE_DIR", str(tmp_path / "cache"))  # before the pipeline's Ray starts

    rlvr = os.path.join(REPO, "configs", "colossal_llama_tiny.yaml")
    overrides = [f"expand_vocab.source={tiny_llama}", f"expand_vocab.pieces={REPO}/data/vocab/pieces.jsonl",
                 f"prepare.data_input_dirs={os.path.join(REPO, 'data', 'pretrain')}", "prepare.num_spliced_dataset_bins=2",
                 "pretrain.trainer.max_steps=3", "pretrain.trainer.batch_size=8",
                 "pretrain.trainer.micro_batch_size=8", "pretrain.resources.num_cpus_per_rank=0.5",
                 "pretrain.resources.torch_threads=1",
                 "sft.trainer.max_steps=3", "sft.trainer.save_every=null", "sft.resources.num_cpus_per_rank=0.5",
                 "sft.resources.torch_threads=1", "ppo.algorithm.max_steps=1", "ppo.algorithm.eval_every=null",
                 "ppo.algorithm.save_every=null", "ppo.algorithm.eval_samples_per_prompt=1", "ppo.data.eval_max_samples=8",
                 "ppo.generation.max_new_tokens=6", "ppo.algorithm.rollout_batch_size=32", "ppo.algorithm.train_batch_size=32",
                 "ppo.maker.batch_size=16", "ray.dashboard=false"]
    for extra, needle in ((f"sft.model.path={tiny_llama}", "sft.model.path is set by the pipeline"),
                          (f"pretrain.load_checkpoint={tiny_llama}", "pretrain.load_checkpoint is not used"),
                          ("pretrain.data.train_path=/x", "pretrain.data.train_path is set by the pipeline")):
        with pytest.raises(ConfigError, match=needle):
            load_config(PipelineConfig, rlvr, overrides + [extra], output_dir=str(tmp_path / "c"),
                        prepare=prepare_pipeline_dict)
    cfg = load_config(PipelineConfig, rlvr, overrides, output_dir=str(tmp_path / "cfg"), prepare=prepare_pipeline_dict)
    cfg.link()
    cfg.validate()
    assert cfg.stages == ("expand_vocab", "pretrain", "sft", "ppo")
    assert cfg.pretrain.model.path == cfg.final_checkpoint("expand_vocab")
    assert cfg.sft.model.path == cfg.final_checkpoint("pretrain") and cfg.ppo.actor.path == cfg.final_checkpoint("sft")

    out = join(s3_server.create_bucket("colossal"), "run")
    assert main(["--config", rlvr, "--output-dir", out, *overrides]) == 0
    read = lambda *path: json.loads(read_text(join(out, *path)))  # noqa: E731
    summary = read("summary.json")
    assert list(summary["stage_seconds"]) == ["expand_vocab", "pretrain", "sft", "ppo"]
    expanded = read("expand_vocab", "checkpoints", "final", "expand_vocab.json")
    assert expanded["added"] + expanded["already_present"] == 6 and expanded["repeated"] == 1  # 排序 twice
    assert expanded["added"] >= 3  # the Chinese pieces are new to the tiny tokenizer (not in its corpus)
    files = set(list_files(out))
    assert {"prepared/prepared.json", "prepared/manifest.json", "pretrain/checkpoints/final/manifest.json"} <= files
    prepared = read("prepared", "prepared.json")  # tokenized with the expanded tokenizer (this node's copy of it)
    assert prepared["tokenizer_dir"] == local_copy(join(out, "expand_vocab", "checkpoints", "final"))
    tok = AutoTokenizer.from_pretrained(local_copy(join(out, "sft", "checkpoints", "final")))  # expanded vocab in SFT
    assert len(tok) == expanded["new_vocab"] and len(tok.encode("请把这些数字从小到大排序", add_special_tokens=False)) == 1
    assert read("pretrain", "summary.json")["steps"] == 3
    assert not os.listdir(tmp_path / "cache" / "staging")  # every staged write uploaded and removed
