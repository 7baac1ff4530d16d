"""GRPO: group-relative advantages in the clipped surrogate (spec section 7).

``A_i = (R_i − mean_G R) / (std_G R + 1e-6)`` per episode, broadcast to its assistant tokens;
loss ``−min(r_t A, clip(r_t, 1−ε_lo, 1+ε_hi) A)`` aggregated by ``loss_agg``, plus an optional
``kl_coef``·k3 KL to the initial policy. All of it is the ``Method`` base class's default.
"""

from __future__ import annotations

from trainers.methods import register_method
from trainers.methods.base import Method
from trainers.train_config import TrainConfig

__all__ = ["GRPO"]


@register_method("grpo")
class GRPO(Method):
    """Group Relative Policy Optimization on the env's task reward."""

    config_cls = TrainConfig
    description = "GRPO: group-relative advantages, clipped surrogate, optional KL to reference"
