"""Actor, Critic and RewardModel over Hugging Face models, LoRA via peft, and the tiny-model kit."""

from coati_ray.models.actor import Actor, response_mask
from coati_ray.models.factory import build_actor, build_critic, build_reward_model, export_model
from coati_ray.models.loading import check_vocab, load_tokenizer
from coati_ray.models.lora import adapter_state_dict, apply_lora, is_lora, trainable_parameters
from coati_ray.models.value import Critic, RewardModel, ValueModel

__all__ = [
    "Actor", "response_mask", "build_actor", "build_critic", "build_reward_model", "export_model", "check_vocab",
    "load_tokenizer", "adapter_state_dict", "apply_lora", "is_lora", "trainable_parameters", "Critic",
    "RewardModel", "ValueModel",
]
