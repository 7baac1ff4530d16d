"""A gradient-free EMA (or frozen) copy of the student, used as a teacher by OPSD and TT-OPD.

    theta_T <- decay * theta_T + (1 - decay) * theta_S          (update, e.g. decay 0.995)
    theta_T <- theta_S                                          (hard_copy)

The teacher is just a model (``EMATeacher.model``): score with it like any other teacher.
"""

from __future__ import annotations

import copy

import torch

__all__ = ["EMATeacher", "ema_update_"]


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], decay: float) -> None:
    """In place: ``t <- decay * t + (1 - decay) * s`` for each pair (same shapes)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    floats = [(t, s) for t, s in zip(teacher, student) if t.is_floating_point()]
    if floats:
        torch._foreach_lerp_([t for t, _ in floats], [s.to(t.dtype) for t, s in floats], 1.0 - decay)
    for t, s in zip(teacher, student):
        if not t.is_floating_point():
            t.copy_(s)


class EMATeacher:
    """A frozen deep copy of ``model`` that follows the student by EMA (no gradients ever).

    With ``decay=1.0`` it stays frozen (a fixed reference teacher) until :meth:`hard_copy`.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.995) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.model.requires_grad_(False)
        self.updates = 0

    def _pairs(self, student: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # named_parameters() lists a tied tensor once (a tied lm_head must not move twice)
        mine = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        theirs = {**dict(student.named_parameters()), **dict(student.named_buffers())}
        if mine.keys() != theirs.keys():
            missing = sorted(set(mine) ^ set(theirs))[:5]
            raise ValueError(f"student and teacher differ in parameter names, e.g. {missing}")
        names = list(mine)
        return [mine[n].data for n in names], [theirs[n].data for n in names]

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """One EMA step towards ``student``'s current weights."""
        teacher, current = self._pairs(student)
        ema_update_(teacher, current, self.decay)
        self.updates += 1

    @torch.no_grad()
    def hard_copy(self, student: torch.nn.Module) -> None:
        """Set the teacher's weights to the student's."""
        teacher, current = self._pairs(student)
        for t, s in zip(teacher, current):
            t.copy_(s)
