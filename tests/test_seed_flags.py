"""The seeds' commands (Coati's train_sft.py / train_reward_model.py / train_prompts.py, Colossal-LLaMA's --plugin)
typed at our launchers: every flag becomes the key it names, or is refused in one line saying why."""

import json
import os

import pytest
import torch

from coati_ray.config import SFTConfig, load_config
from coati_ray.errors import ConfigError
from launch.seed_flags import translate
from tests.conftest import data_path


def alpaca_json(path, n=600) -> str:
    """Coati's data.json: one JSON array of {instruction, input, output}."""
    with open(data_path("sft", "train.jsonl")) as f:
        rows = [json.loads(line) for line in f][:n]
    path.write_text(json.dumps([{"instruction": r["messages"][0]["content"], "input": "",
                                 "output": r["messages"][1]["content"]} for r in rows]))
    return str(path)


def seed_sft_command(model: str, data: str, save_path: str, strategy: str = "colossalai_zero2") -> list[str]:
    """Coati's README SFT example, as typed (its own spelling of --accimulation_steps included)."""
    return ["--pretrain", model, "--model", "llama", "--strategy", strategy, "--log_interval", "10",
            "--save_path", save_path, "--dataset", data, "--batch_size", "4", "--accimulation_steps", "8",
            "--lr", "2e-5", "--max_datasets_size", "512", "--max_epochs", "1"]


def test_the_seeds_sft_example_runs_as_typed(tiny_llama, tmp_path, capsys):
    """As typed, it asks for colossalai_zero2: on a GPU machine it trains, on this CPU it is refused in one line
    after every other flag was accepted; with the Booster strategy CPU can run (ddp, one rank in this process),
    the same command trains: 512 rows in steps of 4 per micro-batch x 8 accumulated = 16 steps, the model in
    --save_path. tests/gpu runs it with colossalai_zero2, as typed."""
    from launch import sft

    data = alpaca_json(tmp_path / "data.json")
    save = tmp_path / "Coati-7B"
    code = sft.main(seed_sft_command(tiny_llama, data, str(save)))
    err = capsys.readouterr().err.strip().splitlines()
    if not torch.cuda.is_available():
        assert code == 2 and err[-1] == ("error: config error: strategy.name: 'colossalai_zero2' needs CUDA and no GPU "
                                         "is visible; use strategy.name=ddp (or naive) on CPU, or run on a GPU machine")
        assert [line for line in err if not line.startswith("note: ")] == err[-1:]  # notes, then the one error line
        assert "note: --accimulation_steps 8 -> trainer.accumulation_steps=8" in err
        assert not save.exists()
    code = sft.main(seed_sft_command(tiny_llama, data, str(save), strategy="ddp"))
    assert code == 0
    summary = json.loads((save / "summary.json").read_text())
    assert summary["steps"] == 16 and (save / "checkpoints" / "final" / "config.json").is_file()
    saved = load_config(SFTConfig, str(save / "config.yaml"))
    assert (saved.trainer.micro_batch_size, saved.trainer.accumulation_steps, saved.trainer.batch_size) == (4, 8, 32)
    assert (saved.optim.lr, saved.data.max_samples, saved.trainer.log_every) == (2e-5, 512, 10)


def test_flags_map_to_keys_and_each_note_says_which():
    notes = []
    argv, types = translate("rm", ["--pretrain", "m", "--plugin", "gemini_auto", "--loss_func", "log_exp",
                                   "--dataset", "Anthropic/hh-rlhf", "--subset", "harmless-base", "--max_len", "512",
                                   "--need_optim_ckpt", "False", "--grad_checkpoint", "--model", "bloom",
                                   "trainer.max_steps=3"], notes.append)
    assert argv == ["trainer.max_steps=3", "strategy.precision=fp16", "model.path=m",
                    "strategy.name=colossalai_gemini_auto", "loss_fn=log_exp",
                    "data.train_path=Anthropic/hh-rlhf", "data.subset=harmless-base", "data.max_length=512",
                    "trainer.save_optimizer=false", "model.gradient_checkpointing=true"]
    assert types == {"model": "bloom", "reward_model": None}
    assert "--plugin gemini_auto -> strategy.name=colossalai_gemini_auto" in notes


def test_the_seeds_ppo_schedule_and_positional_prompt_file():
    """train_prompts.py prompts.csv: Coati's episodes x timesteps with an update every update_timesteps batches
    become whole PPO steps of update_timesteps x experience_batch_size samples."""
    from launch.seed_flags import positional_prompt_file

    prompts = data_path("prompts", "train.jsonl")
    assert positional_prompt_file([prompts, "algorithm.max_steps=3"], print) == [f"data.prompt_path={prompts}",
                                                                           "algorithm.max_steps=3"]
    assert positional_prompt_file(["algorithm.max_steps"], print) == ["algorithm.max_steps"]  # refused later: no '='

    argv, _ = translate("ppo", ["--pretrain", "sft", "--rm_pretrain", "base", "--rm_path", "rm",
                                "--strategy", "colossalai_zero2", "--num_episodes", "2", "--max_timesteps", "3",
                                "--update_timesteps", "3", "--experience_batch_size", "4", "--train_batch_size", "6",
                                "--kl_coef", "0.2", "--ptx_coef", "0.1", "--pretrain_dataset", "ptx.jsonl"], print)
    assert "actor.path=sft" in argv
    assert argv.index("reward_model.path=rm") > argv.index("reward_model.path=base")  # the trained RM wins
    for expected in ("algorithm.max_steps=2", "algorithm.rollout_batch_size=12", "buffer.capacity=64", "maker.batch_size=4",
                     "actor_trainer.strategy.precision=fp16", "algorithm.train_batch_size=6",
                     "algorithm.kl_coef=0.2", "algorithm.kl_penalty=sequence", "algorithm.ptx_coef=0.1", "data.ptx_path=ptx.jsonl",
                     "actor_trainer.strategy.name=colossalai_zero2", "critic_trainer.strategy.name=colossalai_zero2"):
        assert expected in argv, expected


@pytest.mark.parametrize("stage, argv, needle", [
    ("sft", ["--test"], "--test has no equivalent here: a small run is data.max_samples"),
    ("rm", ["--model_path", "x"], "--resume"),
    ("sft", ["--strategy", "colossalai_zero3"], "is not a strategy"),
    ("ppo", ["--need_optim_ckpt", "False"], "PPO checkpoints always hold the optimizer states"),
    ("ppo", ["--num_episodes", "3", "--max_timesteps", "1", "--update_timesteps", "2"], "not a multiple"),
    ("sft", ["--use_wandb"], "logging.wandb"),
])
def test_a_flag_without_an_equivalent_is_refused_in_one_line_saying_why(stage, argv, needle, capsys):
    import importlib

    code = importlib.import_module(f"launch.{stage}").main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_a_claimed_model_type_must_match_the_checkpoint(tiny_llama, tmp_path, capsys):
    from launch import sft

    assert sft.main(["--pretrain", tiny_llama, "--model", "bloom", "--dataset", data_path("sft", "train.jsonl"),
                     "--output-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--model bloom but model.path is a 'llama' model" in err[-1]


def test_accumulation_steps_derive_the_global_batch_or_must_agree_with_it(tmp_path):
    from coati_ray.config.schema import TrainerConfig

    cfg = load_config(SFTConfig, None, ["model.path=m", "data.train_path=d", "trainer.accumulation_steps=8",
                                        "trainer.micro_batch_size=2", "resources.num_ranks=2"])
    assert cfg.trainer.batch_size == 32
    with pytest.raises(ConfigError, match="trainer.batch_size: 16 disagrees with micro_batch_size \\(4\\) x "
                                          "accumulation_steps \\(8\\) x ranks \\(1\\) = 32"):
        TrainerConfig(batch_size=16, micro_batch_size=4, accumulation_steps=8).validate()


def test_gemini_placement_and_offload_reach_the_plugin(monkeypatch):
    """colossalai_gemini_auto and Gemini's static-placement offload fractions are GeminiPlugin's arguments."""
    import colossalai.booster.plugin as plugins

    from coati_ray.config.schema import StrategyConfig
    from coati_ray.strategies.strategy import Strategy

    made = []
    monkeypatch.setattr(plugins, "GeminiPlugin", lambda **kw: made.append(kw) or kw)
    Strategy(StrategyConfig(name="colossalai_gemini", precision="bf16", offload_optim_frac=0.5,
                            offload_param_frac=0.25))._make_plugin()
    Strategy(StrategyConfig(name="colossalai_gemini_auto", precision="bf16"))._make_plugin()
    assert (made[0]["placement_policy"], made[0]["offload_optim_frac"], made[0]["offload_param_frac"]) == \
        ("static", 0.5, 0.25)
    assert made[1]["placement_policy"] == "auto" and "offload_optim_frac" not in made[1]
    with pytest.raises(ConfigError, match="offload fractions are Gemini's static placement"):
        StrategyConfig(name="colossalai_zero2", precision="bf16", offload_optim_frac=0.5).validate(machine=False)
    with pytest.raises(ConfigError, match="strategy.name: 'colossalai_gemini_auto' needs CUDA"):
        StrategyConfig(name="colossalai_gemini_auto", precision="bf16").validate(cuda_available=False)


def test_flags_mix_with_our_options_and_overrides_in_any_order(tiny_llama, tmp_path, capsys):
    """`launch.sft trainer.max_steps=3 --output-dir o --pretrain m`: an override before our options, a seed flag
    after them; and a flag nobody knows is one line, not argparse's usage block."""
    from launch import sft

    assert sft.main(["trainer.max_steps=2", "--output-dir", str(tmp_path / "o"), "--pretrain", tiny_llama,
                     "--dataset", data_path("sft", "train.jsonl"), "--batch_size", "4", "--print-config"]) == 0
    printed = capsys.readouterr()
    assert "max_steps: 2" in printed.out and "accumulation_steps: 1" in printed.out and "batch_size: 4" in printed.out
    assert sft.main(["--no-such-flag", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments: --no-such-flag" in err[0]
