"""DistillGym: trainers."""
