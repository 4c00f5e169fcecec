"""After training: load a policy (LoRA adapters, 8/4-bit base), render prompts with the model's chat
template, generate in batches with PPO's sampling keys, and keep the best of n by a reward model. No Ray.

    policy = Policy.load(cfg)                       # a GenerateConfig
    out = policy.generate(["sort: 3 1 2"], n=4)     # [[Candidate(response, score=None), ...]]
    out = policy.best_of_n(out, reward_model)       # scores filled, best first
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Candidate:
    response: str
    score: Optional[float] = None


def render_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of `prompt` (a user turn's text, or role messages) ready for generation, rendered with the
    chat template the tokenizer carries (the one the checkpoint trained with; Coati's when it has none),
    exactly as the training stages render prompts."""
    from coati_ray.data.template import ChatFormat

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return ChatFormat.of(tokenizer).prompt_ids(messages)


def _tokenizer_home(adapters: str | None) -> str | None:
    """The adapters' directory when our exports saved the tokenizer beside them (a fine-tune may add tokens);
    a bare PEFT directory falls back to the base model's tokenizer."""
    from pathlib import Path

    if adapters and any((Path(adapters) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return adapters
    return None


class Policy:
    def __init__(self, actor, tokenizer, gen, device: torch.device):
        self.actor, self.tokenizer, self.gen, self.device = actor, tokenizer, gen, device

    @classmethod
    def load(cls, cfg) -> "Policy":
        """The model of a GenerateConfig: `model` (quantized when asked), LoRA adapters from `lora`."""
        from coati_ray.models import Actor, load_tokenizer
        from coati_ray.models.dropout import disable_dropout

        from coati_ray.data.template import use_chat_template

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        actor = Actor.from_pretrained(cfg.local("model"), cfg.dtype, cfg.trust_remote_code, quantize=cfg.quantize)
        lora = cfg.local("lora")
        if lora:
            from peft import PeftModel

            actor.model = PeftModel.from_pretrained(actor.model, lora, is_trainable=False)
        disable_dropout(actor)
        if cfg.quantize == "none" or device.type == "cpu":
            actor.to(device)
        actor.eval().requires_grad_(False)
        tokenizer = load_tokenizer(cfg.local("tokenizer_path") or _tokenizer_home(lora) or cfg.local("model"),
                                   cfg.trust_remote_code)
        use_chat_template(tokenizer, cfg.chat_template)
        return cls(actor, tokenizer, cfg.generation, device)

    @torch.no_grad()
    def generate(self, prompts: list, n: int = 1, batch_size: int = 16, seed: int = 0,
                 streamer=None) -> list[list[Candidate]]:
        """n candidates per prompt (a user turn's text, or role messages), in batches of `batch_size`
        sequences (a prompt's n stay together)."""
        from coati_ray.data.datasets import collate_prompts
        from coati_ray.evaluation.policy import decode_responses

        items = [{"input_ids": render_prompt(self.tokenizer, p)} for p in prompts for _ in range(n)]
        out: list[Candidate] = []
        self._scored: list[tuple] = []  # (sequences, mask, action_mask) per batch, for best_of_n
        per = max(n, (batch_size // n) * n)
        for start in range(0, len(items), per):
            chunk = items[start:start + per]
            batch = collate_prompts(chunk, self.tokenizer.pad_token_id)
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            torch.manual_seed(seed * 1000003 + start)
            seqs, full_mask, action_mask = self.actor.generate_with(self.gen, ids, mask, self.tokenizer,
                                                                    streamer=streamer)
            out += [Candidate(r) for r in decode_responses(self.tokenizer, seqs[:, ids.size(1):], action_mask)]
            self._scored.append((seqs, full_mask))
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    @torch.no_grad()
    def best_of_n(self, candidates: list[list[Candidate]], reward_model) -> list[list[Candidate]]:
        """Score the candidates of the last `generate` with `reward_model` (the RM stage's checkpoint, on the
        same token sequences the policy produced) and sort each prompt's best first."""
        scores: list[float] = []
        for seqs, mask in self._scored:
            scores += reward_model(seqs.to(self.device), mask.to(self.device)).float().cpu().tolist()
        flat = [c for group in candidates for c in group]
        for c, s in zip(flat, scores):
            c.score = s
        return [sorted(group, key=lambda c: -c.score) for group in candidates]
