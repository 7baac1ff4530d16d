"""DistillGym: agents."""
