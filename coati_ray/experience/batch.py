"""The Experience batch: everything a PPO update needs, tagged with the policy version that made it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import torch


@dataclass
class Experience:
    """B samples of P prompt + A response tokens (T = P + A).

    sequences, attention_mask: (B, T); action_mask, action_log_probs, ref_log_probs, advantages,
    kl: (B, A) (action_log_probs and kl None when the trainer's first forward stands for the behaviour
    policy: RLConfig.trainer_log_probs_are_behaviour); values, returns: (B, A) only when the estimator
    uses a critic (else None); reward
    (the training reward, all sources weighted): (B,); group_index (B,): the prompt group of each sample
    (`group_indices`), so a filter or a group-relative estimator never has to infer groups from row order. `version` is the policy version that generated
    it; `maker` and `batch_id` name where it came from. A prompt's samples are consecutive rows.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    advantages: torch.Tensor
    reward: torch.Tensor
    action_log_probs: Optional[torch.Tensor] = None  # None: the trainer's first forward is the behaviour policy's
    kl: Optional[torch.Tensor] = None                # None when the maker computed no log-probs
    values: Optional[torch.Tensor] = None
    returns: Optional[torch.Tensor] = None
    ref_log_probs: Optional[torch.Tensor] = None
    behaviour_weights: Optional[torch.Tensor] = None  # set by the trainer (algorithm.behaviour_correction), never a maker
    group_index: Optional[torch.Tensor] = None  # (B,) long: each sample's prompt group, unique within the run
    version: int = 0
    maker: int = 0
    batch_id: int = 0
    info: dict = field(default_factory=dict)

    TENSORS = ("sequences", "attention_mask", "action_mask", "action_log_probs", "values", "returns",
               "advantages", "kl", "reward", "ref_log_probs", "behaviour_weights", "group_index")

    @property
    def num_samples(self) -> int:
        return int(self.sequences.size(0))

    @property
    def num_actions(self) -> int:
        return int(self.action_mask.size(1))

    def tensors(self) -> dict:
        """The tensor fields that are set (values/returns/ref_log_probs may be None)."""
        return {k: getattr(self, k) for k in self.TENSORS if getattr(self, k) is not None}

    def to(self, device) -> "Experience":
        return self._replace({k: v.to(device) for k, v in self.tensors().items()})

    def select(self, index) -> "Experience":
        """Rows `index` (a slice or index tensor) of every tensor."""
        return self._replace({k: v[index] for k, v in self.tensors().items()})

    def trimmed(self) -> "Experience":
        """The same samples without the columns that are padding in every row: prompt columns before the
        earliest first token (prompts are left-padded) and action columns after the latest last token
        (responses are right-padded); the kept actions are the first A' of the A, in every (B, A) tensor."""
        mask = self.attention_mask.bool()
        A = self.num_actions
        P = mask.size(1) - A
        used = mask.any(dim=0)
        start = int(used[:P].float().argmax()) if P and bool(used[:P].any()) else P
        end = int(used.nonzero().max()) + 1 if bool(used.any()) else P
        end = max(end, P + 1) if A else P  # at least one action column (a loss reads (B, A') tensors)
        if start == 0 and end == mask.size(1):
            return self
        kept = end - P
        out = {}
        for k, v in self.tensors().items():
            if k in ("sequences", "attention_mask"):
                out[k] = v[:, start:end]
            elif v.dim() == 2 and v.size(1) == A:
                out[k] = v[:, :kept]
            else:
                out[k] = v
        return self._replace(out)

    def shard(self, rank: int, world_size: int) -> "Experience":
        """Rank `rank`'s contiguous 1/world_size of the batch (B must divide evenly)."""
        B = self.num_samples
        if B % world_size:
            raise ValueError(f"{B} samples cannot be split evenly over {world_size} ranks")
        per = B // world_size
        return self.select(slice(rank * per, (rank + 1) * per))

    def _replace(self, tensors: dict) -> "Experience":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(tensors)
        return Experience(**values)


def group_indices(batch_id: int, num_samples: int, group_size: int) -> torch.Tensor:
    """(B,) long: the groups of maker batch `batch_id` (n consecutive samples per prompt), numbered
    batch_id * (B / n) + g so that no two batches share a number."""
    per_batch = num_samples // group_size
    return batch_id * per_batch + torch.arange(num_samples) // group_size


def concat(items: list[Experience]) -> Experience:
    """Stack experiences along the batch; pads (B, T) and (B, A) tensors to the widest batch.

    Sequences are left-padded prompts followed by right-padded responses: the prompt part is
    padded on the left and the response part on the right, so the last A columns stay the
    actions; the masks mark all padding as 0.
    """
    if len(items) == 1:
        return items[0]
    P = max(e.sequences.size(1) - e.num_actions for e in items)  # widest prompt part
    A = max(e.num_actions for e in items)                        # widest response part
    out = {}
    for k in items[0].tensors():
        parts = []
        for e in items:
            x = getattr(e, k)
            if k in ("sequences", "attention_mask"):
                p = e.sequences.size(1) - e.num_actions
                x = torch.nn.functional.pad(x, (P - p, A - e.num_actions), value=0)
            elif x.dim() == 2:
                x = torch.nn.functional.pad(x, (0, A - e.num_actions), value=0)
            parts.append(x)
        out[k] = torch.cat(parts)
    first = items[0]
    return Experience(**out, version=min(e.version for e in items), maker=first.maker, batch_id=first.batch_id,
                      info={"parts": [(e.maker, e.batch_id, e.version) for e in items]})
