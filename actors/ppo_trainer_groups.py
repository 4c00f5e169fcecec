"""The PPO trainer groups of one job: one placement group and one torch.distributed world per role.

    groups = PPOTrainerGroups(cfg, cfg_dict, roles=("actor", "critic"))
    groups.start(); groups.setup(resume_from)
    refs = groups.train(buffer, items_per_step, step)   # {role: [ref per rank]}
    groups.get(all refs)                                 # fails fast, naming a dead rank

A group cannot lose a rank (its peers wait in a collective), so any rank's death ends the run at
once with one line that names the rank and the checkpoint to resume from.
"""

from __future__ import annotations

import time
from typing import Iterator, Optional

import ray
from ray.util.placement_group import remove_placement_group

from actors.ppo_trainer import PPOTrainerRank
from coati_ray.errors import TrainerLost, WorkerLost

PLACEMENT_TIMEOUT_S = 120.0


class PPOTrainerGroups:
    def __init__(self, cfg, cfg_dict: dict, roles: tuple[str, ...]):
        self.cfg, self.cfg_dict, self.roles = cfg, cfg_dict, roles
        self.ranks: dict[str, list] = {}
        self.pgs: list = []
        self.step = 0  # for the error line: the step being trained when a rank died
        self.owner: dict = {}  # train_step ref -> the rank's name
        self.t_train = 0.0     # when the current train_step calls were sent
        self._rendezvous = None  # where each group's ranks meet (actors/rendezvous.py), made when first needed

    @property
    def rendezvous(self):
        if self._rendezvous is None:
            from actors.rendezvous import new_rendezvous

            self._rendezvous = new_rendezvous()
        return self._rendezvous

    def group_cfg(self, role: str):
        return getattr(self.cfg, f"{role}_trainer")

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """One placement group per role (ranks packed), then one PPOTrainerRank actor per bundle."""
        from actors.placement import place_ranks

        for role in self.roles:
            r = self.group_cfg(role).resources

            def unplaceable(bundle, role=role, r=r):
                free = ray.available_resources()
                return WorkerLost(f"run error: the {role} trainer group's {r.num_ranks} x {bundle} could not be placed "
                                  f"within {PLACEMENT_TIMEOUT_S:.0f}s (free: {free.get('CPU', 0):g} CPU, "
                                  f"{free.get('GPU', 0):g} GPU); lower {role}_trainer.resources or add nodes")

            pg, self.ranks[role] = place_ranks(
                PPOTrainerRank, f"{role}-trainer", r.num_ranks, r.num_cpus_per_rank, r.num_gpus_per_rank,
                PLACEMENT_TIMEOUT_S, unplaceable,
                lambda rank, role=role, r=r: (role, self.cfg_dict, rank, r.num_ranks, r.torch_threads or 1,
                                              r.cpu_cores, r.nice))
            self.pgs.append(pg)

    def setup(self, resume_from: Optional[str], first_step: int = 0) -> None:
        """Every rank joins its group's world and builds model and optimiser; all groups at once."""
        from actors.rendezvous import new_secret

        refs = []
        for role in self.roles:
            meeting = (self.rendezvous, new_secret())
            refs += [rank.setup.remote(meeting, resume_from, first_step) for rank in self.ranks[role]]
        self.get(refs)

    # ------------------------------------------------------------------ work

    def train(self, buffer, items_per_step: int, step: int) -> dict[str, list]:
        self.step, self.t_train = step, time.perf_counter()
        refs = {role: [r.train_step.remote(buffer, items_per_step, step) for r in ranks]
                for role, ranks in self.ranks.items()}
        self.owner = {ref: f"{role}-trainer-{rank}" for role, role_refs in refs.items()
                      for rank, ref in enumerate(role_refs)}
        return refs

    def activity(self) -> dict[str, str]:
        """{rank name: its unfinished train_step}, for the watchdog's report."""
        age = time.perf_counter() - self.t_train
        return {name: f"train_step of step {self.step + 1}, sent {age:.0f}s ago"
                for ref, name in self.owner.items() if not ray.wait([ref], timeout=0)[0]}

    def save(self, path: str, final: bool) -> None:
        self.get([r.save_checkpoint.remote(path, final) for ranks in self.ranks.values() for r in ranks])

    # ------------------------------------------------------------------ failures

    def get(self, refs: list) -> list:
        """ray.get on trainer refs, failing fast; a dead rank ends the run with one line on how to resume."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                # The ref of a rank's own call: that rank is the dead one, no need to ask the others.
                raise self.lost(e, self.owner.get(done[0])) from None
            except ray.exceptions.RayTaskError as e:
                # A peer of a dead rank may fail first (its collective lost a member): name the dead one.
                if any(_is_dead(handle) for _, handle in self.names()):
                    raise self.lost(e) from None
                raise
        return ray.get(refs)

    def lost(self, err: BaseException, dead_rank: Optional[str] = None) -> TrainerLost:
        """TrainerLost naming `dead_rank` or, when unknown, every rank that no longer answers."""
        dead = [dead_rank] if dead_rank else [name for name, handle in self.names() if _is_dead(handle)]
        return TrainerLost(self.lost_message(err, dead), dead, self.step)

    def lost_message(self, err: BaseException, dead: list[str]) -> str:
        from coati_ray.utils.run_dir import latest_checkpoint

        dead = dead or ["a trainer rank"]
        ckpt = latest_checkpoint(self.cfg.output_dir)
        how = (f"resume with --resume (latest checkpoint: {ckpt})" if ckpt else
               "no checkpoint was saved yet (set algorithm.save_every), so rerun from the start")
        return (f"run error: {', '.join(dead)} died at step {self.step + 1} ({type(err).__name__}); a trainer group "
                f"cannot lose a rank, so the run stops; {how}")

    def names(self) -> Iterator[tuple[str, object]]:
        for role, ranks in self.ranks.items():
            for rank, handle in enumerate(ranks):
                yield f"{role}-trainer-{rank}", handle

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        # ipc's shared-memory files outlive the processes that made them: each rank unlinks its own first
        releases = [r.release_shared.remote() for ranks in self.ranks.values() for r in ranks]
        if releases:
            ray.wait(releases, num_returns=len(releases), timeout=5.0)
        for ranks in self.ranks.values():
            for r in ranks:
                ray.kill(r, no_restart=True)
        self.ranks.clear()
        for pg in self.pgs:
            remove_placement_group(pg)
        self.pgs.clear()
        if self._rendezvous is not None:
            ray.kill(self._rendezvous)
            self._rendezvous = None


def _is_dead(handle) -> bool:
    try:
        ray.get(handle.__ray_ready__.remote(), timeout=5)
        return False
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:  # alive but busy (e.g. blocked in a collective)
        return False
