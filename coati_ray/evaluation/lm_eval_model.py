"""A coati checkpoint as an lm-evaluation-harness model (`--model coati` once this module is imported).

lm-eval's own `hf` model renders chat prompts its own way (or not at all); ours renders them as the policy was
trained: the context becomes a user turn of the chat template the checkpoint carries (Coati's layout when it has
none, coati_ray.data.template.ChatFormat), the generation prompt follows, and the whole text is tokenized at
once, as SFT tokenized it. A continuation is scored as the reply the model would write: it starts with the space
a reply's first token carries (the template's `reply_lead`), whatever delimiter the task put before it. Answers
are generated with the training generator and stop at the template's end-of-turn token or the task's `until`.
`chat=False` scores and continues the raw text instead (a base model, a task written for one).

The model loads as launch.generate loads it (coati_ray.inference.Policy: LoRA adapters, int8/int4, hub ids
pinned), or wraps a Policy already in memory (the pipeline's evaluation after each stage).
"""

from __future__ import annotations

import json
from typing import Optional

import lm_eval.models  # noqa: F401  (lm-eval fills its registry lazily only while it is empty: fill it first)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


@register_model("coati")
class CoatiLM(LM):
    def __init__(self, pretrained: Optional[str] = None, lora: Optional[str] = None, quantize: str = "none",
                 revision: Optional[str] = None, chat_template: str = "auto", chat=True, batch_size=16,
                 max_length: Optional[int] = None, policy=None, **_ignored):
        super().__init__()
        if policy is None:
            from coati_ray.config import load_config
            from coati_ray.config.generate import GenerateConfig
            from coati_ray.inference import Policy

            overrides = [f"model={pretrained}", f"quantize={quantize}", f"chat_template={chat_template}"]
            overrides += [f"lora={lora}"] if lora else []
            overrides += [f"revision={revision}"] if revision else []
            cfg = load_config(GenerateConfig, None, overrides)
            cfg.validate()
            policy = Policy.load(cfg)
        from coati_ray.data.template import ChatFormat

        self.policy, self.tokenizer = policy, policy.tokenizer
        self.model, self.device_ = policy.actor.model, policy.device
        self.format = ChatFormat.of(self.tokenizer)
        self.chat = _flag(chat)
        self.batch_size = int(str(batch_size).split(":")[0]) if str(batch_size) != "auto" else 16
        config = getattr(self.model, "config", None)
        self.max_length = int(max_length or getattr(config, "max_position_embeddings", None)
                              or getattr(config, "n_positions", None) or 2048)
        self.name = pretrained or getattr(config, "_name_or_path", "coati")

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "coati")).replace("/", "__")

    # ------------------------------------------------------------------ text -> tokens

    def _prompt_text(self, context: str) -> str:
        """The text before the answer: the context as a user turn and the generation prompt (chat), or itself."""
        if not self.chat:
            return context
        return self.format.generation_prompt([{"role": "user", "content": context.rstrip()}])

    def _ids(self, text: str) -> list:
        if self.chat:  # the template writes BOS itself
            return self.format.ids(text)
        return self.tokenizer(text)["input_ids"] if text else []

    def _encode_pair(self, context: str, continuation: str) -> tuple[list, list]:
        """(context ids, continuation ids) of the whole text tokenized at once; a token that straddles the
        boundary belongs to the continuation."""
        prefix = self._prompt_text(context)
        reply = (self.format.probe.reply_lead + continuation.lstrip()) if self.chat else continuation
        text = prefix + reply
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=not self.chat, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            cut = next((k for k, (a, b) in enumerate(offsets) if b > len(prefix) and b > a), len(ids))
            return list(ids[:cut]), list(ids[cut:])
        return self._ids(prefix), self.format.ids(reply)

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list, list]]) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probs and whether it is the greedy one, per (context, continuation)."""
        out: list = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda k: -(len(pairs[k][0]) + len(pairs[k][1])))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            seqs = []
            for k in chunk:
                context, cont = pairs[k]
                seq = (context + cont)[-(self.max_length + 1):]
                seqs.append((seq[:-1], seq[1:], len(cont)))
            width = max(len(s[0]) for s in seqs)
            inputs = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, (inp, _, _) in enumerate(seqs):
                inputs[row, :len(inp)], mask[row, :len(inp)] = torch.tensor(inp), 1
            logp = torch.log_softmax(self.model(input_ids=inputs.to(self.device_),
                                                attention_mask=mask.to(self.device_)).logits.float(), -1).cpu()
            for row, (k, (inp, target, n)) in enumerate(zip(chunk, seqs)):
                span = logp[row, len(inp) - n:len(inp)]
                wanted = torch.tensor(target[-n:])
                total = float(span.gather(-1, wanted[:, None]).sum())
                out[k] = (total, bool((span.argmax(-1) == wanted).all()))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        empty = [k for k, (_, cont) in enumerate(pairs) if not cont]
        if empty:
            raise ValueError(f"request {empty[0]} has an empty continuation; lm-eval tasks score non-empty answers")
        return self._score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity tasks): raw text, in windows of the model's context."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else \
            (self.tokenizer.eos_token_id or 0)
        for req in requests:
            ids = self.tokenizer(req.args[0], add_special_tokens=False)["input_ids"]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=ids, prefix_token=bos, max_seq_len=self.max_length, context_len=1)]
            totals.append(sum(score for score, _ in self._score([(list(c), list(t)) for c, t in windows])))
        return totals

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from coati_ray.config.rl import GenerationConfig
        from coati_ray.data.datasets import collate_prompts
        from coati_ray.evaluation.policy import decode_responses

        out: list = [None] * len(requests)
        groups: dict = {}
        for k, req in enumerate(requests):  # requests that sample alike generate together
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(k)
        for key, members in groups.items():
            kwargs = dict(json.loads(key))
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0) or 0.0)
            sample = _flag(kwargs.get("do_sample", False)) and temperature > 0
            gen = GenerationConfig(max_new_tokens=int(kwargs.get("max_gen_toks", 256)), do_sample=sample,
                                   temperature=temperature if sample else 1.0,
                                   top_p=float(kwargs.get("top_p", 1.0) or 1.0), backend="compact")
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                items = []
                for k in chunk:
                    ids = self._ids(self._prompt_text(requests[k].args[0]))
                    items.append({"input_ids": ids[-max(1, self.max_length - gen.max_new_tokens):]})
                batch = collate_prompts(items, self.tokenizer.pad_token_id)
                ids, mask = batch["input_ids"].to(self.device_), batch["attention_mask"].to(self.device_)
                torch.manual_seed(start)
                seqs, _, action_mask = self.policy.actor.generate_with(gen, ids, mask, self.tokenizer)
                for k, text in zip(chunk, decode_responses(self.tokenizer, seqs[:, ids.size(1):], action_mask)):
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    out[k] = text
        return out
