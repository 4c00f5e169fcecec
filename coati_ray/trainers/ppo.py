"""The updates the trainer groups run: the clipped policy loss (+ KL in the loss, + PPO-ptx) for the actor,
the clipped value loss for the critic (gae only).

Each rank receives its shard of a rollout batch; per PPO epoch the shard is shuffled and cut into
mini-batches of train_batch_size / num_ranks samples, each one optimiser step accumulated over
micro-batches. Every loss is aggregated over the whole mini-batch of all ranks (`algorithm.loss_agg`,
coati_ray/algo/loss_agg.py), so micro-batch size and rank count do not change it. Ray-free: an actor in `actors/` builds one of these and calls `train(shard)`.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from coati_ray.algo.behaviour import behaviour_weights, importance_ratio, log_gap_sum, ratio_sums
from coati_ray.algo.functional import action_log_probs, masked_mean, masked_moments, whiten_from_moments
from coati_ray.algo.loss_agg import MiniBatch, local_counts, share
from coati_ray.algo.losses import kl_loss, policy_loss, ptx_mix, sft_loss, value_loss
from coati_ray.experience.batch import Experience
from coati_ray.trainers.schedule import make_optimizer, make_scheduler
from coati_ray.utils.flops import device_peak_tflops, num_params, training_flops


class PPOGroupTrainer:
    role = "ppo"

    def __init__(self, model, strategy, group_cfg, ppo_cfg, total_steps: int, loss_agg: str = "token_mean",
                 max_tokens: int = 1):
        """`loss_agg`: see coati_ray/algo/loss_agg.py; `max_tokens`: generation.max_new_tokens (Dr. GRPO's
        constant)."""
        self.strategy, self.ppo = strategy, ppo_cfg
        self.loss_agg, self.max_tokens = loss_agg, max_tokens
        self.reduce, self.chunks = masked_mean, 1  # set per mini-batch by train()
        oc = group_cfg.optim
        self.n_params = num_params(model)  # before the strategy shards it
        self.peak_tflops = group_peak_tflops(strategy, model)
        model.pack_sequences = ppo_cfg.micro_batch_tokens is not None  # before a wrapper hides the attribute
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], oc, strategy.name)
        updates = total_steps * ppo_cfg.ppo_epochs * (ppo_cfg.rollout_batch_size // ppo_cfg.train_batch_size)
        scheduler = make_scheduler(optimizer, updates, oc.warmup_steps, oc.scheduler, oc.min_lr_ratio)
        self.model, self.optimizer, self.scheduler = strategy.prepare(model, optimizer, scheduler)
        self.updates = 0

    def micro_loss(self, micro: Experience) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state(self) -> dict:
        """What a checkpoint needs beyond model and optimiser to continue exactly (the scheduler is
        replayed from `updates`)."""
        return {"updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for _ in range(self.updates):
            self.scheduler.step()

    def prepare_shard(self, shard: Experience) -> Experience:
        return shard

    def micro_batches(self, idx: torch.Tensor, attention_mask: torch.Tensor,
                      group_index: Optional[torch.Tensor] = None) -> list:
        """A mini-batch's samples `idx` (this rank's) cut into micro-batches: `micro_batch_size` samples each,
        or, with `algorithm.micro_batch_tokens`, at most that many real tokens each (packed by the model), in as many
        micro-batches on every rank (one gradient all-reduce per optimiser step, wherever it falls). With
        `algorithm.sort_micro_batches` the samples go longest first, so that `micro_input` trims each micro-batch to
        its own width; each loss is a share of the whole mini-batch, so the grouping changes it by float noise only.
        With `algorithm.share_prompts` (the actor) a prompt group's rows stay together, the groups longest first."""
        budget = self.ppo.micro_batch_tokens
        if budget is None:
            micro = self.ppo.micro_batch_size
            lengths = attention_mask[idx].sum(dim=1).cpu()  # idx is on the CPU (a permutation), the shard may not be
            if group_index is not None and self.shares_prompts:  # a group's rows together: its prompt runs once
                idx = idx[groups_longest_first(group_index[idx].cpu(), lengths if self.sorts else None)]
            elif self.sorts:  # alike lengths together, so each micro-batch's padding columns can be dropped
                idx = idx[torch.argsort(lengths, descending=True, stable=True)]
            return [idx[j:j + micro] for j in range(0, len(idx), micro)]
        from coati_ray.models.packing import split_to, token_budget_chunks

        tokens = attention_mask[idx].sum(dim=1).tolist()
        chunks = token_budget_chunks(tokens, budget)
        if self.strategy.world_size > 1:  # shards are equal: every rank can split to the most
            chunks = split_to(chunks, tokens, int(self.strategy.all_reduce_max([float(len(chunks))])[0]))
        return [idx[part] for part in chunks]

    @property
    def sorts(self) -> bool:
        """Whether micro-batches are cut by length and trimmed (never under the 3d strategy, whose sharded
        forward takes the shard's width)."""
        return bool(getattr(self.ppo, "sort_micro_batches", False)) and "3d" not in getattr(self.strategy, "name", "")

    @property
    def shares_prompts(self) -> bool:
        """Whether the actor runs each prompt once for the rows of its group (models/shared_prompt.py): on the
        strategies whose forward is the model's own (naive, ddp), not packed."""
        return (self.role == "actor" and bool(getattr(self.ppo, "share_prompts", False))
                and self.ppo.micro_batch_tokens is None and getattr(self.strategy, "name", "") in ("naive", "ddp"))

    def sharing(self, micro: Experience) -> dict:
        """The forward's `shared_prompt` argument for this micro-batch ({} when no two rows share a prompt)."""
        if not self.shares_prompts:
            return {}
        return self.strategy.unwrap(self.model).prompt_sharing(micro.sequences, micro.attention_mask,
                                                               micro.num_actions)

    def micro_input(self, shard: Experience, part: torch.Tensor) -> Experience:
        """The micro-batch `part` of `shard`, without the columns that are padding in all its rows when sorted."""
        micro = shard.select(part)
        return micro.trimmed() if self.sorts else micro

    def train(self, shard: Experience, step: int) -> dict:
        """PPO epochs over this rank's shard; returns metrics averaged over all ranks of the group."""
        t0 = time.perf_counter()
        self.model.train()
        shard = self.prepare_shard(shard.to(self.strategy.device))
        n = shard.num_samples
        per_rank_mb = self.ppo.train_batch_size // self.strategy.world_size
        sums: dict[str, float] = {}
        count = 0
        g = torch.Generator().manual_seed(self.ppo.seed * 1000003 + step)
        world = self.strategy.world_size
        for _ in range(self.ppo.ppo_epochs):
            order = torch.randperm(n, generator=g)
            minibatches = [order[start:start + per_rank_mb] for start in range(0, n, per_rank_mb)]
            counts = self.strategy.all_reduce_sum(  # every rank's tokens and samples of each mini-batch, one call
                [c for idx in minibatches for c in local_counts(shard.action_mask[idx])])
            for i, idx in enumerate(minibatches):
                mb = MiniBatch(tokens=counts[2 * i], samples=counts[2 * i + 1], max_tokens=self.max_tokens)
                # x world: the strategy averages gradients over ranks, where the shares must add up
                self.reduce = lambda x, mask, mb=mb: share(x, mask, self.loss_agg, mb) * world
                chunks = self.micro_batches(idx, shard.attention_mask, shard.group_index)
                self.chunks = len(chunks)
                for j, chunk in enumerate(chunks):
                    with self.strategy.accumulate(self.model, self.optimizer, last_micro_batch=j == len(chunks) - 1):
                        loss, stats = self.micro_loss(self.micro_input(shard, chunk))
                        self.strategy.backward(loss, self.optimizer)  # a share: the micro-batches add up
                    # reported x chunks: averaged over every micro-batch of every rank, the mini-batch's loss
                    for k, v in {"loss": loss.item() * self.chunks, **stats}.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                grad_norm = self.strategy.optimizer_step(self.model, self.optimizer)
                self.scheduler.step()
                self.updates += 1
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm * len(chunks)
        keys = sorted(sums)
        totals = self.strategy.all_reduce_sum([sums[k] for k in keys] + [float(shard.attention_mask.numel()), count,
                                                                         float(shard.attention_mask.sum())])
        out = {f"{self.role}/{k}": totals[i] / max(totals[-2], 1) for i, k in enumerate(keys)}
        # the share of the trained batch's positions that are padding: what algorithm.micro_batch_tokens removes
        out[f"{self.role}/padding_fraction"] = 1.0 - totals[-1] / max(totals[-3], 1.0)
        elapsed = time.perf_counter() - t0
        out[f"timing/update_{self.role}"] = elapsed
        out[f"throughput/{self.role}_tokens_per_s"] = totals[-1] * self.ppo.ppo_epochs / max(elapsed, 1e-9)
        out[f"flops/{self.role}"] = training_flops(self.n_params, totals[-1] * self.ppo.ppo_epochs)  # whole group
        out[f"{self.role}/lr"] = self.scheduler.get_last_lr()[0]
        out[f"{self.role}/micro_batches"] = totals[-2] / self.strategy.world_size  # per rank, every epoch
        out[f"memory/{self.role}_peak_gb"] = peak_device_memory_gb()
        if self.peak_tflops is not None:
            out[f"peak_tflops/{self.role}"] = self.peak_tflops
        return out


class PolicyTrainer(PPOGroupTrainer):
    role = "actor"

    def __init__(self, model, strategy, group_cfg, ppo_cfg, total_steps: int, ptx_items: Optional[list] = None,
                 ptx_collate=None, temperature: float = 1.0, whiten: bool = True, **aggregation):
        super().__init__(model, strategy, group_cfg, ppo_cfg, total_steps, **aggregation)
        self.ptx_items, self.ptx_collate, self.ptx_pos = ptx_items, ptx_collate, 0
        self.temperature = temperature  # the makers' sampling temperature: the behaviour policy is tempered
        self.whiten = whiten
        self.behaviour_metrics: dict = {}

    def prepare_shard(self, shard: Experience) -> Experience:
        """Whiten advantages over the group's whole rollout batch: every rank all-reduces its sums, so
        N ranks holding 1/N of the batch each normalise exactly as one rank holding all of it. With
        algorithm.behaviour_correction, the old log-probs become the trainer's own and each token gets its
        importance weight against the maker's (coati_ray/algo/behaviour.py)."""
        if self.whiten:
            moments = self.strategy.all_reduce_sum(masked_moments(shard.advantages, shard.action_mask))
            shard = shard._replace({"advantages": whiten_from_moments(shard.advantages, shard.action_mask, moments)})
        self.behaviour_metrics = {}
        how, cap = self.ppo.behaviour_correction, self.ppo.behaviour_cap
        if how != "none" and shard.action_log_probs is not None:
            proximal = self.recompute_log_probs(shard)
            ratio = importance_ratio(proximal, shard.action_log_probs)
            total, tokens, capped, gap = self.strategy.all_reduce_sum(
                ratio_sums(ratio, shard.action_mask, cap) + [log_gap_sum(proximal, shard.action_log_probs,
                                                                         shard.action_mask)])
            mine = ratio[shard.action_mask.bool()]
            top = mine.max().item() if mine.numel() else 0.0
            self.behaviour_metrics = {"behaviour/ratio_mean": total / max(tokens, 1.0),
                                      "behaviour/ratio_max": self.strategy.all_reduce_max([top])[0],
                                      "behaviour/capped_frac": capped / max(tokens, 1.0),
                                      "behaviour/log_ratio_abs_mean": gap / max(tokens, 1.0)}
            if how == "measure":  # the metrics alone: the update takes the makers' log-probs as the old ones
                return shard
            shard = shard._replace({"action_log_probs": proximal,
                                    "behaviour_weights": behaviour_weights(ratio, shard.action_mask, how, cap)})
        return shard

    @torch.no_grad()
    def recompute_log_probs(self, shard: Experience) -> torch.Tensor:
        """The trainer's log-probs of the shard's answers before this update, (B, A), micro-batch by
        micro-batch."""
        out = torch.zeros_like(shard.action_log_probs)
        # as many forwards on every rank: a DDP forward may broadcast buffers, a collective
        for part in self.micro_batches(torch.arange(shard.num_samples), shard.attention_mask, shard.group_index):
            micro = self.micro_input(shard, part)
            logits = self.model(micro.sequences, micro.attention_mask, **self.sharing(micro))
            kept = micro.num_actions  # a trimmed micro-batch's actions are the first of the shard's
            out[part, :kept] = action_log_probs(logits, micro.sequences, kept, self.temperature).float()
        return out.detach()

    def train(self, shard: Experience, step: int) -> dict:
        out = super().train(shard, step)
        out.update(self.behaviour_metrics)
        return out

    def state(self) -> dict:
        return {**super().state(), "ptx_position": self.ptx_pos}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.ptx_pos = int(state.get("ptx_position", 0))

    def _next_ptx(self) -> dict:
        """The next pretraining micro-batch; each rank walks its own stride of the ptx data."""
        bs, rank, world = self.ppo.ptx_batch_size, self.strategy.rank, self.strategy.world_size
        items = []
        for _ in range(bs):
            items.append(self.ptx_items[(self.ptx_pos * world + rank) % len(self.ptx_items)])
            self.ptx_pos += 1
        return {k: v.to(self.strategy.device) for k, v in self.ptx_collate(items).items()}

    def micro_loss(self, micro: Experience) -> tuple[torch.Tensor, dict]:
        A = micro.num_actions
        logits = self.model(micro.sequences, micro.attention_mask, **self.sharing(micro))
        log_probs = action_log_probs(logits, micro.sequences, A, self.temperature)
        # No behaviour log-probs from the maker: this first (and only) forward is the behaviour policy's.
        old = micro.action_log_probs if micro.action_log_probs is not None else log_probs.detach()
        loss, stats = policy_loss(log_probs, old, micro.advantages, micro.action_mask, self.ppo.clip_eps,
                                  reduce=self.reduce, clip_eps_high=self.ppo.clip_eps_high,
                                  weights=micro.behaviour_weights, clip_eps_low=self.ppo.clip_eps_low)
        stats["policy_loss"] = loss.item() * self.chunks
        if self.ppo.ptx_coef > 0 and self.ptx_items:
            ptx = self._next_ptx()
            ptx_loss = sft_loss(self.model(ptx["input_ids"], ptx["attention_mask"]), ptx["labels"])
            loss = ptx_mix(loss, ptx_loss / self.chunks, self.ppo.ptx_coef)  # a mean per micro-batch: its share
            stats["ptx_loss"] = ptx_loss.item()
        if self.ppo.kl_penalty == "loss" and self.ppo.kl_coef > 0:  # kl_coef * k3, whatever the ptx mix
            kl = kl_loss(log_probs, micro.ref_log_probs, micro.action_mask, reduce=self.reduce)
            loss = loss + self.ppo.kl_coef * kl
            stats["kl_loss"] = kl.item() * self.chunks
        return loss, stats


class ValueTrainer(PPOGroupTrainer):
    role = "critic"

    def micro_loss(self, micro: Experience) -> tuple[torch.Tensor, dict]:
        values = self.model(micro.sequences, micro.attention_mask, micro.num_actions)
        loss, stats = value_loss(values, micro.values, micro.returns, micro.action_mask, self.ppo.value_clip_eps,
                                 reduce=self.reduce)
        stats["value_mean"] = masked_mean(values.detach(), micro.action_mask).item()
        return loss, stats


def groups_longest_first(group_index: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An order of B samples that keeps each prompt group's rows next to each other: groups by their longest
    sample, longest first (`lengths` (B,)), else by group number. group_index: (B,) long -> (B,) long."""
    order = torch.argsort(group_index, stable=True)
    if lengths is None:
        return order
    _, local = torch.unique(group_index, return_inverse=True)
    longest = lengths.new_zeros(int(local.max()) + 1).scatter_reduce(0, local, lengths, "amax")
    return order[torch.argsort(longest[local[order]], descending=True, stable=True)]


def make_group_trainer(role: str, cfg, strategy, checkpoint: Optional[str] = None) -> PPOGroupTrainer:
    """The update of trainer group `role` ('actor' or 'critic') of RLConfig `cfg` on a Strategy that has
    joined its world: the model (from `checkpoint` when resuming), dropout off unless
    `algorithm.disable_dropout` is false, the PPO-ptx data, and the sampler's temperature for the ratio."""
    from coati_ray.models import build_actor, build_critic
    from coati_ray.models.loading import tokenizer_for
    from coati_ray.models.dropout import disable_dropout

    p = cfg.algorithm
    group_cfg = getattr(cfg, f"{role}_trainer")
    if role == "actor":
        model = build_actor(cfg.actor, checkpoint=checkpoint)
    else:
        model = build_critic(cfg.critic, checkpoint=checkpoint, head_seed=cfg.algorithm.seed)
    if p.disable_dropout:
        disable_dropout(model)
    aggregation = {"loss_agg": cfg.loss_agg(), "max_tokens": cfg.response_tokens}
    if role != "actor":
        return ValueTrainer(model, strategy, group_cfg, p, p.max_steps, **aggregation)
    ptx_items, ptx_collate = None, None
    if p.ptx_coef > 0:
        from coati_ray.trainers.sft import SFTTrainer

        tok = tokenizer_for(cfg.actor, cfg.data)
        ptx_items, _ = SFTTrainer.build_dataset(cfg.data.ptx_path, tok, _PtxData(cfg.data), None)
        ptx_collate = SFTTrainer.collator(tok)
    temperature = cfg.generation.temperature if cfg.generation.do_sample else 1.0
    return PolicyTrainer(model, strategy, group_cfg, p, p.max_steps, ptx_items, ptx_collate, temperature=temperature,
                         whiten=cfg.whiten(), **aggregation)


class _PtxData:
    """DataConfig-shaped view of the PPO data section, for the SFT dataset builder."""

    def __init__(self, data):
        self.max_length, self.format, self.on_bad_row = data.ptx_max_length, "auto", data.on_bad_row
        self._data = data

    def source(self, which: str = "train"):
        return self._data.source("ptx")  # a hub pretraining dataset: its train split, at the pinned commit


def compute_dtype(strategy, model) -> str:
    """The dtype a group's matmuls run in: a ColossalAI plugin's mixed precision, else the weights' own."""
    precision = getattr(getattr(strategy, "cfg", None), "precision", "fp32")
    if getattr(strategy, "name", "").startswith("colossalai") and precision in ("bf16", "fp16"):
        return {"bf16": "bfloat16", "fp16": "float16"}[precision]
    return str(next(model.parameters()).dtype).replace("torch.", "")


def group_peak_tflops(strategy, model) -> Optional[float]:
    """The dense peak of the group's devices in its compute dtype, one device per rank (MFU's denominator);
    None on CPU or on a GPU coati_ray.utils.flops does not know."""
    peak = device_peak_tflops(compute_dtype(strategy, model))
    return peak * strategy.world_size if peak is not None else None


def peak_device_memory_gb() -> float:
    """The most GPU memory this process has held in tensors so far (GiB); 0 on CPU."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
