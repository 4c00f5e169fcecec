"""Models, tokenizers and datasets named by hub id, read offline (HF_HUB_OFFLINE=1) from a Hugging Face cache
the tests build in the layout huggingface_hub writes: pinned to a commit before anything starts, loaded at that
commit by every process (every actor of a PPO job on Ray too), refused in one line when they cannot be resolved.
What a pin downloads is checked against a hub served on loopback (tests/hub_cache.FakeHub), by a process that
reaches it through HF_ENDPOINT as a user's process reaches huggingface.co."""

import json
import os
import subprocess
import sys

import pytest

from coati_ray.config import SFTConfig, load_config
from coati_ray.config.rl import RLConfig
from coati_ray.config.schema import ModelConfig
from coati_ray.data.loading import HubSource
from coati_ray.errors import ConfigError, DataError, ModelError
from coati_ray.models.hub import is_hub_id, local_dir
from tests.conftest import REPO, data_path
from tests.hub_cache import add_dataset_snapshot, add_model_snapshot, point_ref

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


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_a_hub_dataset_is_pinned_to_its_commit_and_read_at_it_after_main_moves(hub, tokenizer):
    """Two commits of a dataset repo in the cache, main at the newer: the config pins main's commit (and the eval
    split of the same repo with it), then main moves to a commit no process could read. Every later load reads
    the pinned commit; a named revision (an older commit, a tag) pins to its own commit."""
    from coati_ray.config.schema import DataConfig
    from coati_ray.data.datasets import build_preference_dataset

    cache, repo = hub["HF_HUB_CACHE"], "org/prefs-pinned"
    train, held_out = read_jsonl(data_path("pref", "train.jsonl")), read_jsonl(data_path("pref", "eval.jsonl"))
    older = add_dataset_snapshot(cache, repo, {"train.jsonl": jsonl(train[:3]), "test.jsonl": jsonl(held_out[:2])})
    newer = add_dataset_snapshot(cache, repo, {"train.jsonl": jsonl(train[:5]), "test.jsonl": jsonl(held_out[:4])})
    cfg = DataConfig(train_path=repo, eval_path=repo)
    cfg.validate()
    assert (cfg.revision, cfg.eval_revision) == (newer, newer)  # main, as it was when the driver resolved it
    broken = add_dataset_snapshot(cache, repo, {"train.jsonl": jsonl([{"nothing": 1}]),
                                                "test.jsonl": jsonl([{"nothing": 1}])})
    assert broken != newer  # refs/main moved on: a load by branch reads rows without their fields
    with pytest.raises(DataError, match=r"columns \[.nothing.\]"):
        build_preference_dataset(repo, tokenizer, 64, source=DataConfig(train_path=repo).source("train"))
    items, _ = build_preference_dataset(repo, tokenizer, 64, source=cfg.source("train"))
    evals, _ = build_preference_dataset(repo, tokenizer, 64, source=cfg.source("eval"))
    assert (len(items), len(evals)) == (5, 4)

    point_ref(cache, repo, older, "v1", "dataset")
    for revision in (older, "v1"):
        pinned = DataConfig(train_path=repo, revision=revision)
        pinned.validate()
        assert pinned.revision == older
        assert len(build_preference_dataset(repo, tokenizer, 64, source=pinned.source("train"))[0]) == 3


def test_hub_datasets_that_cannot_be_resolved_end_in_one_line_before_ray(hub, tmp_path, capsys, monkeypatch):
    """Not cached (offline), a revision the cache does not have, a revision beside a local file: one line each,
    naming the key, before Ray starts or anything is written."""
    from launch import sft

    def ray_started(*a, **k):
        raise AssertionError("Ray was started before the input was refused")

    monkeypatch.setattr(ray, "init", ray_started)
    add_dataset_snapshot(hub["HF_HUB_CACHE"], "org/sft-cached", {"train.jsonl": data_path("sft", "train.jsonl")})
    base = ["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), "--output-dir", str(tmp_path / "never")]
    for overrides, needles in (
            (["data.train_path=nobody/no-such-data"],
             ["data error: data.train_path: hub dataset 'nobody/no-such-data' at revision 'main'", hub["HF_HUB_CACHE"],
              "HF_HUB_OFFLINE=1", "is not in the cache", "huggingface-cli download --repo-type dataset"]),
            (["data.train_path=org/sft-cached", "data.eval_path=null", "data.revision=v9"],
             ["hub dataset 'org/sft-cached' at revision 'v9'", "is not in the cache"]),
            (["data.revision=v1"], ["config error: data.revision: 'v1' is a hub revision, but 'data/sft/train.jsonl' "
                                    "is a local path; remove data.revision"]),
            (["data.train_path=org/sft-cached", "data.subset=../up"],
             ["config error: data.subset: '../up' is not a directory inside a dataset repo"])):
        assert sft.main(base + overrides) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(n in err[0] for n in needles), err
    assert not (tmp_path / "never").exists()


def hh_rows(kind: str, rows: list) -> list:
    """Preference rows in Anthropic/hh-rlhf's layout, each prompt tagged with the directory it came from."""
    return [{"chosen": f"\n\nHuman: {kind} {r['prompt']}\n\nAssistant: {r['chosen']}",
             "rejected": f"\n\nHuman: {kind} {r['prompt']}\n\nAssistant: {r['rejected']}"} for r in rows]


def test_coati_subset_is_a_data_dir_of_the_hub_dataset(hub, tiny_llama, capsys):
    """Coati's RM command on hh-rlhf (`--dataset Anthropic/hh-rlhf --subset harmless-base`): harmless-base is a
    directory of the repo, read as load_dataset(name, data_dir=subset). A repo laid out as hh-rlhf is (one
    directory of jsonl files per subset, a card without configurations) is cached; the stage reads that
    directory's rows only. A subset that is not a directory ends in one line naming the ones there are; a
    configuration of a card is data.config_name."""
    from launch import rm

    from coati_ray.config.schema import DataConfig
    from coati_ray.data.loading import read_rows

    pref = read_jsonl(data_path("pref", "train.jsonl"))
    files = {"README.md": "---\nlicense: mit\n---\n# hh-rlhf, as cached by the test\n",
             "harmless-base/train.jsonl": jsonl(hh_rows("harmless", pref[:6])),
             "harmless-base/test.jsonl": jsonl(hh_rows("harmless", pref[6:9])),
             "helpful-base/train.jsonl": jsonl(hh_rows("helpful", pref[9:13])),
             "helpful-base/test.jsonl": jsonl(hh_rows("helpful", pref[13:15]))}
    commit = add_dataset_snapshot(hub["HF_HUB_CACHE"], "Anthropic/hh-rlhf", files)
    base = ["--config", os.path.join(REPO, "configs", "rm_tiny.yaml"), f"model.path={tiny_llama}",
            "--dataset", "Anthropic/hh-rlhf", "--subset", "harmless-base"]
    assert rm.main(base + ["data.eval_path=null", "--inspect-data", "100"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(shown) == 6 and all("harmless" in json.dumps(row) and "helpful" not in json.dumps(row) for row in shown)

    cfg = DataConfig(train_path="Anthropic/hh-rlhf", eval_path="Anthropic/hh-rlhf", subset="harmless-base")
    cfg.validate()
    assert (cfg.revision, cfg.eval_revision) == (commit, commit)
    assert len(read_rows(cfg.eval_path, source=cfg.source("eval"))[0]) == 3

    assert rm.main(base[:-1] + ["harmless"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]  # seed flags'
    assert len(err) == 1 and "config error: data.subset: hub dataset 'Anthropic/hh-rlhf'" in err[0], err
    assert "(its directories: harmless-base, helpful-base)" in err[0]

    card = ("---\nconfigs:\n"
            "- config_name: harmless\n  data_files:\n  - split: train\n    path: harmless-base/train.jsonl\n"
            "- config_name: helpful\n  data_files:\n  - split: train\n    path: helpful-base/train.jsonl\n---\n")
    add_dataset_snapshot(hub["HF_HUB_CACHE"], "org/hh-configs", {**files, "README.md": card})
    named = DataConfig(train_path="org/hh-configs", config_name="helpful")
    named.validate()
    rows = read_rows(named.train_path, source=named.source("train"))[0]
    assert len(rows) == 4 and all("helpful" in r["chosen"] for r in rows)
    with pytest.raises(ConfigError, match=r"config error: data.config_name: .* no configuration 'harmless-base' .*"
                                          r"\(it has: harmless, helpful\); use one of them, or data.subset"):
        DataConfig(train_path="org/hh-configs", config_name="harmless-base").validate()


def test_sft_by_hub_ids_keeps_the_commit_and_never_writes_the_token(hub, tiny_chatml, chat_data, tmp_path,
                                                                    monkeypatch):
    """model and data named on the hub: config.yaml records the id and its commit (so `--config` repeats the
    run exactly); HF_TOKEN is read from the environment only and appears in no file of the run."""
    from launch import sft

    secret = "hf_" + "s3cr3t" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    commit = add_model_snapshot(hub["HF_HUB_CACHE"], "org/chat-sft", tiny_chatml)
    data = add_dataset_snapshot(hub["HF_HUB_CACHE"], "org/sorting-chat",
                                {"train.jsonl": chat_data["sft_train"], "test.jsonl": chat_data["sft_eval"]})
    out = tmp_path / "sft"
    assert sft.main(["--config", os.path.join(REPO, "configs", "sft_tiny.yaml"), "model.path=org/chat-sft",
                     "data.train_path=org/sorting-chat", "data.eval_path=org/sorting-chat", "data.max_length=96",
                     "trainer.max_steps=2", "trainer.save_every=1", "--output-dir", str(out)]) == 0
    saved = load_config(SFTConfig, str(out / "config.yaml"))
    assert (saved.model.path, saved.model.revision) == ("org/chat-sft", commit)
    assert (saved.data.train_path, saved.data.revision, saved.data.eval_revision) == ("org/sorting-chat", data, data)
    # main moves to a commit without the rows' fields: resuming from config.yaml reads the pinned commit
    add_dataset_snapshot(hub["HF_HUB_CACHE"], "org/sorting-chat", {"train.jsonl": '{"nothing": 1}\n',
                                                                   "test.jsonl": '{"nothing": 1}\n'})
    assert sft.main(["--config", str(out / "config.yaml"), "trainer.max_steps=3", "--resume",
                     "--output-dir", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    final = json.loads((out / "checkpoints" / "final" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in final["chat_template"]  # the template it trained with travels on
    for root, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert secret.encode() not in f.read(), os.path.join(root, name)


def test_a_pipeline_pins_the_hub_datasets_of_every_stage(hub, tiny_llama, tmp_path):
    """The pipeline validates copies of its stages (stand-ins): the commits its data resolve to are kept by the
    stages themselves, so each stage's config.yaml and loads carry them."""
    from coati_ray.config.pipeline import PipelineConfig, prepare_pipeline_dict
    from coati_ray.config import save_config

    cache = hub["HF_HUB_CACHE"]
    sft_data = add_dataset_snapshot(cache, "org/pipe-sft", {"train.jsonl": data_path("sft", "train.jsonl"),
                                                            "test.jsonl": data_path("sft", "eval.jsonl")})
    pref = add_dataset_snapshot(cache, "org/pipe-pref", {"train.jsonl": data_path("pref", "train.jsonl")})
    prompts = add_dataset_snapshot(cache, "org/pipe-prompts", {"train.jsonl": data_path("prompts", "train.jsonl"),
                                                               "test.jsonl": data_path("prompts", "eval.jsonl")})
    cfg = load_config(PipelineConfig, os.path.join(REPO, "configs", "demo.yaml"), [
        f"sft.model.path={tiny_llama}", "sft.data.train_path=org/pipe-sft", "sft.data.eval_path=org/pipe-sft",
        "rm.data.train_path=org/pipe-pref", "rm.data.eval_path=null", "ppo.data.prompt_path=org/pipe-prompts",
        "ppo.data.eval_prompt_path=org/pipe-prompts"], output_dir=str(tmp_path / "run"), prepare=prepare_pipeline_dict)
    cfg.link()
    cfg.validate()
    assert (cfg.sft.data.revision, cfg.sft.data.eval_revision) == (sft_data, sft_data)
    assert (cfg.rm.data.revision, cfg.ppo.data.revision, cfg.ppo.data.eval_revision) == (pref, prompts, prompts)
    save_config(cfg.ppo, str(tmp_path / "algorithm.yaml"))
    assert load_config(RLConfig, str(tmp_path / "algorithm.yaml")).data.revision == prompts


def served_model(source_dir: str, extra: dict) -> dict:
    """A model repo as the hub serves it: a directory's files plus `extra` ({path: bytes})."""
    from tests.hub_cache import dir_files

    return {**dir_files(source_dir), **extra}


def test_pinning_downloads_only_what_loading_reads(tiny_chatml, tmp_path, monkeypatch):
    """Repos served over HTTP on loopback the way the Hub serves them, with what real repos carry beside the
    weights transformers loads: Meta's original/*.pth, GGUF quantisations, a .bin copy of the safetensors, Flax,
    TF and ONNX exports, a Mistral-style consolidated.safetensors beside the sharded index. A driver process (the
    hub reached through HF_ENDPOINT, as huggingface.co is) pins each one: only config, tokenizer and generation
    files and the one weight format from_pretrained reads are downloaded (a LoRA repo: its adapter; a tokenizer
    repo: no weights; a dataset: its data_dir). Then, offline, the models load from what was downloaded."""
    import torch
    from transformers import AutoModelForCausalLM

    from coati_ray.models.factory import build_actor
    from tests.hub_cache import FakeHub, snapshot_files

    sharded, binary = tmp_path / "sharded", tmp_path / "binary"
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml)
    model.save_pretrained(str(sharded), max_shard_size="300KB")
    model.save_pretrained(str(binary), safe_serialization=False)
    for out in (sharded, binary):
        for name in os.listdir(tiny_chatml):
            if "tokenizer" in name or name in ("special_tokens_map.json", "vocab.json", "merges.txt"):
                with open(os.path.join(tiny_chatml, name), "rb") as src, open(out / name, "wb") as dst:
                    dst.write(src.read())
    shards = sorted(n for n in os.listdir(sharded) if n.startswith("model-") and n.endswith(".safetensors"))
    assert len(shards) >= 2, shards
    extras = {"original/consolidated.00.pth": b"p" * 64, "original/params.json": b"{}", "model-Q4_K_M.gguf": b"g" * 64,
              "flax_model.msgpack": b"f", "tf_model.h5": b"h", "onnx/model.onnx": b"o", "onnx/config.json": b"{}",
              "training_args.bin": b"t", "README.md": b"# a model", ".gitattributes": b"*.bin filter=lfs"}
    served = FakeHub()
    try:
        duplicate = {"pytorch_model.bin": (binary / "pytorch_model.bin").read_bytes()}  # a .bin copy beside it
        served.add("org/full", served_model(tiny_chatml, {**extras, **duplicate}))
        served.add("org/sharded", served_model(str(sharded), {**extras, "consolidated.safetensors": b"c" * 64}))
        served.add("org/bin-only", served_model(str(binary), extras))
        served.add("org/tokenizer", served_model(str(binary), extras))
        served.add("org/lora", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"a",
                                "adapter_model.bin": b"b", "README.md": b"# an adapter"})
        served.add("org/hh", {"README.md": b"# hh", "harmless-base/train.jsonl": b"{}\n",
                              "helpful-base/train.jsonl": b"{}\n",
                              "red-team-attempts/red_team_attempts.jsonl.gz": b"r" * 64}, "dataset")
        cache = tmp_path / "hf" / "hub"
        env = {**os.environ, "HF_ENDPOINT": served.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(cache),
               "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        driver = """if True:
            import json
            from coati_ray.config.schema import DataConfig, ModelConfig
            out = {}
            for repo in ("org/full", "org/sharded", "org/bin-only", "org/lora"):
                m = ModelConfig(path=repo)
                m.pin()
                out[repo] = [m.revision, m.local_path]
            m = ModelConfig(path=%r, tokenizer_path="org/tokenizer")
            m.pin()
            out["org/tokenizer"] = [m.tokenizer_revision, m.local_tokenizer_path]
            print(json.dumps(out), flush=True)
            d = DataConfig(train_path="org/hh", subset="harmless-base")
            d.validate()
            print(json.dumps(d.revision))
        """ % tiny_chatml
        run = subprocess.run([sys.executable, "-c", driver], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        lines = [line for line in run.stdout.splitlines() if line.startswith(("{", '"'))]
        assert lines, run.stderr[-3000:]
        pinned = json.loads(lines[0])
        side = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json"} & set(os.listdir(tiny_chatml))
        expected = {"org/full": side | {"model.safetensors"},
                    "org/sharded": side | {"model.safetensors.index.json", *shards},
                    "org/bin-only": side | {"pytorch_model.bin"},
                    "org/lora": {"adapter_config.json", "adapter_model.safetensors"},
                    "org/tokenizer": side}
        for repo, files in expected.items():
            commit, snapshot = pinned[repo]
            assert snapshot.endswith(commit) and snapshot_files(snapshot) == files, (repo, snapshot_files(snapshot))
            assert served.downloaded(repo) == files, repo  # nothing else was fetched, not even into a temp file
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads(lines[1]) == served.repos[("dataset", "org/hh")]["refs"]["main"]
        assert served.downloaded("org/hh", "dataset") == {"README.md", "harmless-base/train.jsonl"}
    finally:
        served.close()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # offline, as in the module: load what the pin downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo in ("org/full", "org/sharded", "org/bin-only"):
        cfg = ModelConfig(path=repo)  # main, from the refs the online pin wrote into the cache
        cfg.validate()
        assert cfg.revision == pinned[repo][0]
        loaded = build_actor(cfg).model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items()), repo


@pytest.fixture(scope="module")
def hub_ray(hub):
    ray.init(num_cpus=2, include_dashboard=False, namespace="coati", log_to_driver=False,
             runtime_env={"env_vars": {**hub, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.mark.slow
def test_every_actor_of_a_ppo_job_loads_the_pinned_commit_by_id(hub, hub_ray, tiny_chatml, broken_snapshot,
                                                                tmp_path):
    """Actor, initial, critic and reward models, the prompts and the PPO-ptx data named by hub id: the driver pins
    them, then `main` moves to a snapshot nothing can load. Every maker and trainer resolves the id itself, in its
    own process, through the cache (each actor rank reads the ptx data): the job finishes only if each one loaded
    the pinned commit."""
    import torch

    from actors.driver import RLJob
    from coati_ray.models import RewardModel

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_chatml).save_pretrained(str(rm_dir))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_chatml).save_pretrained(str(rm_dir))
    policy = add_model_snapshot(hub["HF_HUB_CACHE"], "org/policy", tiny_chatml)
    reward = add_model_snapshot(hub["HF_HUB_CACHE"], "org/reward", str(rm_dir))
    prompts = add_dataset_snapshot(hub["HF_HUB_CACHE"], "org/ppo-prompts",
                                   {"train.jsonl": data_path("prompts", "train.jsonl")})
    ptx = add_dataset_snapshot(hub["HF_HUB_CACHE"], "org/ppo-ptx", {"train.jsonl": data_path("ptx", "train.jsonl")})
    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        "actor.path=org/policy", "critic.path=org/reward", "reward_model.path=org/reward",
        "data.prompt_path=org/ppo-prompts", "data.ptx_path=org/ppo-ptx", "algorithm.ptx_coef=0.1",
        "generation.max_new_tokens=4", "algorithm.max_steps=1",
        "maker.num_makers=1", "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
        "buffer.timeout_s=120"], output_dir=str(tmp_path / "ppo"))
    cfg.validate()
    assert (cfg.actor.revision, cfg.critic.revision, cfg.reward_model.revision) == (policy, reward, reward)
    assert (cfg.data.revision, cfg.data.ptx_revision) == (prompts, ptx)
    for repo in ("org/policy", "org/reward"):
        point_ref(hub["HF_HUB_CACHE"], repo, add_model_snapshot(hub["HF_HUB_CACHE"], repo, broken_snapshot,
                                                                 ref="next"))
    for repo in ("org/ppo-prompts", "org/ppo-ptx"):  # main moves to rows without their fields
        add_dataset_snapshot(hub["HF_HUB_CACHE"], repo, {"train.jsonl": '{"nothing": 1}\n'})
    summary = RLJob(cfg, log=True).run()
    assert summary["steps"] == 1
    saved = load_config(RLConfig, str(tmp_path / "ppo" / "config.yaml"))
    assert (saved.actor.path, saved.actor.revision, saved.reward_model.revision) == ("org/policy", policy, reward)
    assert (saved.data.prompt_path, saved.data.revision, saved.data.ptx_revision) == ("org/ppo-prompts", prompts, ptx)
    assert "snapshots" not in (tmp_path / "ppo" / "config.yaml").read_text()  # ids and commits, no local paths
