"""DistillGym: envs."""
