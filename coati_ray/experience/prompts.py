"""The driver's prompt stream: reshuffled every epoch, resumable from a position."""

from __future__ import annotations

import torch


class PromptStream:
    """Batches of prompt items in a seeded order; batch ids count batches since the run began."""

    def __init__(self, items: list[dict], batch_size: int, seed: int, position: int = 0):
        self.items, self.batch_size, self.seed, self.position = items, batch_size, seed, position

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(len(self.items), generator=g).tolist()

    def next_batch(self) -> tuple[list[dict], int]:
        """(items, batch_id); every item is used once per epoch before any repeats."""
        batch_id = self.position
        out = []
        for j in range(self.batch_size):
            flat = batch_id * self.batch_size + j
            epoch, offset = divmod(flat, len(self.items))
            out.append(self.items[self._order(epoch)[offset]])
        self.position += 1
        return out, batch_id


def read_prompt_data(d, tokenizer) -> tuple[list[dict], object, list[dict]]:
    """Read and check every PPO data file of a PromptDataConfig `d` (a bad row stops here, before Ray).

    Returns (training prompt items, their LoadReport, held-out prompt items or []).
    """
    from coati_ray.data.datasets import build_prompt_dataset, build_sft_dataset

    prompts, report = build_prompt_dataset(d.prompt_path, tokenizer, d.max_prompt_length, d.format, d.max_samples,
                                           d.on_bad_row)
    if d.ptx_path:
        build_sft_dataset(d.ptx_path, tokenizer, d.ptx_max_length, "auto", None, d.on_bad_row)
    eval_items: list[dict] = []
    if d.eval_prompt_path:
        eval_items, _ = build_prompt_dataset(d.eval_prompt_path, tokenizer, d.max_prompt_length, d.format,
                                             d.eval_max_samples, d.on_bad_row)
    return prompts, report, eval_items
