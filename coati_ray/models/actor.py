"""Actor: any Hugging Face causal LM, with the three things RLHF asks of it."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from coati_ray.algo.functional import action_log_probs


class Actor(nn.Module):
    """A policy over tokens. Wraps `AutoModelForCausalLM` (gpt2, opt, bloom, llama, qwen2, ...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.pack_sequences = False  # padding-free forward (coati_ray/models/packing.py), set by a trainer

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", trust_remote_code: bool = False,
                        quantize: str = "none") -> "Actor":
        from coati_ray.models.loading import load_causal_lm

        return cls(load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code, quantize=quantize))

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                keep_packed: bool = False, shared_prompt: Optional[tuple] = None) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> logits (B, T, V).

        `shared_prompt` (P, runs), runs (R,) from models.shared_prompt.prompt_runs: each run of rows that share
        their first P columns runs them once; the logits are then those of positions P-1 .. T-1 only,
        (B, T - P + 1, V), which is all `action_log_probs` reads of an answer of T - P tokens.

        Position ids follow the attention mask so left-padded prompts see positions 0, 1, ...
        from their first real token, as they did during generation. With `pack_sequences` the real tokens
        run as one packed row (coati_ray/models/packing.py): the same logits, without the padding's cost;
        `keep_packed` returns them as the pack's (1, L, V), for a loss that reads them in that order.
        """
        if shared_prompt is not None and attention_mask is not None:
            from coati_ray.models.shared_prompt import shared_prompt_logits

            return shared_prompt_logits(self.model, input_ids, attention_mask, *shared_prompt)
        if self.pack_sequences and attention_mask is not None:
            from coati_ray.models.packing import packed_call, unpack

            dtype = self.model.get_input_embeddings().weight.dtype  # the activations' (a 4-bit base packs uint8)
            packed, kwargs = packed_call(self.model, input_ids, attention_mask, dtype, use_cache=False)
            logits = self.model(**kwargs).logits
            return logits if keep_packed else unpack(logits, packed)  # (1, L, V) -> (B, T, V), zeros at the padding
        kwargs = {}
        if attention_mask is not None and "position_ids" in forward_parameters(self.model):
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = position_ids
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits

    def log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_actions: int,
                  temperature: float = 1.0, share_prompts: bool = False) -> torch.Tensor:
        """Log-probs of the last `num_actions` tokens under the tempered policy: (B, T) -> (B, A).
        `share_prompts`: neighbouring rows with the same prompt run it once (models/shared_prompt.py)."""
        return action_log_probs(self(input_ids, attention_mask, **self.prompt_sharing(input_ids, attention_mask,
                                                                                      num_actions, share_prompts)),
                                input_ids, num_actions, temperature)

    def prompt_sharing(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_actions: int,
                       share: bool = True) -> dict:
        """{"shared_prompt": (P, runs)} for `forward` when neighbouring rows share their prompt (P = T - A) and
        this model can run answers on a shared prompt's cache (not packed); {} otherwise."""
        from coati_ray.models.shared_prompt import can_share, prompt_runs

        if not share or self.pack_sequences or not can_share(self.model):
            return {}
        prompt_length = input_ids.size(1) - num_actions
        runs = prompt_runs(input_ids, attention_mask, prompt_length)
        return {} if runs is None else {"shared_prompt": (prompt_length, runs)}

    def eos_token_ids(self, tokenizer=None) -> list[int]:
        """Every id that ends a response: the end-of-turn token of the chat template the tokenizer carries
        (llama-3's `<|eot_id|>`, ChatML's `<|im_end|>`), the tokenizer's EOS and all of the generation
        config's (chat models list several)."""
        ids: list[int] = []
        gen = getattr(self.model, "generation_config", None)
        turn = None
        if tokenizer is not None and hasattr(tokenizer, "apply_chat_template"):
            from coati_ray.data.template import ChatFormat

            turn = ChatFormat.of(tokenizer).stop_token_ids
        for source in (turn, getattr(tokenizer, "eos_token_id", None), getattr(gen, "eos_token_id", None)):
            for i in source if isinstance(source, (list, tuple)) else [source]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        return ids

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer=None, *,
                 max_new_tokens: int = 32, do_sample: bool = True, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id=None, pad_token_id: Optional[int] = None,
                 streamer=None, compact: bool = True, row_seeds: Optional[list[int]] = None,
                 hf_options: Optional[dict] = None, sampler_log_probs: bool = False) -> tuple:
        """Sample continuations of left-padded prompts (B, P).

        `compact` (default) decodes with coati_ray.models.decode: finished rows leave the batch, each row
        samples from its own stream (`row_seeds`, default drawn from torch's generator); greedy output is
        `generate`'s token for token. A `streamer`, a family outside decode.COMPACTABLE or a checkpoint whose
        generation config adds processors go through Hugging Face's `generate`, with `hf_options` (e.g.
        cache_implementation='static') passed to it.

        Returns (sequences (B, P + A), attention_mask (B, P + A), action_mask (B, A)) where A is the
        longest response in the batch; tokens after a sequence's EOS are padding with mask 0
        (the EOS itself is an action and is kept). `eos_token_id` (an id or a list) defaults to
        every EOS id of the tokenizer and the generation config. `sampler_log_probs` adds a fourth item where
        the compact loop runs, {"log_probs": (B, A)}: the behaviour log-probs read from the sampler's logits
        (decode.generate_compacting); Hugging Face's `generate` path returns three items as before.
        """
        if eos_token_id is None:
            eos_token_id = self.eos_token_ids(tokenizer) or None
        if tokenizer is not None and pad_token_id is None:
            pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            first = eos_token_id[0] if isinstance(eos_token_id, list) else eos_token_id
            pad_token_id = first if first is not None else 0
        from coati_ray.models.decode import can_compact, generate_compacting

        if compact and streamer is None and not hf_options and can_compact(self.model):
            eos_ids = eos_token_id if isinstance(eos_token_id, (list, tuple)) else \
                ([] if eos_token_id is None else [eos_token_id])
            out = generate_compacting(
                self.model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                pad_token_id=pad_token_id, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                row_seeds=row_seeds, pass_positions="position_ids" in forward_parameters(self.model),
                return_log_probs=sampler_log_probs)
            if not sampler_log_probs:
                return self._masks(out, input_ids, attention_mask, eos_token_id)
            sequences, log_probs = out
            sequences, full_mask, action_mask = self._masks(sequences, input_ids, attention_mask, eos_token_id)
            return sequences, full_mask, action_mask, {"log_probs": log_probs * action_mask}
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_token_id,
                      eos_token_id=eos_token_id)
        if do_sample:
            kwargs.update(temperature=temperature, top_k=top_k if top_k > 0 else None, top_p=top_p)
        if streamer is not None:  # e.g. transformers.TextStreamer: tokens printed as they come
            kwargs["streamer"] = streamer
        kwargs.update(hf_options or {})
        sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._masks(sequences, input_ids, attention_mask, eos_token_id)

    def generate_with(self, gen, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer=None,
                      sampler_log_probs: bool = False, **extra) -> "Generated":
        """Generate with a GenerationConfig `gen` taken whole, through its backend (`gen.backend`:
        coati_ray/models/generators.py), as the maker, the evaluation and the CLI do: (sequences, attention_mask,
        action_mask), whose `max_new_tokens` is the longest response the backend allowed (a backend may say it
        ran with fewer than gen.max_new_tokens by returning a fourth item, {"max_new_tokens": N}) and whose
        `log_probs` (B, A) are the sampler's own behaviour log-probs when asked for (`sampler_log_probs`) and the
        backend gives them (one that can takes a `sampler_log_probs` argument and returns {"log_probs": ...}
        in that fourth item), else None."""
        import inspect

        from coati_ray.models.generators import generator

        fn = generator(gen.backend)
        try:
            takes = "sampler_log_probs" in inspect.signature(fn).parameters
        except (TypeError, ValueError):  # a callable without a signature: it cannot be asked
            takes = False
        if sampler_log_probs and takes:
            extra["sampler_log_probs"] = True
        out = fn(self, gen, input_ids, attention_mask, tokenizer, **extra)
        limit, log_probs = gen.max_new_tokens, None
        if len(out) == 4:
            out, info = out[:3], out[3] or {}
            limit = min(limit, int(info.get("max_new_tokens", limit)))
            log_probs = info.get("log_probs") if sampler_log_probs else None  # only when asked for
        return Generated(*out, max_new_tokens=limit, log_probs=log_probs)

    @staticmethod
    def _masks(sequences, input_ids, attention_mask, eos_token_id):
        prompt_len = input_ids.size(1)
        actions = sequences[:, prompt_len:]
        action_mask = response_mask(actions, eos_token_id)
        full_mask = torch.cat([attention_mask.to(action_mask.dtype), action_mask], dim=1)
        return sequences, full_mask, action_mask


def response_mask(actions: torch.Tensor, eos_token_id) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it. actions: (B, A) -> (B, A) long.

    `eos_token_id`: one id, a list of ids (any of them ends the response) or None (no EOS)."""
    if eos_token_id is None or eos_token_id == []:
        return torch.ones_like(actions)
    ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id],
                          device=actions.device)
    is_eos = torch.isin(actions, ids).long()
    # Number of EOS strictly before each position; valid while that count is 0.
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


def forward_parameters(model: nn.Module) -> set:
    """The argument names of a Hugging Face model's forward, seen through a peft wrapper or a ColossalAI
    one (the 3d strategy boosts the transformer itself, whose wrapper's forward takes *args, **kwargs)."""
    import inspect

    while hasattr(model, "unwrap") and callable(model.unwrap) and model.unwrap() is not model:
        model = model.unwrap()
    base = getattr(model, "get_base_model", lambda: model)()
    return set(inspect.signature(base.forward).parameters)


class Generated(tuple):
    """(sequences, attention_mask, action_mask) of a generation, the longest response the backend allowed and,
    when the backend kept them, the sampler's behaviour log-probs (B, A)."""

    max_new_tokens: int
    log_probs: Optional[torch.Tensor]

    def __new__(cls, sequences, attention_mask, action_mask, max_new_tokens: int,
                log_probs: Optional[torch.Tensor] = None):
        out = super().__new__(cls, (sequences, attention_mask, action_mask))
        out.max_new_tokens, out.log_probs = max_new_tokens, log_probs
        return out
