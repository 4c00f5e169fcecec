"""Typed configs: YAML + dotted overrides, validated before anything heavy happens."""

from coati_ray.config.loader import apply_override, describe, from_dict, load_config, save_config, to_dict
from coati_ray.config.schema import (
    CUDA_ONLY_STRATEGIES,
    STRATEGIES,
    DataConfig,
    JobConfig,
    ModelConfig,
    OptimizerConfig,
    ResourceConfig,
    RMConfig,
    SFTConfig,
    StrategyConfig,
    TrainerConfig,
)

__all__ = [
    "apply_override", "describe", "from_dict", "load_config", "save_config", "to_dict",
    "CUDA_ONLY_STRATEGIES", "STRATEGIES", "DataConfig", "JobConfig", "ModelConfig", "OptimizerConfig",
    "ResourceConfig", "RMConfig", "SFTConfig", "StrategyConfig", "TrainerConfig",
]
