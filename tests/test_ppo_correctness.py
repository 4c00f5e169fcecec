"""Stage 3 correct where users run it, without Ray: precision casts, sharded export on rank 0 only,
whitening over the whole group, the sampling policy in the ratio, EOS ids, the LoRA merge, prompt
order. Each test fails on the code before these fixes (see the README's status)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from coati_ray.config import from_dict, load_config, to_dict
from coati_ray.config.rl import RLConfig
from tests.conftest import REPO, data_path


def ppo_cfg(actor, reward, out, *overrides) -> RLConfig:
    cfg = load_config(RLConfig, os.path.join(REPO, "configs", "ppo_tiny.yaml"), [
        f"actor.path={actor}", f"critic.path={actor}", f"reward_model.path={reward}",
        f"data.prompt_path={data_path('prompts', 'train.jsonl')}", *overrides], output_dir=str(out))
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def gpt2_reward(assets, tmp_path_factory) -> str:
    from coati_ray.models import RewardModel

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("rm_gpt2") / "final")
    RewardModel.from_pretrained(os.path.join(assets, "models", "tiny-gpt2")).save_pretrained(path)
    return path


# ---------------------------------------------------------------- 1. precision is a contract


@pytest.mark.parametrize("lora", [False, True])
def test_fp32_trainer_weights_load_into_a_bf16_maker_as_their_exact_cast(tiny_llama, lora):
    from coati_ray.config import ModelConfig
    from coati_ray.models import build_actor
    from coati_ray.models.weights import export_weights, load_weights

    rank = 4 if lora else 0
    trainer = build_actor(ModelConfig(path=tiny_llama, lora_rank=rank))
    maker = build_actor(ModelConfig(path=tiny_llama, lora_rank=rank, dtype="bfloat16"))
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * 1e-3)  # values a bf16 copy cannot hold exactly
    state = export_weights(trainer, lora_only=lora)
    casts = load_weights(maker, state, lora_only=lora)
    own = maker.state_dict()
    assert all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in state.items())
    assert casts == sum(own[k].dtype != v.dtype for k, v in state.items())
    # peft keeps adapters in fp32 on a bf16 base (autocast_adapter_dtype), so LoRA casts nothing
    assert (casts == 0) if lora else (casts == len(state))


def test_max_abs_delta_is_zero_for_the_exact_cast_and_names_the_worst_tensor():
    """The GPU issue's sync check: 0 between fp32 weights and a bf16 copy holding exactly their cast; otherwise
    the largest gap and where it is; a NaN (a diverged model) is the worst; index buffers do not count."""
    from coati_ray.models.weights import max_abs_delta

    torch.manual_seed(0)
    fp32 = {"a.weight": torch.randn(4, 3), "b.weight": torch.randn(5), "ids": torch.arange(3)}
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v + 1 for k, v in fp32.items()}
    assert max_abs_delta(fp32, bf16) == (0.0, "")
    assert max_abs_delta(fp32, {k: v.float() for k, v in bf16.items()})[0] > 0  # rounding shows in fp32
    moved = {**bf16, "b.weight": bf16["b.weight"] + torch.tensor([0, 0, 0.5, 0, 0], dtype=torch.bfloat16)}
    assert max_abs_delta(fp32, moved) == (0.5, "b.weight")
    broken = {**bf16, "a.weight": torch.full((4, 3), float("nan"), dtype=torch.bfloat16)}
    value, key = max_abs_delta(fp32, broken)
    assert value != value and key == "a.weight"
    assert max_abs_delta(broken, broken) == (0.0, "")  # the same NaNs on both sides: an exact copy
    assert max_abs_delta(fp32, {**bf16, "b.weight": torch.zeros(6)}) == (float("inf"), "b.weight")
    value, key = max_abs_delta(fp32, {"other": torch.zeros(1)})
    assert value != value and key == ""  # nothing compared is not a perfect sync


def test_non_floating_dtype_mismatch_is_still_refused(tiny_llama):
    from coati_ray.errors import ModelError
    from coati_ray.models.weights import check_compatible

    module = torch.nn.Module()
    module.register_buffer("index", torch.arange(4))
    with pytest.raises(ModelError, match="wrong shape/dtype"):
        check_compatible(module, {"index": torch.arange(4).float()}, lora_only=False)


def test_maker_dtype_auto_follows_each_trainer_groups_compute_precision(tiny_llama, reward_dir, tmp_path):
    cfg = ppo_cfg(tiny_llama, reward_dir, tmp_path, "actor.dtype=bfloat16")
    assert [cfg.maker_dtype(m) for m in ("actor", "critic", "reward")] == ["bfloat16", "float32", "float32"]
    cfg.actor_trainer.strategy.name, cfg.actor_trainer.strategy.precision = "colossalai_zero2", "bf16"
    cfg.actor.dtype = "float32"  # fp32 masters; the plugin computes (and exports) in bf16
    assert cfg.maker_dtype("actor") == "bfloat16"
    cfg.maker.dtype = "float32"
    assert {cfg.maker_dtype(m) for m in ("actor", "critic", "reward")} == {"float32"}


# ---------------------------------------------------------------- 2. sharded export gathers once


class GeminiStandIn(torch.nn.Module):
    """Records how GeminiDDP.state_dict is called (the real one needs CUDA): with only_rank_0=True,
    ColossalAI keeps gathered tensors on rank 0 and gives other ranks empty placeholders."""

    def __init__(self, rank):
        super().__init__()
        self.rank, self.calls = rank, []
        self.weight = torch.nn.Parameter(torch.ones(3))

    def state_dict(self, only_rank_0=True, **kwargs):
        self.calls.append(only_rank_0)
        keep = (not only_rank_0) or self.rank == 0
        return {"weight": self.weight.detach().clone() if keep else torch.empty(0)}


@pytest.mark.parametrize("rank", [0, 1])
def test_gemini_export_gathers_on_rank_0_only(rank):
    from coati_ray.config.schema import StrategyConfig
    from coati_ray.strategies import Strategy

    strategy = Strategy(StrategyConfig(name="colossalai_gemini", precision="bf16"), rank=rank, world_size=2)
    model = GeminiStandIn(rank)
    state = strategy.full_state_dict(model)
    assert model.calls == [True]  # every rank joins the gather, asking ColossalAI to keep it on rank 0
    assert (set(state) == {"weight"}) if rank == 0 else (state == {})


class PluginOptimizerStandIn:
    """What ZeRO-2 and Gemini optimizers offer after a step (ColossalAI's OptimizerWrapper.get_grad_norm)."""

    def __init__(self, norm):
        self.norm, self.steps = norm, 0

    def step(self):
        self.steps += 1

    def zero_grad(self, set_to_none=True):
        pass

    def get_grad_norm(self):
        return self.norm


@pytest.mark.parametrize("name", ["colossalai_zero2", "colossalai_gemini"])
def test_grad_norm_is_a_number_under_zero2_and_gemini(name):
    from coati_ray.config.schema import StrategyConfig
    from coati_ray.strategies import Strategy

    strategy = Strategy(StrategyConfig(name=name, precision="bf16"))
    assert strategy.optimizer_step(torch.nn.Linear(2, 2), PluginOptimizerStandIn(torch.tensor(2.5))) == 2.5
    assert strategy.optimizer_step(torch.nn.Linear(2, 2), PluginOptimizerStandIn(0.75)) == 0.75


# ---------------------------------------------------------------- 3. advantages whitened over the group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_experience(model, vocab: int, B: int = 8, P: int = 4, A: int = 6, lengths=None):
    """B samples with log-probs from `model` (so the first ratio is 1) and advantages whose mean and scale
    differ between the two halves: whitening each half alone is visibly wrong. `lengths`: each answer's
    tokens (the action mask), full length by default."""
    from coati_ray.experience import Experience

    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(4, vocab, (B, P + A), generator=g)
    mask = torch.ones(B, P + A, dtype=torch.long)
    with torch.no_grad():
        logp = model.log_probs(seqs, mask, A)
    adv = torch.randn(B, A, generator=g)
    adv[: B // 2] = adv[: B // 2] * 3 + 2
    zeros = torch.zeros(B, A)
    action_mask = torch.ones(B, A, dtype=torch.long) if lengths is None else \
        (torch.arange(A)[None, :] < torch.tensor(lengths)[:, None]).long()
    return Experience(sequences=seqs, attention_mask=mask, action_mask=action_mask,
                      action_log_probs=logp, values=zeros, returns=zeros, advantages=adv, kl=zeros,
                      reward=torch.zeros(B))


def train_once(cfg_dict, rank, world, port, exp_path, out_path):
    """One PPO update of the actor group on this rank's shard; saves its whitened advantages and weights."""
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer

    torch.set_num_threads(1)
    cfg = from_dict(RLConfig, cfg_dict)
    p = cfg.algorithm
    strategy = make_strategy(cfg.actor_trainer.strategy, rank, world, "127.0.0.1", port,
                             grad_accum_steps=p.train_batch_size // world // p.micro_batch_size)
    strategy.setup_distributed()
    trainer = make_group_trainer("actor", cfg, strategy)
    shard = torch.load(exp_path, weights_only=False).shard(rank, world)
    whitened = trainer.prepare_shard(shard).advantages
    trainer.train(shard, step=0)
    torch.save({"advantages": whitened, "mask": shard.action_mask, "params": {k: v.detach().clone() for k, v in
                                                   strategy.unwrap(trainer.model).state_dict().items()}}, out_path)
    strategy.close()


def _rank(rank, world, port, cfg_dict, exp_path, out_dir):
    train_once(cfg_dict, rank, world, port, exp_path, os.path.join(out_dir, f"rank{rank}.pt"))


def one_rank_and_two(single: RLConfig, double: RLConfig, exp, start: dict, tmp_path) -> tuple[float, float]:
    """One actor update of `exp` by config `single` (1 rank) and by `double` (2 DDP ranks, spawned): how far the
    one-rank update moved the weights from `start`, and the most any rank's weights differ from it after."""
    exp_path = str(tmp_path / "exp.pt")
    torch.save(exp, exp_path)
    train_once(to_dict(single), 0, 1, None, exp_path, str(tmp_path / "single.pt"))
    mp.spawn(_rank, args=(2, free_port(), to_dict(double), exp_path, str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    moved = max((one["params"][k] - start[k]).abs().max().item() for k in one["params"])
    worst = max((ranks[r]["params"][k] - one["params"][k]).abs().max().item() for r in (0, 1) for k in one["params"])
    return moved, worst


def test_two_rank_group_whitens_and_updates_as_one_rank_on_the_union(tiny_llama, reward_dir, tmp_path):
    from coati_ray.models import Actor

    common = ["algorithm.rollout_batch_size=8", "algorithm.train_batch_size=8", "algorithm.micro_batch_size=2",
              # eps 1: Adam's first step becomes lr * g / (|g| + 1), linear in g, so float-rounding noise in
              # near-zero gradients cannot flip a sign and hide a real difference
              "actor_trainer.optim.eps=1.0", "actor_trainer.optim.lr=1e-2", "maker.batch_size=8"]
    single = ppo_cfg(tiny_llama, reward_dir, tmp_path / "single", *common, "actor_trainer.strategy.name=naive",
                     "actor_trainer.resources.num_ranks=1")
    double = ppo_cfg(tiny_llama, reward_dir, tmp_path / "ddp", *common, "actor_trainer.strategy.name=ddp",
                     "actor_trainer.resources.num_ranks=2")
    model = Actor.from_pretrained(tiny_llama)
    exp_path = str(tmp_path / "exp.pt")
    # answers of different lengths, fewer tokens on rank 0's half: each rank's own token mean would differ
    torch.save(synthetic_experience(model, model.config.vocab_size, lengths=[1, 2, 6, 3, 6, 5, 6, 4]), exp_path)
    train_once(to_dict(single), 0, 1, None, exp_path, str(tmp_path / "single.pt"))
    mp.spawn(_rank, args=(2, free_port(), to_dict(double), exp_path, str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    union = torch.cat([r["advantages"] for r in ranks])
    assert torch.allclose(union, one["advantages"], atol=1e-6)
    kept = union[torch.cat([r["mask"] for r in ranks]).bool()]
    assert abs(float(kept.mean())) < 1e-5 and abs(float(kept.std()) - 1.0) < 1e-3
    moved = max((one["params"][k] - model.state_dict()[k]).abs().max().item() for k in one["params"])
    worst = max((ranks[0]["params"][k] - one["params"][k]).abs().max().item() for k in one["params"])
    assert moved > 1e-4 and worst < 1e-6, (moved, worst)


# ---------------------------------------------------------------- 4. the policy that sampled is in the ratio


@pytest.mark.parametrize("keep_dropout", [False, True])
def test_first_on_policy_minibatch_has_ratio_one_with_dropout_and_temperature(assets, gpt2_reward, tmp_path,
                                                                              keep_dropout):
    """tiny-gpt2 has dropout 0.1 (as gpt2 and opt do) and the makers sample at temperature 0.7."""
    from coati_ray.experience import make_experience
    from coati_ray.experience.make import build_experience_models
    from coati_ray.experience.prompts import read_prompt_data
    from coati_ray.models import load_tokenizer
    from coati_ray.strategies import make_strategy
    from coati_ray.trainers.ppo import make_group_trainer

    gpt2 = os.path.join(assets, "models", "tiny-gpt2")
    cfg = ppo_cfg(gpt2, gpt2_reward, tmp_path, "generation.temperature=0.7", "generation.max_new_tokens=8",
                  "actor_trainer.strategy.name=naive", "actor_trainer.resources.num_ranks=1",
                  f"algorithm.disable_dropout={str(not keep_dropout).lower()}")
    tok = load_tokenizer(gpt2)
    prompts, _, _ = read_prompt_data(cfg.data, tok)
    torch.manual_seed(0)
    exp, _ = make_experience(build_experience_models(cfg), tok, prompts[:8], cfg.generation, cfg.algorithm)
    # the behaviour log-probs are the tempered policy's (what the sampler drew from) ...
    from coati_ray.models import Actor

    plain = Actor.from_pretrained(gpt2).eval()
    with torch.no_grad():
        tempered = plain.log_probs(exp.sequences, exp.attention_mask, exp.num_actions, temperature=0.7)
    assert torch.allclose(exp.action_log_probs * exp.action_mask, tempered * exp.action_mask, atol=1e-5)
    strategy = make_strategy(cfg.actor_trainer.strategy)
    strategy.setup_distributed()
    trainer = make_group_trainer("actor", cfg, strategy)
    assert trainer.temperature == 0.7  # ... and so are the trainer's, in the ratio
    trainer.model.train()  # as in every update
    _, stats = trainer.micro_loss(exp.select(slice(0, 4)))
    if keep_dropout:  # the checkpoint's dropout, kept on request: the first minibatch is already off-policy
        assert stats["approx_kl"] > 1e-3 and abs(stats["ratio"] - 1.0) > 1e-3
    else:
        assert stats["clip_frac"] == 0.0 and abs(stats["approx_kl"]) < 1e-6 and stats["ratio"] == pytest.approx(1.0,
                                                                                                              abs=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_disable_dropout_makes_train_mode_forward_deterministic(assets, family):
    from coati_ray.models import Actor
    from coati_ray.models.dropout import disable_dropout

    model = Actor.from_pretrained(os.path.join(assets, "models", f"tiny-{family}")).train()
    ids = torch.randint(4, 200, (2, 12))
    assert not torch.equal(model(ids), model(ids))  # dropout 0.1 in the checkpoint's config
    assert disable_dropout(model) > 0
    assert torch.equal(model(ids), model(ids)) and torch.equal(model(ids), model.eval()(ids))


def test_log_probs_are_those_of_the_tempered_distribution():
    from coati_ray.algo import action_log_probs

    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 0.0, 3.0], [0.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 1, 2]])
    got = action_log_probs(logits, ids, num_actions=2, temperature=0.5)
    expected = torch.log_softmax(logits[0, :2] / 0.5, dim=-1)[[0, 1], [1, 2]]
    assert torch.allclose(got[0], expected, atol=1e-6)
    assert torch.allclose(action_log_probs(logits, ids, 2)[0], torch.log_softmax(logits[0, :2], -1)[[0, 1], [1, 2]],
                          atol=1e-6)


# ---------------------------------------------------------------- 9. smaller items


def test_every_eos_id_of_the_generation_config_ends_a_response(tiny_llama, tokenizer):
    from coati_ray.models import Actor, response_mask

    actor = Actor.from_pretrained(tiny_llama)
    stop = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" 7"))[0]  # stands in for <|eot_id|>
    actor.model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    assert actor.eos_token_ids(tokenizer) == [tokenizer.eos_token_id, stop]
    assert response_mask(torch.tensor([[5, stop, 9, 9], [5, 6, 2, 9]]), [2, stop]).tolist() == \
        [[1, 1, 0, 0], [1, 1, 1, 0]]
    with torch.no_grad():  # make the stand-in the model's favourite next token: generation stops on it
        actor.model.lm_head.bias = torch.nn.Parameter(torch.zeros(actor.config.vocab_size))
        actor.model.lm_head.bias[stop] = 100.0
    ids = torch.tensor([[tokenizer.bos_token_id, 40, 41]])
    seqs, _, action_mask = actor.generate(ids, torch.ones_like(ids), tokenizer, max_new_tokens=5, do_sample=False)
    assert seqs[0, 3].item() == stop and action_mask.tolist() == [[1]]


def test_prompt_order_is_computed_once_per_epoch(monkeypatch):
    from coati_ray.experience import prompts as module

    calls = []
    real = torch.randperm
    monkeypatch.setattr(module.torch, "randperm", lambda *a, **k: calls.append(a) or real(*a, **k))
    stream = module.PromptStream([{"i": i} for i in range(10)], batch_size=4, seed=3)
    batches = [stream.next_batch()[0] for _ in range(10)]  # 40 items: 4 epochs of 10
    assert len(calls) == 4
    assert [[x["i"] for x in b] for b in batches] == [[x["i"] for x in stream.batch(i)] for i in range(10)]
    first_epoch = [x["i"] for b in batches[:2] for x in b] + [x["i"] for x in batches[2][:2]]
    assert sorted(first_epoch) == list(range(10))


def test_lora_merge_equals_merge_and_unload_without_copying_the_model(tiny_llama, tmp_path, monkeypatch):
    import copy

    from transformers import AutoModelForCausalLM

    from coati_ray.config import ModelConfig
    from coati_ray.models import build_actor, export_model

    actor = build_actor(ModelConfig(path=tiny_llama, lora_rank=4))
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # B starts at zero: give the adapters a delta to merge
    reference = copy.deepcopy(actor.model).merge_and_unload().state_dict()

    real_deepcopy = copy.deepcopy

    def no_model_copies(obj, *a, **k):  # configs may be copied (save_pretrained does); modules may not
        if isinstance(obj, torch.nn.Module):
            raise AssertionError("the export deep-copied the model")
        return real_deepcopy(obj, *a, **k)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    export_model(actor, str(tmp_path / "merged"), merge_lora=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
    assert any("lora_" in k for k in actor.state_dict())  # the live model keeps its adapters
