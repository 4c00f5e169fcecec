"""A rank of a PPO trainer group (actor or critic): joins its group's world, pulls shards, trains.

Each group is its own torch.distributed world; rank 0 of the actor group exports the weights
once into the object store after every update.
"""

from __future__ import annotations

import os
from typing import Optional

import ray


@ray.remote
class PPOTrainerRank:
    def __init__(self, role: str, cfg_dict: dict, rank: int, world_size: int, torch_threads: Optional[int] = None):
        import torch

        from coati_ray.config import from_dict
        from coati_ray.config.ppo import PPOConfig

        if torch_threads:
            torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.role, self.rank, self.world_size = role, rank, world_size
        self.cfg = from_dict(PPOConfig, cfg_dict)
        self.group_cfg = self.cfg.actor_trainer if role == "actor" else self.cfg.critic_trainer
        self.trainer = None
        self.lora = (self.cfg.actor if role == "actor" else self.cfg.critic).lora_rank > 0

    metrics = None  # ActorMetrics, created on first use inside the actor process

    def address(self) -> tuple[str, int]:
        from actors.group import node_address

        return node_address()

    def setup(self, master_addr: str, master_port: int, resume_dir: Optional[str] = None) -> int:
        """Join the group's process group and build model, optimiser and (for the actor) PPO-ptx data."""
        from coati_ray.models import build_actor, build_critic, load_tokenizer
        from coati_ray.strategies import make_strategy
        from coati_ray.trainers.ppo import PolicyTrainer, ValueTrainer

        cfg, p = self.cfg, self.cfg.ppo
        accum = p.train_batch_size // self.world_size // p.micro_batch_size
        self.strategy = make_strategy(self.group_cfg.strategy, self.rank, self.world_size, master_addr, master_port,
                                      grad_accum_steps=accum)
        self.strategy.setup_distributed()
        model_dir = os.path.join(resume_dir, self.role, "model") if resume_dir else None
        if self.role == "actor":
            model = build_actor(cfg.actor, checkpoint=model_dir)
            ptx_items, ptx_collate = None, None
            if p.ptx_coef > 0:
                from coati_ray.trainers.sft import SFTTrainer

                tok = load_tokenizer(cfg.actor.tokenizer_path or cfg.actor.path)
                ptx_items, _ = SFTTrainer.build_dataset(cfg.data.ptx_path, tok, _PtxData(cfg.data), None)
                ptx_collate = SFTTrainer.collator(tok)
            self.trainer = PolicyTrainer(model, self.strategy, self.group_cfg, p, p.max_steps, ptx_items, ptx_collate)
        else:
            model = build_critic(cfg.critic, checkpoint=model_dir)
            self.trainer = ValueTrainer(model, self.strategy, self.group_cfg, p, p.max_steps)
        if resume_dir:
            opt_dir = os.path.join(resume_dir, self.role, "optimizer")
            if os.path.isdir(opt_dir):
                self.strategy.load_optimizer(self.trainer.optimizer, opt_dir)
            updates = int(open(os.path.join(resume_dir, self.role, "updates")).read())
            for _ in range(updates):
                self.trainer.scheduler.step()
            self.trainer.updates = updates
        return self.rank

    def train_step(self, buffer, num_items: int, step: int) -> dict:
        """Pull this rank's shard of `num_items` buffer items, run the PPO update, report what it used."""
        from coati_ray.experience import concat

        shards, versions, staleness, ids, batch_ids = [], [], [], [], []
        for _ in range(num_items):
            got = ray.get(buffer.get.remote(self.role, self.rank))
            exp = ray.get(got["ref"][0])
            shards.append(exp.shard(self.rank, self.world_size))
            versions.append(got["version"])
            staleness.append(got["staleness"])
            ids.append(got["item_id"])
            batch_ids.append(got["batch_id"])
        metrics = self.trainer.train(concat(shards), step)
        metrics["consumed"] = {"versions": versions, "staleness": staleness, "item_ids": ids, "batch_ids": batch_ids}
        self._publish(metrics, staleness)
        return metrics

    def _publish(self, m: dict, staleness: list) -> None:
        from coati_ray.utils.flops import tflops

        if self.metrics is None:
            from actors.metrics import ActorMetrics

            self.metrics = ActorMetrics(f"{self.role}_trainer", self.rank)
        r = self.role
        self.metrics.set("policy_loss" if r == "actor" else "value_loss",
                         m.get("actor/policy_loss") if r == "actor" else m.get("critic/loss"))
        self.metrics.set("clip_fraction", m.get(f"{r}/clip_frac"))
        self.metrics.set("trainer_tokens_per_second", m.get(f"throughput/{r}_tokens_per_s"))
        self.metrics.set("tflops", tflops(m[f"flops/{r}"], m[f"timing/update_{r}"]))
        self.metrics.set("consumed_staleness", max(staleness) if staleness else 0)
        self.metrics.stages(m)

    def export_weights(self, lora_only: bool) -> Optional[list]:
        """Rank 0 puts its weights in the object store once and returns [ref]; other ranks return None."""
        from coati_ray.models.weights import export_weights

        module = self.strategy.unwrap(self.trainer.model)
        if self.group_cfg.strategy.name == "colossalai_gemini":
            state = self.strategy.full_state_dict(self.trainer.model)  # a collective: every rank gathers
            if self.rank != 0:
                return None
            state = {k: v for k, v in state.items() if not lora_only or "lora_" in k}
        else:
            if self.rank != 0:
                return None
            state = export_weights(module, lora_only=lora_only and self.lora)
        return [ray.put(state)]

    def save_checkpoint(self, path: str, final: bool = False) -> None:
        """<path>/<role>/model (HF; LoRA merged when final, adapters otherwise), optimizer/, updates."""
        from coati_ray.models import export_model

        root = os.path.join(path, self.role)
        state = self.strategy.full_state_dict(self.trainer.model) \
            if self.group_cfg.strategy.name == "colossalai_gemini" else None
        if self.rank == 0:
            os.makedirs(root, exist_ok=True)
            tok = None
            if self.role == "actor":
                from coati_ray.models import load_tokenizer

                tok = load_tokenizer(self.cfg.actor.tokenizer_path or self.cfg.actor.path)
            export_model(self.strategy.unwrap(self.trainer.model), os.path.join(root, "model"), merge_lora=final,
                         state_dict=state, tokenizer=tok)
            with open(os.path.join(root, "updates"), "w") as f:
                f.write(str(self.trainer.updates))
        self.strategy.barrier()
        if not final:
            self.strategy.save_optimizer(self.trainer.optimizer, os.path.join(root, "optimizer"))
        self.strategy.barrier()

    def weights(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.strategy.unwrap(self.trainer.model).state_dict().items()}

    def shutdown(self) -> None:
        self.strategy.close()


class _PtxData:
    """DataConfig-shaped view of the PPO data section, for the SFT dataset builder."""

    def __init__(self, data):
        self.max_length, self.format, self.on_bad_row = data.ptx_max_length, "auto", data.on_bad_row
