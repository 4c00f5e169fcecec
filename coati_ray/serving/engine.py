"""The batched decode behind the server: many requests' rows decoded together, each with its own sampling.

Requests that arrive together (Serve's request batching) ask for different things — temperature, top_p,
max_tokens, stop sequences, a seed — so one `generate` call with one sampler does not fit them. Here one decode
loop runs every row with its own: a row's temperature and top_p are applied to its own logits, a row draws from
its own seeded stream (so with a `seed` its answer does not depend on which requests shared its batch), and a
row ends at its own end-of-turn token, stop sequence or token budget. Finished rows leave the batch and the KV
cache where the family allows it (coati_ray/models/decode.py), as in training's `compact` backend.

`Engine.steps(rows)` yields one list per decode step with a `Step` (new text, finish reason) for each row that
produced something, which is what streaming sends; non-streaming requests join their row's steps.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from coati_ray.models.decode import MAX_SEED, can_compact, sample_rows, select_cache_rows


@dataclass
class Row:
    """One sequence to generate. `strip_lead`: drop the spaces a chat reply's first token carries."""

    prompt_ids: list
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple = ()
    strip_lead: bool = False
    logprobs: Optional[int] = None  # score the sequence, keeping this many alternatives per token
    echo: bool = False  # with logprobs: the prompt's tokens are scored too


@dataclass
class Step:
    """What one row got in one step: text to send (possibly empty), and when it ended, why and its scores."""

    text: str = ""
    finish_reason: Optional[str] = None  # "stop" (end-of-turn, EOS or a stop sequence) or "length"
    completion_tokens: int = 0
    scores: Optional[dict] = None  # completions' legacy logprobs object (rows that asked for it)


@dataclass
class _Text:
    """A row's text so far and what of it was sent: text is held back while it could still become a stop
    sequence or ends inside a multi-byte character."""

    row: Row
    ids: list = field(default_factory=list)
    sent: int = 0

    def advance(self, tokenizer, stop_ids: set, finished: bool) -> tuple[str, bool]:
        """(new text to send, whether a stop sequence ended the row)."""
        text = tokenizer.decode([t for t in self.ids if t not in stop_ids], skip_special_tokens=True)
        if self.row.strip_lead:
            text = text.lstrip()
        for stop in self.row.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                text = text[:at]
                break
        else:
            at = -1
        end = len(text)
        if at < 0 and not finished:
            if text.endswith("\ufffd"):
                end -= 1
            held = max((k for s in self.row.stop for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
            end -= held
        delta = text[self.sent:max(end, self.sent)]
        self.sent = max(end, self.sent)
        return delta, at >= 0


def _top_p_mask(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """probs (B, V), top_p (B,) -> probs with each row cut to its nucleus (the top token always kept)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
    cut = before >= top_p[:, None]
    cut[:, 0] = False
    return probs.masked_fill(cut.scatter(-1, order, cut), 0.0)


class Engine:
    """A loaded causal LM (a coati Policy's model), its tokenizer and the ids that end a reply."""

    def __init__(self, model, tokenizer, stop_ids: list, device: torch.device):
        from coati_ray.models.actor import forward_parameters

        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.stop_ids = list(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.stop_ids or [0])[0]
        self.compact = can_compact(model)
        self.pass_positions = "position_ids" in forward_parameters(model)

    @torch.no_grad()
    def steps(self, rows: list[Row]) -> Iterator[list[Optional[Step]]]:
        """Decode `rows` together; yields, per step, a Step for each row that produced one (None otherwise).
        Every row gets exactly one Step with a finish_reason, its last."""
        B = len(rows)
        texts = [_Text(r) for r in rows]
        stop_set = set(self.stop_ids)
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        generators = [torch.Generator().manual_seed(int(r.seed if r.seed is not None else secrets.randbelow(MAX_SEED))
                                                    % MAX_SEED) for r in rows]
        temperature = torch.tensor([r.temperature for r in rows], device=self.device)
        top_p = torch.tensor([r.top_p for r in rows], device=self.device)
        live = list(range(B))  # the rows still decoding, in batch order
        first = [self._finish(texts[i], "length") for i in live if rows[i].max_new_tokens == 0]
        live = [i for i in live if rows[i].max_new_tokens > 0]
        if first:
            yield self._emit(B, {i: s for i, s in zip([i for i in range(B) if rows[i].max_new_tokens == 0], first)})
        kwargs, cache, step_ids, t = {}, None, ids, 0
        keep_all = torch.arange(B, device=self.device)
        batch_rows = keep_all  # which original row each batch row is (compacting drops finished ones)
        if live and len(live) < B:
            batch_rows = torch.tensor(live, device=self.device)
            step_ids, mask = ids[batch_rows], mask[batch_rows]
        while live:
            if self.pass_positions:
                kwargs["position_ids"] = ((mask.cumsum(-1) - 1).masked_fill(mask == 0, 1) if cache is None
                                          else mask.sum(-1, keepdim=True) - 1)
            out = self.model(input_ids=step_ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                             return_dict=True, **kwargs)
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
            rows_now = batch_rows.tolist()
            next_ids = self._sample(logits, temperature[batch_rows], top_p[batch_rows],
                                    [generators[i] for i in rows_now], [rows[i].temperature == 0 for i in rows_now])
            t += 1
            events, done = {}, []
            for b, i in enumerate(rows_now):
                if i not in live:
                    continue  # a finished row kept in a batch that cannot drop it
                token = int(next_ids[b])
                texts[i].ids.append(token)
                ended_by_token, at_budget = token in stop_set, t >= rows[i].max_new_tokens
                delta, stopped = texts[i].advance(self.tokenizer, stop_set, ended_by_token or at_budget)
                reason = "stop" if ended_by_token or stopped else ("length" if at_budget else None)
                events[i] = self._finish(texts[i], reason, delta) if reason else Step(delta, None, len(texts[i].ids))
                if reason:
                    done.append(i)
            live = [i for i in live if i not in done]
            yield self._emit(B, events)
            if not live:
                break
            if done and self.compact:
                keep = torch.tensor([b for b, i in enumerate(rows_now) if i in live], device=self.device)
                cache = select_cache_rows(cache, keep)
                batch_rows, next_ids, mask = batch_rows[keep], next_ids[keep], mask[keep]
            step_ids = next_ids[:, None].to(torch.long)
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)

    def _sample(self, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, generators: list,
                greedy: list) -> torch.Tensor:
        """logits (B, V) -> (B,) ids: argmax for greedy rows, else each row's tempered nucleus, drawn from its
        own stream."""
        picked = logits.argmax(-1)
        if all(greedy):
            return picked
        probs = torch.softmax(logits / temperature.clamp(min=1e-6)[:, None], dim=-1)
        sampled = sample_rows(_top_p_mask(probs, top_p), generators)
        return torch.where(torch.tensor(greedy, device=logits.device), picked, sampled)

    def _finish(self, text: _Text, reason: str, delta: str = "") -> Step:
        scores = self.score(text.row, text.ids) if text.row.logprobs is not None else None
        return Step(delta, reason, len(text.ids), scores)

    @staticmethod
    def _emit(B: int, events: dict) -> list:
        return [events.get(i) for i in range(B)]

    @torch.no_grad()
    def score(self, row: Row, completion: list) -> dict:
        """OpenAI's legacy logprobs of the completion's tokens (the prompt's too with echo; the first token of
        a sequence has none): raw model log-probabilities, whatever the sampling temperature."""
        seq = list(row.prompt_ids) + list(completion)
        logp = torch.log_softmax(self.model(input_ids=torch.tensor([seq], device=self.device)).logits[0].float(), -1)
        start = 0 if row.echo else len(row.prompt_ids)
        tokens, token_logprobs, top, offsets, offset = [], [], [], [], 0
        for pos in range(start, len(seq)):
            piece = self.tokenizer.decode([seq[pos]])
            tokens.append(piece)
            offsets.append(offset)
            offset += len(piece)
            if pos == 0:
                token_logprobs.append(None)
                top.append(None)
                continue
            token_logprobs.append(float(logp[pos - 1, seq[pos]]))
            values, idx = logp[pos - 1].topk(max(1, row.logprobs))
            top.append({self.tokenizer.decode([int(j)]): float(v) for v, j in zip(values, idx)})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
