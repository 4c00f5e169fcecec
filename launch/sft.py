"""Stage 1, supervised fine-tuning: python -m launch.sft --config configs/sft_tiny.yaml [overrides]."""

import sys

from coati_ray.config import SFTConfig
from coati_ray.trainers.sft import SFTTrainer, run_sft
from launch.common import run_supervised_stage


def main(argv=None) -> int:
    return run_supervised_stage("sft", SFTConfig, run_sft, SFTTrainer, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
