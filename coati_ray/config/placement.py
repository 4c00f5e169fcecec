"""Placements (`placement`: where generation runs) and their checks, before Ray starts; how weights reach the
makers (`weight_sync.transport`) is checked here too, as it depends on the placement.

The two built-in placements are registered in coati_ray.seams' PLACEMENTS the way a placement of your own is
(`register_placement(Placement(...))`, or `placement: my_pkg.placements:SPEC`): the driver and these checks read
what a placement is from its Placement, never from its name.
"""

from __future__ import annotations

from coati_ray.config.checks import _fail
from coati_ray.seams import Placement, placement_of, register_placement


def _check_colocated(cfg) -> None:
    if cfg.maker.dtype not in ("auto", cfg.actor.dtype):
        _fail("maker.dtype", f"colocated: the actor group's ranks generate with the policy as it trains "
              f"({cfg.actor.dtype}), so maker.dtype={cfg.maker.dtype} would set the reference model's precision "
              "alone", "leave maker.dtype=auto under placement=colocated")
    if cfg.algorithm.filter_groups and cfg.estimator.needs_critic:
        _fail("algorithm.filter_groups", "colocated: the critic group adds values after the actor ranks sample, so "
              "groups cannot be filtered and refilled where they are made", "unset it, or placement=separate")
    for role in cfg.roles:
        strategy = getattr(cfg, f"{role}_trainer").strategy.name
        if strategy.startswith("colossalai_gemini"):
            _fail(f"{role}_trainer.strategy.name", "colocated generation under Gemini (parameters held in chunks, "
                  "to be gathered for generation and released after) is not built yet",
                  "use ddp or colossalai_zero2 with placement=colocated, or placement=separate")


SEPARATE = register_placement(Placement(
    "separate", "actors.experience_source:MakerSource", makers=True, supports_async=True))
COLOCATED = register_placement(Placement(
    "colocated", "actors.colocated:ColocatedSource", makers=False, trainers_generate=True, supports_async=False,
    check=_check_colocated))


def check_placement(cfg) -> None:
    """One line for a placement (or a weight transport) this RLConfig `cfg` cannot run."""
    spec = placement_of(cfg.placement)
    if cfg.weight_sync.transport == "ipc":
        if cfg.algorithm.mode != "sync":
            _fail("weight_sync.transport", "ipc maps the trainers' own tensors, which async mode updates while makers "
                  "load them", "use weight_sync.transport=auto (the collective or the object store) with algorithm.mode=async")
        gemini = [role for role in cfg.roles if getattr(cfg, f"{role}_trainer").strategy.name.startswith(
            "colossalai_gemini")]
        if gemini:
            _fail("weight_sync.transport", f"ipc maps rank 0's tensors, but the {gemini[0]} group's Gemini export is a "
                  "gather of every rank", "use weight_sync.transport=auto or object_store with Gemini")
    if cfg.colocated.offload_optimizer:
        if not spec.trainers_generate:
            _fail("colocated.offload_optimizer", f"frees the trainer ranks' GPU memory for generation, and with "
                  f"placement={cfg.placement} the makers generate elsewhere", "set placement=colocated, or remove "
                  "the key")
        cpu = [r for r in cfg.roles if getattr(cfg, f"{r}_trainer").strategy.name == "colossalai_zero2_cpu"]
        if cpu:
            _fail("colocated.offload_optimizer", f"the {cpu[0]} group's colossalai_zero2_cpu keeps its optimizer "
                  "state on the CPU already", "use colossalai_zero2 with the key, or remove it")
    if cfg.algorithm.mode != "sync" and not spec.supports_async:
        _fail("placement", f"{cfg.placement}: generation runs between the trainers' updates, so there is nothing to "
              "run ahead (algorithm.mode=async needs makers of their own)", "set algorithm.mode=sync, or placement=separate")
    if spec.check is not None:
        spec.check(cfg)
