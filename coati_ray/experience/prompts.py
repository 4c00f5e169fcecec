"""The driver's prompt stream: reshuffled every epoch, resumable from a position."""

from __future__ import annotations

import torch


class PromptStream:
    """Batches of prompt items in a seeded order, addressed by batch id: batch `b` holds the items at
    positions b*batch_size ... of the run's stream, where every epoch is a fresh permutation of all
    prompts. A batch can be made again from its id alone (a maker died, or a run resumed), and the
    order of each epoch is computed once."""

    def __init__(self, items: list[dict], batch_size: int, seed: int, position: int = 0, spare_rounds: int = 0):
        """`spare_rounds`: each batch also carries that many rounds of spare prompts (algorithm.filter_groups), drawn
        from the batch id alone and never advancing the stream."""
        self.items, self.batch_size, self.seed, self.position = items, batch_size, seed, position
        self.spare_rounds = spare_rounds
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # a run moves forward: keep the current epochs only
                self._orders.pop(min(self._orders))
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._orders[epoch] = torch.randperm(len(self.items), generator=g).tolist()
        return self._orders[epoch]

    def batch(self, batch_id: int) -> list[dict]:
        """The items of batch `batch_id`; every item is used once per epoch before any repeats."""
        out = []
        for j in range(self.batch_size):
            epoch, offset = divmod(batch_id * self.batch_size + j, len(self.items))
            out.append(self.items[self._order(epoch)[offset]])
        if self.spare_rounds:
            from coati_ray.experience.dynamic_sampling import spare_prompts

            out += spare_prompts(self.items, self.batch_size, batch_id, self.spare_rounds, self.seed)
        return out

    def next_batch(self) -> tuple[list[dict], int]:
        """(items, batch_id) of the next batch id."""
        batch_id = self.position
        self.position += 1
        return self.batch(batch_id), batch_id


def read_prompt_data(d, tokenizer) -> tuple[list[dict], object, list[dict]]:
    """Read and check every PPO data file of a PromptDataConfig `d` (a bad row stops here, before Ray).

    Returns (training prompt items, their LoadReport, held-out prompt items or []).
    """
    from coati_ray.data.datasets import build_prompt_dataset, build_sft_dataset

    prompts, report = build_prompt_dataset(d.prompt_path, tokenizer, d.max_prompt_length, d.format, d.max_samples,
                                           d.on_bad_row, source=d.source("train"))
    if d.ptx_path:
        build_sft_dataset(d.ptx_path, tokenizer, d.ptx_max_length, "auto", None, d.on_bad_row, source=d.source("ptx"))
    eval_items: list[dict] = []
    if d.eval_prompt_path:
        eval_items, _ = build_prompt_dataset(d.eval_prompt_path, tokenizer, d.max_prompt_length, d.format,
                                             d.eval_max_samples, d.on_bad_row, source=d.source("eval"))
    return prompts, report, eval_items
