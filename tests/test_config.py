"""Every bad-config case is refused with one line that names the key and the fix."""

import os

import pytest
import yaml

from coati_ray.config import RMConfig, SFTConfig, describe, load_config, save_config, to_dict
from coati_ray.errors import ConfigError
from tests.conftest import REPO, data_path

SFT_YAML = os.path.join(REPO, "configs", "sft_tiny.yaml")


def sft(tiny_llama, tmp_path, *overrides):
    cfg = load_config(SFTConfig, SFT_YAML, [f"model.path={tiny_llama}", f"data.train_path={data_path('sft', 'train.jsonl')}",
                                            f"data.eval_path={data_path('sft', 'eval.jsonl')}", *overrides],
                      output_dir=str(tmp_path / "run"))
    cfg.validate()
    return cfg


def error_of(fn) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    return msg


def test_valid_config_round_trips_through_config_yaml(tiny_llama, tmp_path):
    cfg = sft(tiny_llama, tmp_path, "trainer.batch_size=32", "optim.lr=1e-4")
    assert cfg.trainer.batch_size == 32 and cfg.optim.lr == pytest.approx(1e-4)
    path = tmp_path / "config.yaml"
    save_config(cfg, str(path))
    again = load_config(SFTConfig, str(path))
    assert to_dict(again) == to_dict(cfg)


def test_unknown_key_suggests_the_right_one(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "trainer.batch_sise=8"))
    assert "trainer.batch_sise" in msg and "did you mean 'trainer.batch_size'" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "x", "lora_rnak": 4}}))
    msg = error_of(lambda: load_config(SFTConfig, str(path)))
    assert "model.lora_rnak" in msg and "did you mean 'model.lora_rank'" in msg


def test_a_renamed_key_in_an_older_runs_config_says_what_it_is_now(tmp_path):
    from coati_ray.config.rl import RLConfig

    path = tmp_path / "config.yaml"  # a run's config.yaml written before generation.backend
    path.write_text(yaml.safe_dump({"actor": {"path": "x"}, "generation": {"compact": False}}))
    msg = error_of(lambda: load_config(RLConfig, str(path)))
    assert "'generation.compact' was renamed" in msg and "false -> backend: hf" in msg and "\n" not in msg


def test_unknown_section(tmp_path):
    msg = error_of(lambda: load_config(SFTConfig, SFT_YAML, ["traner.max_steps=3"]))
    assert "did you mean 'trainer'" in msg


def test_wrong_type_names_key_and_expected_type(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "trainer.batch_size=many"))
    assert "trainer.batch_size='many'" in msg and "expected int" in msg
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "model.trust_remote_code=maybe"))
    assert "model.trust_remote_code" in msg and "expected bool" in msg


def test_choice_typo_suggests_valid_choice(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "strategy.name=dpp"))
    assert "strategy.name='dpp'" in msg and "did you mean 'ddp'" in msg


def test_batch_not_divisible_by_micro_batch_times_ranks(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "trainer.batch_size=10", "trainer.micro_batch_size=4"))
    assert "trainer.batch_size" in msg and "not divisible" in msg and "multiple of 4" in msg
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "strategy.name=ddp", "resources.num_ranks=2",
                               "trainer.batch_size=12", "trainer.micro_batch_size=4"))
    assert "x ranks (2) = 8" in msg and "multiple of 8" in msg


def test_negative_lora_rank(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "model.lora_rank=-1"))
    assert "model.lora_rank" in msg and ">= 0" in msg


@pytest.mark.parametrize("name", ["colossalai_zero2", "colossalai_zero2_cpu", "colossalai_gemini"])
def test_cuda_only_strategy_without_cuda(tiny_llama, tmp_path, monkeypatch, name):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = error_of(lambda: sft(tiny_llama, tmp_path, f"strategy.name={name}", "strategy.precision=bf16"))
    assert "strategy.name" in msg and "needs CUDA" in msg and "ddp" in msg


def test_model_path_that_does_not_exist(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "model.path=/nonexistent/model"))
    assert "model.path" in msg and "does not exist" in msg


def test_model_dir_without_config_json(tiny_llama, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    msg = error_of(lambda: sft(tiny_llama, tmp_path, f"model.path={empty}"))
    assert "no config.json" in msg


def test_naive_with_several_ranks(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "resources.num_ranks=2", "trainer.batch_size=16"))
    assert "naive" in msg and "strategy.name=ddp" in msg


def test_missing_data_file(tiny_llama, tmp_path):
    msg = error_of(lambda: sft(tiny_llama, tmp_path, "data.train_path=/no/such.jsonl"))
    assert "data.train_path" in msg and "does not exist" in msg


def test_rm_rejects_sft_layout(tiny_llama, tmp_path):
    cfg = load_config(RMConfig, os.path.join(REPO, "configs", "rm_tiny.yaml"),
                      [f"model.path={tiny_llama}", f"data.train_path={data_path('pref', 'train.jsonl')}",
                       f"data.eval_path={data_path('pref', 'eval.jsonl')}", "data.format=messages"])
    msg = error_of(cfg.validate)
    assert "data.format" in msg and "preference" in msg


def test_override_without_equals_and_bad_yaml(tmp_path):
    assert "no '='" in error_of(lambda: load_config(SFTConfig, SFT_YAML, ["trainer.max_steps"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert "not valid YAML" in error_of(lambda: load_config(SFTConfig, str(bad)))
    assert "does not exist" in error_of(lambda: load_config(SFTConfig, str(tmp_path / "none.yaml")))


def test_required_key_missing(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train_path": "x"}}))
    assert "'model.path' is required" in error_of(lambda: load_config(SFTConfig, str(path)))


def test_describe_documents_every_key():
    rows = {key: help_ for key, _, _, help_ in describe(RMConfig)}
    assert "trainer.micro_batch_size" in rows and "loss_fn" in rows and "model.lora_rank" in rows
    assert all(help_ for help_ in rows.values())


def test_cli_refuses_bad_config_with_one_line_before_any_run_dir(tiny_llama, tmp_path, capsys):
    from launch.sft import main

    out_dir = tmp_path / "never_created"
    code = main(["--config", SFT_YAML, "--output-dir", str(out_dir), f"model.path={tiny_llama}",
                 "trainer.micro_batch_sise=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: config error:") and "micro_batch_size" in err[0]
    assert not out_dir.exists()


def test_the_generated_docs_pages_are_current():
    """docs/reference/config.md (from the config dataclasses) and docs/benchmarks.md (from RESULTS.md)."""
    import subprocess
    import sys

    code = subprocess.call([sys.executable, os.path.join(REPO, "scripts", "config_reference.py"), "--check"])
    assert code == 0, "the generated docs pages are stale: run python scripts/config_reference.py"


def ppo_cfg(tiny_llama, reward_dir, *overrides):
    from coati_ray.config.rl import RLConfig

    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"),
                      [f"actor.path={tiny_llama}", f"critic.path={tiny_llama}", f"reward_model.path={reward_dir}",
                       f"data.prompt_path={data_path('prompts', 'train.jsonl')}", *overrides])
    cfg.validate()
    return cfg


@pytest.mark.parametrize("overrides,expected", [
    (["maker.num_makers=0"], "maker.num_makers"),
    (["algorithm.rollout_batch_size=6"], "multiple of maker.batch_size"),
    (["algorithm.train_batch_size=3", "algorithm.rollout_batch_size=12"], "algorithm.train_batch_size"),
    (["actor_trainer.resources.num_ranks=3"], "algorithm.train_batch_size"),
    (["algorithm.ptx_coef=0.5"], "data.ptx_path"),
    (["algorithm.mode=async", "algorithm.max_staleness=0"], "algorithm.max_staleness"),
    (["buffer.capacity=2"], "buffer.capacity"),
    (["reward_model.lora_rank=4"], "reward_model.lora_rank"),
    (["generation.temperature=0"], "generation.temperature"),
    (["critic_trainer.strategy.name=naive", "critic_trainer.resources.num_ranks=2"], "naive"),
    (["algorithm.kl_estimator=k5"], "use one of: k1, k2, k3"),
    (["maker.cpu_cores=[]"], "maker.cpu_cores"),
    (["actor_trainer.resources.cpu_cores=[1, 1]"], "actor_trainer.resources.cpu_cores"),
    (["critic_trainer.resources.cpu_cores=[-1]"], "critic_trainer.resources.cpu_cores"),
    (["maker.nice=20"], "maker.nice"),
    (["actor_trainer.resources.nice=-5"], "actor_trainer.resources.nice"),
    (["algorithm.behaviour_cap=0.5"], "algorithm.behaviour_cap"),
    (["algorithm.clip_eps_high=0"], "algorithm.clip_eps_high"),
    (["algorithm.clip_eps_low=1"], "algorithm.clip_eps_low"),
    (["algorithm.clip_eps=1.5"], "algorithm.clip_eps"),
    (["algorithm.behaviour_correction=is"], "did you mean 'tis'"),
    (["algorithm.loss_agg=mean"], "use one of: token_mean"),
    (["algorithm.kl_penalty=sequence", "algorithm.kl_estimator=k3"], "config error: algorithm.kl_estimator: 'k3' is not used with "
                                                         "kl_penalty=sequence"),
    (["algorithm.kl_coef=-0.1"], "config error: algorithm.kl_coef: must be >= 0, got -0.1"),
    (["algorithm.kl_penalty=tokens"], "use one of: reward, sequence, loss"),
])
def test_ppo_bad_configs(tiny_llama, reward_dir, overrides, expected):
    msg = error_of(lambda: ppo_cfg(tiny_llama, reward_dir, *overrides))
    assert expected in msg


@pytest.mark.parametrize("overrides, makers_skip_log_probs", [
    (["algorithm.kl_penalty=sequence"], False), (["algorithm.kl_penalty=reward"], False), (["algorithm.kl_penalty=loss"], True),
    (["algorithm.kl_penalty=sequence", "algorithm.kl_coef=0"], True),
])
def test_makers_take_log_probs_whenever_a_kl_penalty_is_in_the_reward(overrides, makers_skip_log_probs):
    """Coati's sequence-level penalty needs the behaviour log-probs as the per-token one does (the shortcut of
    sync, one-epoch, whole-batch updates is for a KL outside the reward only)."""
    from coati_ray.config.rl import RLConfig

    cfg = load_config(RLConfig, None, ["actor.path=m", "critic.path=c", *overrides])
    assert (cfg.algorithm.kl_in_reward, cfg.trainer_log_probs_are_behaviour) == (not makers_skip_log_probs,
                                                                           makers_skip_log_probs)


def test_ppo_reward_without_value_head(tiny_llama, reward_dir):
    assert "not a reward model" in error_of(lambda: ppo_cfg(tiny_llama, reward_dir, f"reward_model.path={tiny_llama}"))


def test_ppo_asks_more_than_the_cluster_has_before_any_actor(tiny_llama, reward_dir, tmp_path, capsys):
    from launch.ppo import main

    ray = pytest.importorskip("ray")
    code = main(["--config", os.path.join(REPO, "configs", "ppo_tiny.yaml"), "--output-dir", str(tmp_path / "r"),
                 f"actor.path={tiny_llama}", f"critic.path={tiny_llama}", f"reward_model.path={reward_dir}",
                 f"data.prompt_path={data_path('prompts', 'train.jsonl')}", "maker.num_gpus=1", "ray.dashboard=false"])
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(ours) == 1 and "GPUs" in ours[0] and "cluster has" in ours[0], ours
    assert not ray.is_initialized()  # the embedded Ray it had to start to count resources is gone again


def test_one_override_switches_a_ppo_config_to_a_critic_free_estimator(tiny_llama, reward_dir, capsys):
    """algorithm.advantage_estimator=grpo on the PPO config (critic sections and all): the critic sections are set aside
    with one line saying so, and the job builds the actor group alone."""
    from coati_ray.config import notes

    notes._SAID.clear()
    cfg = ppo_cfg(tiny_llama, reward_dir, "algorithm.advantage_estimator=grpo", "algorithm.n_samples_per_prompt=4",
                  "critic_trainer.optim.lr=1e-3")
    assert cfg.critic is None and cfg.roles == ("actor",)
    err = capsys.readouterr().err
    assert err.count("note: algorithm.advantage_estimator=grpo trains no critic: the critic and critic_trainer section(s) "
                     "are set aside") == 1


@pytest.mark.parametrize("placement, expected", [
    ("colocted", "config error: placement: 'colocted' is not a placement; did you mean 'colocated'?"),
    ("my_missing_module:SPEC", "config error: placement: cannot import 'my_missing_module'"),
])
def test_a_placement_is_a_registered_name_or_a_module_path(tiny_llama, reward_dir, placement, expected):
    assert expected in error_of(lambda: ppo_cfg(tiny_llama, reward_dir, f"placement={placement}"))


def test_a_registered_transport_and_plugins_imported_before_the_checks(tiny_llama, reward_dir, tmp_path, monkeypatch):
    """A transport registered by name from the user's module is accepted once the module is in `plugins`
    (SyncConfig read a hand-kept list of names before); without it, refused in one line naming plugins."""
    (tmp_path / "my_transports_by_name.py").write_text(
        "from actors.transports import register_transport\nfrom actors.transports.object_store import ObjectStore\n\n\n"
        "@register_transport('shared_disk')\nclass SharedDisk(ObjectStore):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = error_of(lambda: ppo_cfg(tiny_llama, reward_dir, "weight_sync.transport=shared_disk"))
    assert "config error: weight_sync.transport: 'shared_disk' is not a weight transport" in msg and "plugins" in msg
    cfg = ppo_cfg(tiny_llama, reward_dir, "weight_sync.transport=shared_disk", "plugins=[my_transports_by_name]")
    assert cfg.weight_sync.transport == "shared_disk"


def test_an_old_config_still_loads_with_one_line_per_renamed_key(tiny_llama, reward_dir, tmp_path, capsys):
    """ppo: -> algorithm:, reward: -> reward_model:, sync: -> weight_sync: (one meaning per word): a config.yaml
    written before, and overrides in the old spelling, load under the new names, each said once."""
    from coati_ray.config import notes
    from coati_ray.config.rl import RLConfig

    notes._SAID.clear()  # once per process: this test counts its own
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"actor": {"path": tiny_llama}, "critic": {"path": tiny_llama},
                                   "reward": {"path": reward_dir}, "ppo": {"kl_coef": 0.2, "max_steps": 3},
                                   "sync": {"transport": "object_store"},
                                   "data": {"prompt_path": data_path("prompts", "train.jsonl")}}))
    cfg = load_config(RLConfig, str(old), ["ppo.kl_coef=0.3", "sync.bucket_mb=64"])
    cfg.validate()
    assert (cfg.algorithm.kl_coef, cfg.algorithm.max_steps, cfg.reward_model.path) == (0.3, 3, reward_dir)
    assert (cfg.weight_sync.transport, cfg.weight_sync.bucket_mb) == ("object_store", 64)
    err = capsys.readouterr().err
    for old_key, new_key in (("ppo", "algorithm"), ("reward", "reward_model"), ("sync", "weight_sync")):
        assert err.count(f"note: config key '{old_key}' is now '{new_key}'") == 1, err
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"ppo": {"kl_coef": 0.2}, "algorithm": {"kl_coef": 0.1}}))
    assert "'ppo' and 'algorithm' are both set" in error_of(lambda: load_config(RLConfig, str(both)))
