"""Configuration of `launch.generate`: which model, how to sample (PPO's keys), best of n."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.rl import GenerationConfig
from coati_ray.config.checks import _fail, _require_dir, _require_model_dir, check_chat_template
from coati_ray.config.schema import opt, required


@dataclass
class GenerateConfig:
    """Inference after training: a checkpoint (full, or a base + LoRA adapters), optionally 8/4-bit."""

    model: str = required("Hugging Face model directory (a stage's checkpoints/final, or a LoRA base) or hub id")
    revision: Optional[str] = opt(None, "hub revision of `model` (branch, tag or commit); pinned to its commit")
    lora: Optional[str] = opt(None, "LoRA adapters (peft layout, a step checkpoint's model/) on `model`: a directory "
                                    "or hub id")
    lora_revision: Optional[str] = opt(None, "hub revision of `lora`")
    tokenizer_path: Optional[str] = opt(None, "tokenizer directory or hub id; defaults to lora's when it holds one, "
                                              "else model's")
    tokenizer_revision: Optional[str] = opt(None, "hub revision of `tokenizer_path`")
    chat_template: str = opt("auto", "how prompts become text: auto (the template the checkpoint trained with, "
                                     "else Coati's), coati, or a .jinja file")
    quantize: Literal["none", "int8", "int4"] = opt("none", "run the model's linear layers in 8-bit or 4-bit (nf4) "
                                                            "through bitsandbytes")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "parameter dtype when loading")
    trust_remote_code: bool = opt(False, "allow model code shipped inside the checkpoint directory")
    generation: GenerationConfig = opt(None, "sampling (the keys PPO's makers use)")
    batch_size: int = opt(16, "sequences generated at once")
    n: int = opt(1, "candidates per prompt; with reward_model, the best one is kept (best of n)")
    reward_model: Optional[str] = opt(None, "a reward model (the RM stage's checkpoints/final, or a hub id) that "
                                            "scores the n candidates")
    reward_model_revision: Optional[str] = opt(None, "hub revision of `reward_model`")
    seed: int = opt(0, "sampling seed")

    def local(self, key: str) -> Optional[str]:
        """The directory `key` (model, lora, tokenizer_path, reward_model) loads from on this machine."""
        from coati_ray.models.hub import local_dir

        path = getattr(self, key)
        revision = getattr(self, "revision" if key == "model" else key.replace("_path", "") + "_revision")
        return None if path is None else local_dir(path, revision, key)

    def validate(self) -> None:
        from coati_ray.models.hub import pin

        for key in ("model", "lora", "tokenizer_path", "reward_model"):
            if getattr(self, key) is not None:
                field = "revision" if key == "model" else key.replace("_path", "") + "_revision"
                setattr(self, field, pin(getattr(self, key), getattr(self, field), key).commit or getattr(self, field))
        _require_model_dir("model", self.local("model"))
        if self.lora is not None:
            _require_dir("lora", self.local("lora"))
        if self.tokenizer_path is not None:
            _require_dir("tokenizer_path", self.local("tokenizer_path"))
        if self.reward_model is not None:
            from coati_ray.config.checks import model_config

            _require_model_dir("reward_model", self.local("reward_model"))
            ours = model_config("model", self.local("model")).get("vocab_size")
            theirs = model_config("reward_model", self.local("reward_model")).get("vocab_size")
            if ours and theirs and ours != theirs:
                _fail("reward_model", f"'{self.reward_model}' has a vocabulary of {theirs} but the policy's has {ours}, "
                      "so it would score other tokens than the policy wrote", "use the reward model trained from the "
                      "policy's base model and tokenizer")
        check_chat_template(self.chat_template, "chat_template")
        self.generation.validate()
        if self.n < 1 or self.batch_size < 1:
            _fail("n", "n and batch_size must be >= 1", "e.g. n=4 batch_size=16")
        if self.n > 1 and not self.generation.do_sample:
            _fail("n", f"n={self.n} greedy answers would all be the same", "set generation.do_sample=true or n=1")
