"""DistillGym: data."""
