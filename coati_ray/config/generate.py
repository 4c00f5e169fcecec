"""Configuration of `launch.generate`: which model, how to sample (PPO's keys), best of n."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from coati_ray.config.ppo import GenerationConfig
from coati_ray.config.checks import _fail, _require_dir, _require_model_dir
from coati_ray.config.schema import opt, required


@dataclass
class GenerateConfig:
    """Inference after training: a checkpoint (full, or a base + LoRA adapters), optionally 8/4-bit."""

    model: str = required("local Hugging Face model directory (a stage's checkpoints/final, or a LoRA base)")
    lora: Optional[str] = opt(None, "directory of LoRA adapters (peft layout, a step checkpoint's model/) on `model`")
    tokenizer_path: Optional[str] = opt(None, "tokenizer directory; defaults to lora's when it holds one, else model's")
    quantize: Literal["none", "int8", "int4"] = opt("none", "run the model's linear layers in 8-bit or 4-bit (nf4) "
                                                            "through bitsandbytes")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "parameter dtype when loading")
    trust_remote_code: bool = opt(False, "allow model code shipped inside the checkpoint directory")
    generation: GenerationConfig = opt(None, "sampling (the keys PPO's makers use)")
    batch_size: int = opt(16, "sequences generated at once")
    n: int = opt(1, "candidates per prompt; with reward_model, the best one is kept (best of n)")
    reward_model: Optional[str] = opt(None, "a reward model directory (the RM stage's checkpoints/final) that "
                                            "scores the n candidates")
    seed: int = opt(0, "sampling seed")

    def validate(self) -> None:
        _require_model_dir("model", self.model)
        if self.lora is not None:
            _require_dir("lora", self.lora)
        if self.reward_model is not None:
            _require_model_dir("reward_model", self.reward_model)
        self.generation.validate()
        if self.n < 1 or self.batch_size < 1:
            _fail("n", "n and batch_size must be >= 1", "e.g. n=4 batch_size=16")
        if self.n > 1 and not self.generation.do_sample:
            _fail("n", f"n={self.n} greedy answers would all be the same", "set generation.do_sample=true or n=1")
