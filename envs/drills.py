"""Drills: one-turn envs small enough to show, cheaply and honestly, that training learns.

They are the training loop's "CartPole": a policy that improves must raise their reward within a
few minutes of CPU, so a learning check that fails points at the trainer, not at the task.

* ``DistillGym/Vowels-v0`` (task type ``vowels``): reply with letters that are vowels. The reward
  is shaped, ``r = #vowel letters / max(#letters, 4)`` in ``[0, 1]``, so even a random-initialised
  model over a 49k-token vocabulary sees signal from its first step (a random reply scores about
  0.3); won when ``r = 1``. The expert replies ``aeiou``. Used by the CI learning check with the
  ``tiny`` model (``tests/test_learning.py``).
* ``DistillGym/Sum-v0`` (task types ``no_carry`` / ``carry``): "What is a + b?", reward 1 when the
  first integer of the reply is the sum. ``difficulty`` is the number of digits of each operand
  (default 2). Short (one turn, a handful of tokens), so hundreds of evaluation episodes of the
  bundled 135M model cost a minute; used by ``bench/learn.py``.

Both speak for themselves to the model (``system_prompt`` and ``parse_action``), like
``envs.examples.guess_number``. Tasks are seeded by task id, so the ``train``, ``valid_seen`` and
``valid_unseen`` tasks are distinct problems drawn from one distribution.
"""

from __future__ import annotations

import re

import numpy as np

from envs.base import InvalidOptionError, Privileged, StepOutcome, TextEnv

__all__ = ["VowelsEnv", "SumEnv", "vowel_reward", "ENV_IDS", "register"]

ENV_IDS = ("DistillGym/Vowels-v0", "DistillGym/Sum-v0")

_VOWELS = frozenset("aeiouAEIOU")
_INT = re.compile(r"-?\d{1,18}")  # bounded: a 4,000-digit reply must not reach int()


def vowel_reward(reply: str) -> float:
    """``#vowel letters / max(#letters, 4)``: 1 for ``aeiou``, partial credit on the way there."""
    letters = [c for c in reply if c.isascii() and c.isalpha()]
    return sum(c in _VOWELS for c in letters) / max(len(letters), 4)


class VowelsEnv(TextEnv):
    """One turn: reply with vowels (shaped reward, see the module docstring)."""

    family = "drill"
    system_prompt = "Reply with a short word made only of vowels, such as aeiou."
    max_episode_steps = 1

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: object) -> str:
        self.reward = 0.0
        return "Your word:"

    def _act(self, action: str) -> StepOutcome:
        self.reward = vowel_reward(action)
        won = self.reward >= 1.0
        return StepOutcome("Done.", reward=self.reward, terminated=True, won=won,
                           reward_breakdown={"vowel_fraction": self.reward})

    @staticmethod
    def parse_action(reply: str) -> str | None:
        return reply

    @property
    def task_type(self) -> str:
        return "vowels"

    @property
    def instructions(self) -> str:
        return "Reply with letters that are vowels (a, e, i, o, u); consonants lower the reward."

    def expert_action(self) -> str:
        return "aeiou"

    def _privileged(self) -> Privileged:
        return Privileged(answer="aeiou", next_action="aeiou", plan=["aeiou"],
                          hint="Use only the letters a, e, i, o, u.",
                          hints={"reinforcing": "Only vowels.", "corrective": "No consonants."})


class SumEnv(TextEnv):
    """One turn: add two ``difficulty``-digit numbers."""

    family = "drill"
    invalid_feedback = "No number found."
    system_prompt = "You are a calculator. Answer with the number only."
    default_difficulty = 2
    max_episode_steps = 1

    def _validate_difficulty(self, difficulty: object) -> int:
        if not isinstance(difficulty, int) or not 1 <= difficulty <= 6:
            raise InvalidOptionError(f"Sum-v0 difficulty must be an int in 1..6 (digits), got {difficulty!r}")
        return difficulty

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: int) -> str:
        lo, hi = 10 ** (difficulty - 1) if difficulty > 1 else 0, 10**difficulty
        self.a, self.b = (int(x) for x in rng.integers(lo, hi, size=2))
        return f"What is {self.a} + {self.b}?"

    @property
    def answer(self) -> int:
        return self.a + self.b

    def _act(self, action: str) -> StepOutcome:
        m = _INT.search(action)
        if m is None:
            return StepOutcome(self.invalid_feedback, valid=False)  # the 1-step horizon ends it
        won = int(m.group()) == self.answer
        return StepOutcome("Correct." if won else f"Wrong: {self.answer}.", reward=float(won),
                           terminated=True, won=won, reward_breakdown={"success": float(won)})

    @staticmethod
    def parse_action(reply: str) -> str | None:
        m = _INT.search(reply)
        return m.group() if m else None

    @property
    def instructions(self) -> str:
        return "Reply with the sum as a whole number; the first number in the reply is read."

    @property
    def task_type(self) -> str:
        digits_a, digits_b = str(self.a)[::-1], str(self.b)[::-1]
        carry = any(int(x) + int(y) >= 10 for x, y in zip(digits_a, digits_b))
        return "carry" if carry else "no_carry"

    def expert_action(self) -> str:
        return str(self.answer)

    def _privileged(self) -> Privileged:
        return Privileged(answer=str(self.answer), next_action=str(self.answer), plan=[str(self.answer)],
                          hint=f"The last digit is {self.answer % 10}.",
                          hints={"reinforcing": "Add digit by digit.", "corrective": "Carry the tens."})


def register() -> None:
    """Register the drill env ids (idempotent)."""
    from envs.registry import register_env

    register_env("DistillGym/Vowels-v0", "envs.drills:VowelsEnv", max_episode_steps=1)
    register_env("DistillGym/Sum-v0", "envs.drills:SumEnv", max_episode_steps=1)
