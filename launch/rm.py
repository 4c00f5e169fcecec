"""Stage 2, reward model: python -m launch.rm --config configs/rm_tiny.yaml [overrides]."""

import sys

from coati_ray.config import RMConfig
from coati_ray.trainers.rm import RMTrainer, run_rm
from launch.common import run_supervised_stage


def main(argv=None) -> int:
    return run_supervised_stage("rm", RMConfig, run_rm, RMTrainer, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
