"""Models, tokenizers and datasets named by hub id, read offline (HF_HUB_OFFLINE=1) from a Hugging Face cache
the tests build in the layout huggingface_hub and datasets write: pinned to a commit before anything starts,
loaded at that commit by every process (every actor of a PPO job on Ray too), refused in one line when they
cannot be resolved."""

import json
import os

import pytest

from coati_ray.config import SFTConfig, load_config
from coati_ray.config.ppo import PPOConfig
from coati_ray.config.schema import ModelConfig
from coati_ray.data.loading import HubSource
from coati_ray.errors import DataError, ModelError
from coati_ray.models.hub import is_hub_id, local_dir
from tests.conftest import REPO, data_path
from tests.hub_cache import add_dataset, add_model_snapshot, point_ref

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One hub cache (and datasets cache) for the module, in the environment of this process and of the
    Ray workers the module starts: the way a user's HF_HOME is seen by every process on a node."""
    root = tmp_path_factory.mktemp("hf_home")
    env = {"HF_HUB_CACHE": str(root / "hub"), "HF_DATASETS_CACHE": str(root / "datasets"), "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def broken_snapshot(tmp_path_factory):
    """A snapshot no process can load (config.json is not JSON): where `main` points once a run is pinned."""
    path = tmp_path_factory.mktemp("broken")
    (path / "config.json").write_text("{ this is not json")
    return str(path)


def test_what_counts_as_a_hub_id(tiny_llama):
    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and is_hub_id("gpt2")
    assert not is_hub_id(tiny_llama) and not is_hub_id("./runs/sft") and not is_hub_id("/abs/model")
    assert not is_hub_id("a/b/c") and not is_hub_id("org/../x")


def test_a_hub_id_is_pinned_to_its_commit_and_every_later_load_reads_that_commit(hub, tiny_chatml, broken_snapshot):
    from coati_ray.models.factory import build_actor
    from coati_ray.models.loading import tokenizer_for

    commit = add_model_snapshot(hub["HF_HUB_CACHE"], "org/chat-a", tiny_chatml)
    cfg = ModelConfig(path="org/chat-a")
    cfg.validate()
    assert cfg.revision == commit  # the branch (main) became the commit it points at
    snapshot = os.path.join(hub["HF_HUB_CACHE"], "models--org--chat-a", "snapshots", commit)
    assert cfg.local_path == snapshot
    later = add_model_snapshot(hub["HF_HUB_CACHE"], "org/chat-a", broken_snapshot)  # main moves on
    assert later != commit and local_dir("org/chat-a", cfg.revision) == snapshot
    tokenizer = tokenizer_for(cfg, "auto")
    assert "<|im_start|>" in tokenizer.chat_template
    assert build_actor(cfg).model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    tagged = ModelConfig(path="org/chat-a", revision=commit[:7] + "x" * 33)
    with pytest.raises(ModelError, match="org/chat-a' at revision"):
        tagged.validate()


def test_ids_that_cannot_be_resolved_end_in_one_line_before_ray(hub, tmp_path, capsys, monkeypatch):
    """Unknown, or cached without the revision asked: one line naming the id, the revision and the cache."""
    from launch import sft

    def ray_started(*a, **k):
        raise AssertionError("Ray was started before the input was refused")

    monkeypatch.setattr(ray, "init", ray_started)
    base = ["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), "--output-dir", str(tmp_path / "never")]
    for overrides, needle in ((["model.path=nobody/no-such-model"], "'nobody/no-such-model' at revision 'main'"),
                              (["model.path=org/chat-a", "model.revision=v9"], "'org/chat-a' at revision 'v9'")):
        assert sft.main(base + overrides) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and hub["HF_HUB_CACHE"] in err[0] and "HF_HUB_OFFLINE" in err[0], err
    assert not (tmp_path / "never").exists()


def test_datasets_by_hub_name_with_subset_and_split(hub, tokenizer):
    from coati_ray.data.datasets import build_preference_dataset

    with open(data_path("pref", "eval.jsonl")) as f:
        held_out = sum(1 for _ in f)
    add_dataset(hub["HF_DATASETS_CACHE"], "org/sorting-prefs", "helpful",
                {"train": data_path("pref", "train.jsonl"), "test": data_path("pref", "eval.jsonl")})
    items, report = build_preference_dataset("org/sorting-prefs", tokenizer, 64, source=HubSource("helpful", "test"))
    assert len(items) == report.rows == held_out
    for source, needle in ((HubSource("harmless", "test"), "subset 'harmless'"),
                           (HubSource("helpful", "validation"), "split 'validation'")):
        with pytest.raises(DataError, match=needle) as err:
            build_preference_dataset("org/sorting-prefs", tokenizer, 64, source=source)
        assert "org/sorting-prefs" in str(err.value) and hub["HF_DATASETS_CACHE"] in str(err.value)


def test_sft_by_hub_ids_keeps_the_commit_and_never_writes_the_token(hub, tiny_chatml, chat_data, tmp_path,
                                                                    monkeypatch):
    """model and data named on the hub: config.yaml records the id and its commit (so `--config` repeats the
    run exactly); HF_TOKEN is read from the environment only and appears in no file of the run."""
    from launch import sft

    secret = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    commit = add_model_snapshot(hub["HF_HUB_CACHE"], "org/chat-sft", tiny_chatml)
    add_dataset(hub["HF_DATASETS_CACHE"], "org/sorting-chat", "default",
                {"train": chat_data["sft_train"], "test": chat_data["sft_eval"]})
    out = tmp_path / "sft"
    assert sft.main(["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), "model.path=org/chat-sft",
                     "data.train_path=org/sorting-chat", "data.eval_path=org/sorting-chat", "data.max_length=96",
                     "trainer.max_steps=2", "--output-dir", str(out)]) == 0
    saved = load_config(SFTConfig, str(out / "config.yaml"))
    assert (saved.model.path, saved.model.revision) == ("org/chat-sft", commit)
    final = json.loads((out / "checkpoints" / "final" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in final["chat_template"]  # the template it trained with travels on
    for root, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert secret.encode() not in f.read(), os.path.join(root, name)


@pytest.fixture(scope="module")
def hub_ray(hub):
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {**hub, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.mark.slow
def test_every_actor_of_a_ppo_job_loads_the_pinned_commit_by_id(hub, hub_ray, tiny_chatml, broken_snapshot,
                                                                tmp_path):
    """Actor, initial, critic and reward models named by hub id: the driver pins them, then `main` moves to a
    snapshot nothing can load. Every maker and trainer resolves the id itself, in its own process, through the
    cache: the job finishes only if each one loaded the pinned commit."""
    import torch

    from actors.driver import PPOJob
    from coati_ray.models import RewardModel

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_chatml).save_pretrained(str(rm_dir))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_chatml).save_pretrained(str(rm_dir))
    policy = add_model_snapshot(hub["HF_HUB_CACHE"], "org/policy", tiny_chatml)
    reward = add_model_snapshot(hub["HF_HUB_CACHE"], "org/reward", str(rm_dir))
    cfg = load_config(PPOConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        "actor.path=org/policy", "critic.path=org/reward", "reward.path=org/reward",
        f"data.prompt_path={data_path('prompts', 'train.jsonl')}", "generation.max_new_tokens=4", "ppo.max_steps=1",
        "maker.num_makers=1", "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
        "buffer.timeout_s=120"], output_dir=str(tmp_path / "ppo"))
    cfg.validate()
    assert (cfg.actor.revision, cfg.critic.revision, cfg.reward.revision) == (policy, reward, reward)
    for repo in ("org/policy", "org/reward"):
        point_ref(hub["HF_HUB_CACHE"], repo, add_model_snapshot(hub["HF_HUB_CACHE"], repo, broken_snapshot,
                                                                 ref="next"))
    summary = PPOJob(cfg, log=True).run()
    assert summary["steps"] == 1
    saved = load_config(PPOConfig, str(tmp_path / "ppo" / "config.yaml"))
    assert (saved.actor.path, saved.actor.revision, saved.reward.revision) == ("org/policy", policy, reward)
    assert "snapshots" not in (tmp_path / "ppo" / "config.yaml").read_text()  # ids and commits, no local paths
