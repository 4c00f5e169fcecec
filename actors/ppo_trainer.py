"""A rank of a PPO trainer group (actor or critic): joins its group's world, pulls shards, trains.

Each group is its own torch.distributed world; rank 0 of each group exports the weights once into
the object store after every update.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional

import ray

from actors.colocated_rank import ColocatedRollout

STATE_FILE = "trainer_state.json"


@ray.remote(concurrency_groups={"weights": 1, "release": 1})
class PPOTrainerRank(ColocatedRollout):
    def __init__(self, role: str, cfg_dict: dict, rank: int, world_size: int, torch_threads: Optional[int] = None,
                 cpu_cores: Optional[list] = None, nice: int = 0):
        import torch

        from coati_ray.config import from_dict
        from coati_ray.config.rl import RLConfig
        from coati_ray.seams import import_plugins
        from coati_ray.utils.cpu import place_threads

        place_threads(cpu_cores, nice, f"{role}_trainer.resources")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.role, self.rank, self.world_size = role, rank, world_size
        self.cfg = from_dict(RLConfig, cfg_dict)
        import_plugins(self.cfg.plugins)  # the user's registrations, in this process too
        self.group_cfg = getattr(self.cfg, f"{role}_trainer")
        self.model_cfg = getattr(self.cfg, role)
        self.trainer = None
        # An export may run on the weights thread while a step is under way (a maker catching up mid-step):
        # it waits for the update in progress, so it always reads the weights of a whole number of steps.
        self.update_lock = threading.Lock()
        self.steps_done = 0

    metrics = None  # WorkerMetrics, created on first use inside the actor process
    offload = None  # OptimizerOffload under colocated.offload_optimizer

    def setup(self, meeting: tuple, resume_dir: Optional[str] = None, first_step: int = 0) -> int:
        """Join the group's process group (through the meeting place: actors/rendezvous.py) and build model,
        optimiser and (for the actor) PPO-ptx data."""
        from actors.rendezvous import RendezvousStore, bind_gloo_to, node_bind_ip
        from coati_ray.strategies import make_strategy
        from coati_ray.trainers.ppo import make_group_trainer

        p = self.cfg.algorithm
        accum = p.train_batch_size // self.world_size // p.micro_batch_size
        if p.micro_batch_tokens is not None:  # the token budget decides how many: Gemini must expect several
            accum = max(2, accum)
        bind_gloo_to(node_bind_ip())
        self.strategy = make_strategy(self.group_cfg.strategy, self.rank, self.world_size, grad_accum_steps=accum,
                                      store=RendezvousStore(*meeting))
        self.strategy.setup_distributed()
        if resume_dir:  # a remote checkpoint: this node's copy (downloaded once per node, coati_ray/storage)
            from coati_ray.storage import readable_path

            resume_dir = readable_path(resume_dir, "--resume")
        model_dir = os.path.join(resume_dir, self.role, "model") if resume_dir else None
        self.trainer = make_group_trainer(self.role, self.cfg, self.strategy, model_dir)
        if resume_dir:
            self._restore(os.path.join(resume_dir, self.role))
        from actors.weight_endpoints import WeightSender

        self.sender = WeightSender(self.strategy, self.trainer.model, self.model_cfg.lora_rank > 0,
                                   gathers=self.group_cfg.strategy.name.startswith("colossalai_gemini"))
        self.steps_done = first_step
        if self.cfg.placement_spec.trainers_generate and self.cfg.colocated.offload_optimizer:
            from coati_ray.strategies.offload import OptimizerOffload

            self.offload = OptimizerOffload(self.trainer.optimizer, self.strategy.unwrap(self.trainer.model))
            self.offload.out()  # until the first update: the first rollout comes before it
        if self.cfg.placement_spec.trainers_generate and self.role == "actor":
            self._rollout()  # the reference and reward models beside the policy, loaded with the group
        return self.rank

    def _restore(self, root: str) -> None:
        """Optimiser, trainer state (updates -> scheduler, PPO-ptx position) and this rank's RNG."""
        import torch

        opt_dir = os.path.join(root, "optimizer")
        if os.path.isdir(opt_dir):
            self.strategy.load_optimizer(self.trainer.optimizer, opt_dir)
        state_file = os.path.join(root, STATE_FILE)
        if os.path.isfile(state_file):
            with open(state_file) as f:
                self.trainer.load_state(json.load(f))
        else:  # checkpoints written before trainer_state.json held only the update count
            with open(os.path.join(root, "updates")) as f:
                self.trainer.load_state({"updates": int(f.read())})
        rng = os.path.join(root, "rng", f"rank_{self.rank}.pt")
        if os.path.isfile(rng):
            torch.set_rng_state(torch.load(rng, weights_only=True))
        cuda_rng = os.path.join(root, "rng", f"rank_{self.rank}_cuda.pt")
        if os.path.isfile(cuda_rng) and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.load(cuda_rng, weights_only=True))

    def train_step(self, buffer, num_items: int, step: int) -> dict:
        """Pull this rank's shard of the step's `num_items` buffer items, run the PPO update, report what it
        used. The items are ordered by batch id, so the update does not depend on which maker finished
        first (a resumed run repeats the uninterrupted one)."""
        from coati_ray.experience import concat

        t0 = time.perf_counter()
        got = []
        for _ in range(num_items):
            while True:
                item = ray.get(buffer.get.remote(self.role, self.rank))
                try:
                    got.append((item, ray.get(item["ref"][0])))
                    break
                except ray.exceptions.ObjectLostError:  # it went with its maker's node: the batch is made again
                    ray.get(buffer.lost.remote(self.role, self.rank, item["item_id"]))
        waited = time.perf_counter() - t0
        got.sort(key=lambda pair: pair[0]["batch_id"])
        shards = [exp.shard(self.rank, self.world_size) for _, exp in got]
        with self.update_lock:
            back = self.offload.back() if self.offload is not None else None
            metrics = self.trainer.train(concat(shards), step)
            self.steps_done = step + 1
            if self.offload is not None:  # between updates the GPU memory is generation's
                out = self.offload.out()
                metrics[f"memory/{self.role}_offloaded_gb"] = out["bytes"] / 2**30
                metrics[f"timing/offload_{self.role}"] = back["seconds"] + out["seconds"]
        metrics[f"timing/wait_{self.role}"] = waited
        metrics["consumed"] = {"versions": [g["version"] for g, _ in got],
                               "staleness": [g["staleness"] for g, _ in got],
                               "item_ids": [g["item_id"] for g, _ in got],
                               "batch_ids": [g["batch_id"] for g, _ in got]}
        self._publish(metrics, metrics["consumed"]["staleness"])
        return metrics

    def _publish(self, m: dict, staleness: list) -> None:
        from coati_ray.utils.flops import tflops

        if self.metrics is None:
            from actors.metrics import WorkerMetrics

            self.metrics = WorkerMetrics(f"{self.role}_trainer", self.rank)
        r = self.role
        self.metrics.set("policy_loss" if r == "actor" else "value_loss",
                         m.get("actor/policy_loss") if r == "actor" else m.get("critic/loss"))
        self.metrics.set("clip_fraction", m.get(f"{r}/clip_frac"))
        self.metrics.set("trainer_tokens_per_second", m.get(f"throughput/{r}_tokens_per_s"))
        self.metrics.set("tflops", tflops(m[f"flops/{r}"], m[f"timing/update_{r}"]))
        self.metrics.set("consumed_staleness", max(staleness) if staleness else 0)
        self.metrics.stages(m)

    # ---------------------------------------------------------------- weight sync (the sender's end)

    @ray.method(concurrency_group="weights")
    def steps_trained(self) -> dict:
        """The steps this rank's weights have seen, and whether an update is running (answers mid-step,
        without waiting for the update)."""
        return {"steps": self.steps_done, "busy": self.update_lock.locked()}

    @ray.method(concurrency_group="weights")
    def export_weights(self, block: bool = True) -> Optional[dict]:
        """Object store: rank 0 puts its weights once as numpy views ({ref, dtypes, bytes, version}); others
        None. Under Gemini every rank joins the gather first. Runs on the weights thread, so it also answers
        mid-step (after the update in progress), labelled with the steps its weights have seen; without
        `block` it answers {"busy": True} at once instead of waiting for an update in progress."""
        if not self.update_lock.acquire(blocking=block):
            return {"busy": True}
        try:
            part = self.sender.export()
            return None if part is None else {**part, "version": self.steps_done}
        finally:
            self.update_lock.release()

    @ray.method(concurrency_group="weights")
    def export_ipc(self) -> Optional[dict]:
        """ipc: rank 0's blob for one maker on this node to map its weights (never mid-update); others None."""
        with self.update_lock:
            part = self.sender.export_ipc()
            return None if part is None else {**part, "version": self.steps_done}

    def sync_plan(self, bucket_bytes: int) -> list:
        return self.sender.plan(bucket_bytes)

    def join_sync(self, meeting: tuple, rank: int, size: int, backend: str, timeout_s: float) -> int:
        self.sender.join(meeting, rank, size, backend, timeout_s)
        return rank

    def send_weights(self, buckets: list, export: bool = False) -> dict:
        """Broadcast the current weights to the sync group (rank 0; other ranks only join Gemini's gather);
        with `export` also put them in the object store for makers that catch up later."""
        out = self.sender.send(buckets, export)
        if "export" in out:
            out["export"]["version"] = self.steps_done
        return out

    @ray.method(concurrency_group="release")  # never queued behind an update stuck on a dead peer
    def release_shared(self) -> int:
        """Before this rank is killed: the /dev/shm files its ipc exports made (see WeightSender.release_shared)."""
        return self.sender.release_shared() if getattr(self, "sender", None) is not None else 0

    def leave_sync(self) -> None:
        self.sender.leave()

    def save_checkpoint(self, path: str, final: bool = False) -> None:
        """<path>/<role>/model (HF; LoRA merged when final, adapters otherwise), optimizer/, rng/, trainer_state.json.

        `path` may be a URI: this rank writes its part into a node-local staging directory and uploads it before
        returning (the driver seals the checkpoint once every rank returned)."""
        from coati_ray.storage.staging import staged_writes

        with staged_writes(path) as out:
            self._write_checkpoint(out, final)

    def _write_checkpoint(self, path: str, final: bool) -> None:
        import torch

        from coati_ray.models import export_model

        root = os.path.join(path, self.role)
        state = self.strategy.full_state_dict(self.trainer.model) \
            if self.group_cfg.strategy.name.startswith("colossalai_gemini") else None
        if self.rank == 0:
            os.makedirs(os.path.join(root, "rng"), exist_ok=True)
            tok = None
            if self.role == "actor":
                from coati_ray.models.loading import tokenizer_for

                # the checkpoint keeps the chat template its prompts were rendered with
                tok = tokenizer_for(self.cfg.actor, self.cfg.data)
            export_model(self.strategy.unwrap(self.trainer.model), os.path.join(root, "model"), merge_lora=final,
                         state_dict=state, tokenizer=tok)
            with open(os.path.join(root, STATE_FILE), "w") as f:
                json.dump(self.trainer.state(), f)
        self.strategy.barrier()
        if not final:
            if self.offload is not None:  # a plugin's optimizer state dict gathers over the group's devices
                self.offload.back()
            self.strategy.save_optimizer(self.trainer.optimizer, os.path.join(root, "optimizer"))
            if self.offload is not None:
                self.offload.out()
            os.makedirs(os.path.join(root, "rng"), exist_ok=True)  # each rank's own staging dir, when remote
            torch.save(torch.get_rng_state(), os.path.join(root, "rng", f"rank_{self.rank}.pt"))
            if torch.cuda.is_available():
                torch.save(torch.cuda.get_rng_state(), os.path.join(root, "rng", f"rank_{self.rank}_cuda.pt"))
        self.strategy.barrier()

    def weights(self, merged: bool = False) -> dict:
        """This rank's weights (for tests and checks); `merged`: LoRA folded into the (dequantized) base."""
        from coati_ray.models.weights import export_view

        with self.update_lock:  # not during an update, nor beside a sync's gather on the weights thread
            if self.sender.gathers and not merged:
                # Gemini keeps parameters in chunks: gather them as a sync does (a collective, so tests call
                # this on one-rank Gemini groups only).
                return {k: v.detach().cpu().clone() for k, v in self.sender.state().items()}
            return export_view(self.strategy.unwrap(self.trainer.model), merged)

    def shutdown(self) -> None:
        self.strategy.close()
