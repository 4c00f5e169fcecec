"""coati_ray: Ray-orchestrated RLHF (SFT -> reward model -> PPO) on ColossalAI strategies.

The package is Ray-free: everything here can be imported and tested in one process.
Ray actors live in `actors/`, entry points in `launch/`.
"""

__version__ = "0.1.0"
