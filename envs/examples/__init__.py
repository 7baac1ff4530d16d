"""Worked examples of third-party envs (shown in docs/envs.md and run by the tests)."""
