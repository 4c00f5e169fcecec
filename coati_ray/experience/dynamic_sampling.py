"""DAPO's dynamic sampling (`algorithm.filter_groups`): groups whose samples all got the same reward carry no signal
for a group-relative estimator (every advantage is 0), so a maker drops them and samples more prompts until
its batch is full again.

The batch keeps its size, so the driver's tickets, the buffer's accounting and async staleness are untouched:
the driver sends each batch its prompts and `algorithm.max_sampling_rounds - 1` spare rounds of prompts (drawn from
the ticket alone, so a remade batch samples the same spares); the maker uses spare rounds only while kept
groups are short. After the last round a batch still short is filled with dropped groups (their advantages
are 0: they cost compute, not correctness) and `experience/flat_groups_kept` says how many.
"""

from __future__ import annotations

import torch

from coati_ray.experience.batch import Experience, concat, group_indices


def flat_groups(rewards: torch.Tensor, group_size: int, tolerance: float = 1e-6) -> torch.Tensor:
    """rewards: (G * group_size,), a group's samples consecutive -> (G,) True where a group's rewards are all
    equal (within `tolerance`)."""
    g = rewards.float().view(-1, group_size)
    return (g.max(dim=1).values - g.min(dim=1).values) <= tolerance


def group_rows(exp: Experience, group_size: int) -> list[torch.Tensor]:
    """The row indices of each prompt group of `exp`, in order of first appearance: read from
    `exp.group_index` when the batch carries it (any row order), else `group_size` consecutive rows."""
    if exp.group_index is None:
        return [torch.arange(g * group_size, (g + 1) * group_size) for g in range(exp.num_samples // group_size)]
    seen: dict[int, list[int]] = {}
    for row, g in enumerate(exp.group_index.tolist()):
        seen.setdefault(g, []).append(row)
    return [torch.tensor(rows) for rows in seen.values()]


def spare_prompts(items: list, prompts_per_batch: int, batch_id: int, rounds: int, seed: int) -> list:
    """`rounds` spare rounds of `prompts_per_batch` prompts each for batch `batch_id`, drawn (without repeats
    within a round) from the ticket and the seed alone."""
    out = []
    for r in range(1, rounds + 1):
        g = torch.Generator().manual_seed(seed * 104729 + batch_id * 131 + r)
        picks = torch.randperm(len(items), generator=g)[:prompts_per_batch].tolist()
        out += [items[i] for i in picks]
    return out


def make_filtered_experience(make, items: list, prompts_per_batch: int, group_size: int,
                             max_rounds: int) -> tuple[Experience, dict]:
    """`make(prompt_items) -> (Experience, stats)` over rounds of `prompts_per_batch` prompts from `items` (the
    batch's own, then its spares) until `prompts_per_batch` groups with signal are kept or `max_rounds` ran.
    Returns the batch (kept groups first, then flat ones to fill) and the first round's statistics with the
    timings and generated tokens of every round added, and the filter's own metrics."""
    kept, flat, stats, seen, dropped = [], [], {}, 0, 0
    rounds = 0
    for r in range(max_rounds):
        chunk = items[r * prompts_per_batch:(r + 1) * prompts_per_batch]
        if len(chunk) < prompts_per_batch:
            break
        exp, round_stats = make(chunk)
        rounds += 1
        if not stats:
            stats = dict(round_stats)
        else:
            for k, v in round_stats.items():
                if k.startswith("timing/") or k == "generated_tokens":
                    stats[k] = stats.get(k, 0.0) + v
        rows = group_rows(exp, group_size)
        is_flat = [bool(flat_groups(exp.reward[r], len(r))[0]) for r in rows]
        seen += len(is_flat)
        dropped += sum(is_flat)
        for r, f in zip(rows, is_flat):
            (flat if f else kept).append(exp.select(r))
        if len(kept) >= prompts_per_batch:
            break
    if not kept and not flat:
        raise ValueError(f"no prompts to sample: {len(items)} items for batches of {prompts_per_batch}")
    filled = max(0, prompts_per_batch - len(kept))
    groups = kept[:prompts_per_batch] + flat[:filled]
    first = groups[0]
    batch = concat(groups) if len(groups) > 1 else first
    batch.version, batch.maker, batch.batch_id, batch.info = first.version, first.maker, first.batch_id, {}
    batch.group_index = group_indices(first.batch_id, batch.num_samples, group_size)  # rounds reused numbers
    stats.update({"experience/dropped_groups": dropped / max(seen, 1), "experience/sampling_rounds": float(rounds),
                  "experience/flat_groups_kept": float(filled)})
    return batch, stats
