"""DistillGym: kernels."""
