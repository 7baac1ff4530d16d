"""GuessNumber: the smallest complete DistillGym env (the worked example of docs/envs.md).

The env picks a secret number; the agent answers ``guess N`` and hears ``Too low.``,
``Too high.`` or ``Correct!``. Everything else (spaces, seeding, task ids, info keys, bad input,
render, the privileged channel) comes from :class:`envs.TextEnv`.

It speaks for itself to the agents: ``system_prompt`` is the whole system message the model sees
(instead of a built-in family's) and ``parse_action`` reads the action out of a model's reply
(instead of the family's parser). Both are optional; without them an env of an unknown family gets a
generic prompt and its replies are used as free text.
"""

from __future__ import annotations

import re

import numpy as np

import envs

__all__ = ["GuessNumberEnv", "register"]

_GUESS = re.compile(r"^\s*guess\s+(-?\d{1,6})\s*\.?\s*$", re.IGNORECASE)
_IN_REPLY = re.compile(r"\bguess\s*:?\s*(-?\d{1,6})\b", re.IGNORECASE)


class GuessNumberEnv(envs.TextEnv):
    """Guess a secret number in ``1..high``; ``difficulty`` is ``high`` (default 20)."""

    family = "guess_number"
    system_prompt = (
        "You are playing a number-guessing game. Each turn, reply with exactly one command: "
        "guess N, where N is a whole number. The game answers Too low., Too high. or Correct!"
    )
    default_difficulty = 20
    max_episode_steps = 10  # used when registered through an entry point

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: int) -> str:
        self.high = int(difficulty)
        self.secret = int(rng.integers(1, self.high + 1))
        self.low_bound, self.high_bound = 1, self.high  # what the guesses so far have shown
        return f"I am thinking of a number between 1 and {self.high}. Guess it."

    def _act(self, action: str) -> envs.StepOutcome:
        m = _GUESS.match(action)
        if m is None:
            return envs.StepOutcome(self.invalid_feedback, valid=False)
        guess = int(m.group(1))
        if guess == self.secret:
            return envs.StepOutcome(
                "Correct!", reward=1.0, terminated=True, won=True, reward_breakdown={"success": 1.0}
            )
        if guess < self.secret:
            self.low_bound = max(self.low_bound, guess + 1)
            return envs.StepOutcome("Too low.")
        self.high_bound = min(self.high_bound, guess - 1)
        return envs.StepOutcome("Too high.")

    @staticmethod
    def parse_action(reply: str) -> str | None:
        """The first ``guess N`` anywhere in a model's reply (None when there is none)."""
        m = _IN_REPLY.search(reply)
        return f"guess {m.group(1)}" if m else None

    @property
    def task_type(self) -> str:
        return "guess_number"

    @property
    def instructions(self) -> str:
        return "Reply with one command: guess N (N a whole number)."

    def expert_action(self) -> str:
        """Binary search over what the feedback so far allows."""
        return f"guess {(self.low_bound + self.high_bound) // 2}"

    def _privileged(self) -> envs.Privileged:
        return envs.Privileged(
            answer=str(self.secret),
            next_action=self.expert_action(),
            plan=[f"guess {self.secret}"],
            hint=f"The number is {'even' if self.secret % 2 == 0 else 'odd'}.",
            hints={
                "reinforcing": "Halving the range works.",
                "corrective": "Guess the middle of the range that is still possible.",
            },
        )


def register() -> None:
    """What a user's package calls once (or names in its ``distillgym.envs`` entry point)."""
    envs.register_env(
        "Examples/GuessNumber-v0",
        "envs.examples.guess_number:GuessNumberEnv",
        max_episode_steps=10,
    )
