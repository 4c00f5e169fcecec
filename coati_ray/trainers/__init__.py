"""Update loops the launchers and Ray actors call: SFT and RM now, PPO with the Ray stage."""
