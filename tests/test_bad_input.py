"""The bad-input catalogue: every case goes through the real command line and must be refused with
exactly one line on stderr, exit code 2, no model loaded, no Ray started and no run directory made.

Each case is (id, launcher, how to break the input, a phrase the one line must contain). A case
builds its broken file or directory itself, so the table reads as the list of mistakes we catch.
Cases that need a live cluster (more GPUs than it has) and the pipeline's own refusals have their
tests in test_config.py and test_pipeline.py.
"""

import json
import os
import shutil

import pytest

from tests.conftest import REPO, data_path

PPO_YAML = os.path.join(REPO, "configs", "ppo_tiny.yaml")
GRPO_YAML = os.path.join(REPO, "configs", "grpo_tiny.yaml")
SFT_YAML = os.path.join(REPO, "configs", "sft_tiny.yaml")
RM_YAML = os.path.join(REPO, "configs", "rm_tiny.yaml")


class Ctx:
    """What a case may use: the tiny model, a reward model, and a scratch directory."""

    def __init__(self, tiny_llama, reward_dir, tmp_path, monkeypatch):
        self.model, self.reward, self.tmp, self.monkeypatch = tiny_llama, reward_dir, tmp_path, monkeypatch

    def as_ray_job(self, argv: list[str]) -> list[str]:
        """Run `argv` the way `ray job submit` runs an entrypoint (Ray's job supervisor sets this variable)."""
        from coati_ray.utils.shared_storage import RAY_JOB_ENV

        self.monkeypatch.setenv(RAY_JOB_ENV, '{"runtime_env": {}, "metadata": {}}')
        return argv

    def write(self, name: str, data) -> str:
        path = self.tmp / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        return str(path)

    def model_copy(self, name: str, edit=None, drop=(), raw_config=None) -> str:
        """A copy of the tiny model with config.json edited or replaced, or files removed."""
        path = self.tmp / name
        shutil.copytree(self.model, path)
        for f in drop:
            os.remove(path / f)
        if raw_config is not None:
            (path / "config.json").write_text(raw_config)
        if edit is not None:
            cfg = json.loads((path / "config.json").read_text())
            edit(cfg)
            (path / "config.json").write_text(json.dumps(cfg))
        return str(path)

    def reward_copy(self, name: str, edit) -> str:
        path = self.tmp / name
        shutil.copytree(self.reward, path)
        cfg = json.loads((path / "config.json").read_text())
        edit(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
        return str(path)

    def half_written_checkpoint(self) -> str:
        """What a crash during a save leaves: the temp dir, with files but no completion marker."""
        path = self.tmp / "checkpoints" / "step_000004.tmp"
        os.makedirs(path / "actor")
        (path / "driver_state.json").write_text("{}")
        return str(path)

    def finished_run(self) -> str:
        """A run directory holding an earlier run's results."""
        path = self.tmp / "finished"
        os.makedirs(path / "checkpoints" / "final")
        (path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
        (path / "summary.json").write_text("{}")
        return str(path)

    def big_tokenizer(self) -> str:
        from coati_ray.models.loading import load_tokenizer

        tok = load_tokenizer(self.model)
        tok.add_tokens([f"<extra_{i}>" for i in range(64)])
        path = str(self.tmp / "tokenizer_plus_64")
        tok.save_pretrained(path)
        return path

    def empty_hub(self, *argv: str) -> list[str]:
        """Run `argv` offline against an empty hub cache (a hub id it names cannot be resolved)."""
        self.monkeypatch.setenv("HF_HUB_CACHE", str(self.tmp / "hub"))
        self.monkeypatch.setenv("HF_DATASETS_CACHE", str(self.tmp / "datasets"))
        self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return list(argv)

    def ppo(self, *overrides: str) -> list[str]:
        return ["--config", PPO_YAML, f"actor.path={self.model}", f"critic.path={self.model}",
                f"reward_model.path={self.reward}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}", *overrides]

    def grpo(self, *overrides: str) -> list[str]:
        return ["--config", GRPO_YAML, f"actor.path={self.model}", f"data.prompt_path={data_path('prompts', 'train.jsonl')}",
                *overrides]

    def sft(self, *overrides: str) -> list[str]:
        return ["--config", SFT_YAML, f"model.path={self.model}", f"data.train_path={data_path('sft', 'train.jsonl')}",
                f"data.eval_path={data_path('sft', 'eval.jsonl')}", *overrides]

    def rm(self, *overrides: str) -> list[str]:
        return ["--config", RM_YAML, f"model.path={self.model}", *overrides]


BROKEN_JSONL = '{"prompt": "a"}\n{"prompt": \n'
LATIN_1 = '{"prompt": "caf\xe9"}\n'.encode("latin-1")


def vocab_plus(n):
    return lambda cfg: cfg.update(vocab_size=cfg["vocab_size"] + n)


CASES = [
    # ---- config: keys, types, values
    ("typo in a key", "ppo", lambda c: c.ppo("algorithm.max_step=3"), "algorithm.max_steps"),
    ("unknown section", "ppo", lambda c: c.ppo("trainr.lr=1"), "trainr"),
    ("wrong type", "ppo", lambda c: c.ppo("algorithm.max_steps=ten"), "algorithm.max_steps"),
    ("choice typo", "ppo", lambda c: c.ppo("algorithm.mode=asynk"), "async"),
    ("override without =", "ppo", lambda c: c.ppo("algorithm.max_steps"), "key=value"),
    ("config file missing", "ppo", lambda c: ["--config", str(c.tmp / "nope.yaml")], "nope.yaml"),
    ("config file not YAML", "ppo", lambda c: ["--config", c.write("bad.yaml", "ppo: [unclosed\n")], "bad.yaml"),
    ("zero makers", "ppo", lambda c: c.ppo("maker.num_makers=0"), "maker.num_makers"),
    ("rollout not a multiple of the maker batch", "ppo", lambda c: c.ppo("algorithm.rollout_batch_size=6"),
     "multiple of maker.batch_size"),
    ("train batch not divisible over ranks", "ppo", lambda c: c.ppo("actor_trainer.resources.num_ranks=3"),
     "algorithm.train_batch_size"),
    ("negative learning rate", "ppo", lambda c: c.ppo("actor_trainer.optim.lr=-1e-4"), "actor_trainer.optim.lr"),
    ("zero new tokens", "ppo", lambda c: c.ppo("generation.max_new_tokens=0"), "generation.max_new_tokens"),
    ("zero temperature", "ppo", lambda c: c.ppo("generation.temperature=0"), "generation.temperature"),
    ("async without staleness", "ppo", lambda c: c.ppo("algorithm.mode=async", "algorithm.max_staleness=0"), "max_staleness"),
    ("PPO-ptx without data", "ppo", lambda c: c.ppo("algorithm.ptx_coef=0.5"), "data.ptx_path"),
    ("buffer smaller than a batch", "ppo", lambda c: c.ppo("buffer.capacity=2"), "buffer.capacity"),
    ("unknown KL estimator", "ppo", lambda c: c.ppo("algorithm.kl_estimator=k5"), "k1, k2, k3"),
    ("LoRA on the frozen reward model", "ppo", lambda c: c.ppo("reward_model.lora_rank=4"), "reward_model.lora_rank"),
    ("CUDA-only strategy on CPU", "ppo", lambda c: c.ppo("actor_trainer.strategy.name=colossalai_zero2"),
     "CUDA"),
    # ---- precision, dtype, LoRA and strategy combinations ColossalAI cannot run (refused before the
    # CUDA check, so a GPU config drafted on a CPU machine learns them first)
    ("Gemini in fp32", "ppo", lambda c: c.ppo("actor_trainer.strategy.name=colossalai_gemini",
                                              "actor_trainer.resources.num_ranks=1"), "GeminiPlugin trains only in bf16"),
    ("Gemini with LoRA", "ppo", lambda c: c.ppo("critic_trainer.strategy.name=colossalai_gemini",
                                                "critic_trainer.strategy.precision=bf16", "critic.lora_rank=8"),
     "critic.lora_rank"),
    ("bf16 mixed precision on ddp", "ppo", lambda c: c.ppo("actor_trainer.strategy.precision=bf16"),
     "actor_trainer.strategy.precision"),
    ("fp16 mixed precision on naive", "sft", lambda c: c.sft("strategy.precision=fp16"), "strategy.precision"),
    ("3d on CPU", "sft", lambda c: c.sft("strategy.name=3d", "strategy.precision=bf16"), "'3d' needs CUDA"),
    ("3d with tensor parallelism", "sft", lambda c: c.sft("strategy.name=3d", "strategy.precision=bf16",
                                                          "strategy.tp=2", "resources.num_ranks=2"), "strategy.tp"),
    ("3d ZeRO-2 with accumulation", "sft", lambda c: c.sft("strategy.name=3d", "strategy.precision=bf16",
                                                           "strategy.zero=2"), "cannot accumulate"),
    ("3d with pipeline parallelism", "sft", lambda c: c.sft("strategy.name=3d", "strategy.pp=2",
                                                            "resources.num_ranks=2"), "strategy.pp"),
    ("3d ZeRO in fp32", "sft", lambda c: c.sft("strategy.name=3d", "strategy.zero=2"), "bf16 or fp16"),
    ("3d ring sequence parallelism without tp", "sft",
     lambda c: c.sft("strategy.name=3d", "strategy.zero=0", "strategy.enable_sequence_parallelism=true",
                     "strategy.sp_mode=ring"), "strategy.sp_mode"),
    ("3d sequence parallelism size without enabling it", "sft", lambda c: c.sft("strategy.name=3d", "strategy.zero=0",
                                                                                "strategy.sp=2"), "enable_sequence_parallelism"),
    ("3d reward model without ZeRO on several ranks", "rm",
     lambda c: c.rm("strategy.name=3d", "strategy.precision=bf16", "strategy.zero=0", "resources.num_ranks=2"),
     "strategy.zero"),
    ("3d in a PPO trainer group", "ppo", lambda c: c.ppo("actor_trainer.strategy.name=3d"), "supervised stages"),
    ("float16 weights trained without a loss scaler", "ppo", lambda c: c.ppo("actor.dtype=float16"),
     "actor.dtype"),
    ("float16 makers on CPU", "ppo", lambda c: c.ppo("maker.dtype=float16"), "maker.dtype"),
    ("float16 makers on CPU from the trainer's precision", "ppo",
     lambda c: c.ppo("actor_trainer.strategy.name=colossalai_zero2", "actor_trainer.strategy.precision=fp16"),
     "maker.dtype"),
    ("buffer smaller than a rollout batch", "ppo", lambda c: c.ppo("buffer.capacity=6"), "one step's rollout"),
    ("naive strategy on several ranks", "ppo",
     lambda c: c.ppo("critic_trainer.strategy.name=naive", "critic_trainer.resources.num_ranks=2"), "naive"),
    ("unknown gold task", "ppo", lambda c: c.ppo(f"data.eval_prompt_path={data_path('prompts', 'eval.jsonl')}",
                                                 "data.gold_task=chess"), "data.gold_task"),
    # ---- algorithms and reward sources
    ("unknown advantage estimator", "ppo", lambda c: c.ppo("algorithm.advantage_estimator=ppo2"), "grpo"),
    ("gae without a critic", "ppo", lambda c: c.grpo("algorithm.advantage_estimator=gae", "algorithm.n_samples_per_prompt=1"),
     "needs a critic"),
    ("group size that does not divide the maker batch", "ppo", lambda c: c.grpo("algorithm.n_samples_per_prompt=3"),
     "whole groups"),
    ("group-relative estimator with one sample per prompt", "ppo", lambda c: c.grpo("algorithm.n_samples_per_prompt=1"),
     "needs at least 2"),
    ("no training reward at all", "ppo", lambda c: c.grpo("rewards.function=null"), "no training reward"),
    ("reward function that does not import", "ppo", lambda c: c.grpo("rewards.function=no_such_module_xyz:reward"),
     "cannot import"),
    ("reward function with the wrong signature", "ppo",
     lambda c: c.grpo("rewards.function=coati_ray.tasks.sorting:gold_score"), "function(prompts, responses, rows)"),
    ("unreachable reward service at start-up", "ppo",
     lambda c: c.grpo("rewards.http_url=http://127.0.0.1:9/reward", "rewards.http_retries=0",
                      "rewards.http_timeout_s=2"), "http://127.0.0.1:9/reward"),
    # ---- output and resume
    ("output dir under a file", "ppo", lambda c: c.ppo("--output-dir", c.write("a_file", "x") + "/run"), "is a file"),
    ("output dir not writable", "ppo", lambda c: c.ppo("--output-dir", "/proc/coati_run"), "not writable"),
    ("resume without a checkpoint", "ppo", lambda c: c.ppo("--output-dir", str(c.tmp / "fresh"), "--resume"),
     "no complete checkpoint"),
    ("PPO into a directory holding a run", "ppo", lambda c: c.ppo("--output-dir", c.finished_run()), "already holds"),
    ("SFT into a directory holding a run", "sft", lambda c: c.sft("--output-dir", c.finished_run()), "--overwrite"),
    ("RM into a directory holding a run", "rm", lambda c: c.rm("--output-dir", c.finished_run()), "--resume"),
    ("NEFTune on a reward model", "rm", lambda c: c.rm("use_neft=true"), "use_neft"),
    ("NEFTune alpha not positive", "sft", lambda c: c.sft("use_neft=true", "neft_alpha=0"), "neft_alpha"),
    ("resume and overwrite at once", "sft", lambda c: c.sft("--resume", "--overwrite"), "contradict"),
    ("resume from a half-written checkpoint", "ppo", lambda c: c.ppo("--resume", c.half_written_checkpoint()),
     "not a complete checkpoint"),
    # ---- data files
    ("prompt file missing", "ppo", lambda c: c.ppo(f"data.prompt_path={c.tmp / 'none.jsonl'}"), "does not exist"),
    ("prompt file empty", "ppo", lambda c: c.ppo(f"data.prompt_path={c.write('empty.jsonl', '')}"), "is empty"),
    ("prompt file malformed", "ppo", lambda c: c.ppo("data.prompt_path=" + c.write("broken.jsonl", BROKEN_JSONL)),
     "broken.jsonl line 2 is not a JSON object"),
    ("prompt file not UTF-8", "ppo", lambda c: c.ppo("data.prompt_path=" + c.write("latin.jsonl", LATIN_1)),
     "not valid UTF-8"),
    ("prompt rows without a prompt", "ppo",
     lambda c: c.ppo(f"data.prompt_path={c.write('cols.jsonl', json.dumps({'question': 'x'}) + chr(10))}"),
     "cols.jsonl"),
    ("unsupported data extension", "ppo", lambda c: c.ppo(f"data.prompt_path={c.write('p.tsv', 'a' + chr(10))}"),
     "extension '.tsv'"),
    ("eval prompt file missing", "ppo", lambda c: c.ppo(f"data.eval_prompt_path={c.tmp / 'gone.jsonl'}"),
     "data.eval_prompt_path"),
    ("SFT row without its reply", "sft", lambda c: c.sft(
        f"data.train_path={c.write('sft.jsonl', json.dumps({'messages': [{'from': 'human', 'content': 'x'}]}) + chr(10))}"),
     "sft.jsonl"),
    ("SFT data for the RM stage", "rm", lambda c: c.rm(f"data.train_path={data_path('sft', 'train.jsonl')}",
                                                       "data.eval_path=null"), "preference"),
    # ---- model directories
    ("model path missing", "ppo", lambda c: c.ppo(f"actor.path={c.tmp / 'no_model'}"), "actor.path"),
    ("model dir without config.json", "ppo", lambda c: c.ppo(f"critic.path={c.model_copy('nocfg', drop=['config.json'])}"),
     "no config.json"),
    ("model dir without weights", "ppo",
     lambda c: c.ppo(f"actor.path={c.model_copy('noweights', drop=['model.safetensors'])}"), "no weights"),
    ("model config.json not JSON", "ppo", lambda c: c.ppo(f"actor.path={c.model_copy('badjson', raw_config='{')}"),
     "not valid JSON"),
    ("reward model without a value head", "ppo", lambda c: c.ppo(f"reward_model.path={c.model}"), "not a reward model"),
    ("prompts longer than the context", "ppo", lambda c: c.ppo("data.max_prompt_length=600"), "context of 512"),
    ("SFT sequences longer than the context", "sft", lambda c: c.sft("data.max_length=4096"), "context of 512"),
    ("tokenizer larger than the model's vocabulary", "ppo",
     lambda c: c.ppo(f"actor.tokenizer_path={c.big_tokenizer()}"), "vocabulary of"),
    # ---- paths under `ray job submit` (the entrypoint runs in a temporary copy of the uploaded directory)
    ("relative output_dir in a Ray job", "ppo", lambda c: c.as_ray_job(c.ppo("--output-dir", "runs/job_relative")),
     "deleted with it"),
    ("relative model path not uploaded with a Ray job", "sft",
     lambda c: c.as_ray_job(c.sft("model.path=assets/models/not-uploaded")), "uploaded working directory"),
    # ---- hub ids and chat templates
    ("unknown hub model id", "sft", lambda c: c.empty_hub(*c.sft("model.path=nobody/no-such-model")),
     "hub model 'nobody/no-such-model' at revision 'main'"),
    ("hub reward model at a revision not cached", "ppo",
     lambda c: c.empty_hub(*c.ppo("reward_model.path=nobody/rm", "reward_model.revision=v2")), "reward_model.path: hub model 'nobody/rm'"),
    ("unknown hub dataset", "rm", lambda c: c.empty_hub(*c.rm("data.train_path=nobody/no-such-pairs",
                                                              "data.subset=helpful")), "subset 'helpful'"),
    ("chat template file missing", "sft", lambda c: c.sft(f"data.chat_template={c.tmp / 'none.jinja'}"),
     "data.chat_template"),
    ("chat template not Jinja", "ppo", lambda c: c.ppo(f"data.chat_template={c.write('t.jinja', '{% for %}')}"),
     "not a valid Jinja template"),
    ("best-of-n reward model with another vocabulary", "generate",
     lambda c: ["--model", c.model, "--reward-model", c.reward_copy("rm_vocab_gen", vocab_plus(10)), "--n", "2",
                "--prompt", "sort: 2 1"], "the policy's has"),
    ("reward model with another vocabulary", "ppo",
     lambda c: c.ppo(f"reward_model.path={c.reward_copy('rm_vocab', vocab_plus(10))}"), "the actor's has"),
]


@pytest.fixture
def tripwires(monkeypatch):
    """Loading model weights or starting Ray during a refused run fails the test."""
    import ray
    from transformers import modeling_utils

    def model_loaded(*a, **k):
        raise AssertionError("a model was loaded before the input was refused")

    def ray_started(*a, **k):
        raise AssertionError("Ray was started before the input was refused")

    monkeypatch.setattr(modeling_utils.PreTrainedModel, "from_pretrained", classmethod(model_loaded))
    monkeypatch.setattr(ray, "init", ray_started)


def test_catalogue_has_at_least_30_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("name,launcher,build,needle", CASES, ids=[c[0].replace(" ", "_") for c in CASES])
def test_refused_with_one_line_before_any_model_or_ray(name, launcher, build, needle, tiny_llama, reward_dir,
                                                      tmp_path, tripwires, capsys, monkeypatch):
    import importlib

    ctx = Ctx(tiny_llama, reward_dir, tmp_path, monkeypatch)
    argv = build(ctx)
    run_dir = tmp_path / "run_never_made"
    if "--output-dir" not in argv and launcher != "generate":  # generate writes no run directory
        argv += ["--output-dir", str(run_dir)]
    code = importlib.import_module(f"launch.{launcher}").main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (name, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]
    assert not run_dir.exists(), "a refused run must not leave a run directory"
