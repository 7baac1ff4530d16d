"""The base of every DistillGym environment: multi-turn text in, text out.

:class:`TextEnv` holds the conventions of ``docs/envs.md`` once, so that each env only writes its
world:

* ``observation_space = action_space = spaces.Text(max_length, charset=CHARSET)``;
* ``reset(seed=None, options=None)`` with the option keys ``task_id``, ``split`` and
  ``difficulty``. A task is a pure function of ``(env class, task_id, difficulty, salt)``: without
  a ``task_id`` one is drawn from ``self.np_random`` (so seeded resets are deterministic), and the
  world is then built from a generator seeded by the task id, so ``reset(options={"task_id": t})``
  rebuilds exactly that task whatever the seed;
* ``step(action: str)``: bad input (not a string, too long, unparseable, inapplicable) never
  raises and never ends the episode; it returns the env's fixed error text with
  ``info["action_valid"] = False``;
* the fixed ``info`` keys ``task_id, task_type, admissible_actions, tools, action_valid, won,
  reward_breakdown`` and, only with ``expose_privileged=True``, ``info["privileged"]``;
* ``render()`` in ``"ansi"`` mode returns the transcript so far.

A subclass sets ``family`` (and optionally ``invalid_feedback``) and implements five hooks:

====================================  =====================================================
``_setup(task_id, rng, difficulty)``   build the task, return the first observation
``_act(action: str) -> StepOutcome``   apply one (string) action
``task_type`` (property)               the task's type name
``expert_action() -> str``             the expert's next action from the current state
``_privileged() -> Privileged``        privileged information for the current state
====================================  =====================================================

plus, where they apply, ``admissible_actions()``, ``tool_schemas()`` and ``instructions``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "CHARSET",
    "SPLITS",
    "STRENGTHS",
    "Strength",
    "EnvError",
    "EnvStateError",
    "InvalidOptionError",
    "UnknownEnvError",
    "Privileged",
    "StepOutcome",
    "TextEnv",
    "make_task_id",
    "parse_task_id",
    "sanitize_text",
    "task_rng",
]

# Printable ASCII, newline, tab, and the few non-ASCII symbols DistillGym envs emit
# (Sokoban's box-on-target, units in the clinical env, typographic dashes and arrows).
_EXTRA_SYMBOLS = "√…°µ±×÷≤≥→←↑↓–—’‘“”•·²³½¼¾€£"
CHARSET: frozenset[str] = frozenset(
    "".join(chr(c) for c in range(32, 127)) + "\n\t" + _EXTRA_SYMBOLS
)
_OUTSIDE_CHARSET = re.compile("[^" + re.escape("".join(sorted(CHARSET))) + "]")

SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen")
Strength = Literal["plan", "next_action", "hint", "answer", "outcome_hint"]
"""How much privileged information a teacher (or sampler) sees; defined once, here."""
STRENGTHS: tuple[str, ...] = get_args(Strength)
_OPTION_KEYS = frozenset({"task_id", "split", "difficulty"})
_TASK_ID_RE = re.compile(r"^(train|valid_seen|valid_unseen)-(\d+)$")
_MAX_DRAWN_INDEX = 1_000_000


# --------------------------------------------------------------------------- errors


class EnvError(Exception):
    """Base of the errors raised by the env layer (program errors, never model failures)."""


class InvalidOptionError(EnvError, ValueError):
    """A constructor argument or a ``reset`` option is malformed (unknown key, bad split...)."""


class EnvStateError(EnvError, RuntimeError):
    """The env was used out of order (``step`` before ``reset`` or after the episode ended)."""


class UnknownEnvError(EnvError, LookupError):
    """``envs.make`` was given an id that no built-in env or entry point registers."""

    def __init__(self, env_id: str, known: list[str], failed: dict[str, str] | None = None):
        self.env_id = env_id
        self.known = known
        msg = f"unknown env id {env_id!r}; known ids: {', '.join(known) or '(none)'}"
        if failed:
            msg += "; env sources that failed to load: " + ", ".join(
                f"{k} ({v})" for k, v in failed.items()
            )
        super().__init__(msg)

    def __str__(self) -> str:  # LookupError would quote the message like a KeyError
        return str(self.args[0])


# --------------------------------------------------------------------------- records


@dataclass
class Privileged:
    """Privileged information about the current state; never shown in the observation.

    ``plan`` is the expert plan from the current state and ``next_action`` its first step;
    ``hints`` holds the TT-OPD pair (``reinforcing`` after a success, ``corrective`` after a
    failure); ``outcome`` is filled in by :class:`TextEnv` once the episode ended.
    """

    answer: Any = ""
    plan: list[str] = field(default_factory=list)
    next_action: str = ""
    subgoals: list[str] = field(default_factory=list)
    state_facts: list[str] = field(default_factory=list)
    rubric: Any = ""
    hint: str = ""
    hints: dict[str, str] = field(default_factory=lambda: {"reinforcing": "", "corrective": ""})
    outcome: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["outcome"] is None:
            del out["outcome"]
        return out


@dataclass
class StepOutcome:
    """What a subclass's ``_act`` returns for one action."""

    observation: str
    reward: float = 0.0
    terminated: bool = False
    valid: bool = True
    won: bool = False
    reward_breakdown: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- pure helpers


def make_task_id(split: str, index: int) -> str:
    """``("train", 17) -> "train-000017"``."""
    if split not in SPLITS:
        raise InvalidOptionError(f"unknown split {split!r}; expected one of {SPLITS}")
    if index < 0:
        raise InvalidOptionError(f"task index must be >= 0, got {index}")
    return f"{split}-{index:06d}"


def parse_task_id(task_id: str) -> tuple[str, int]:
    """``"valid_seen-000003" -> ("valid_seen", 3)``; raises :class:`InvalidOptionError`."""
    m = _TASK_ID_RE.match(task_id) if isinstance(task_id, str) else None
    if m is None:
        raise InvalidOptionError(
            f"malformed task id {task_id!r}; expected '<split>-<index>' with split in {SPLITS}"
        )
    return m.group(1), int(m.group(2))


def task_rng(*parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of ``parts`` (independent of PYTHONHASHSEED)."""
    key = "|".join(map(str, parts)).encode()
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return np.random.default_rng(seed)


def sanitize_text(text: str, max_length: int) -> str:
    """Replace characters outside :data:`CHARSET` by ``?`` and clip to ``max_length`` chars."""
    if _OUTSIDE_CHARSET.search(text) is not None:
        text = _OUTSIDE_CHARSET.sub("?", text)
    if len(text) > max_length:
        text = text[: max_length - 1] + "…"
    return text


# --------------------------------------------------------------------------- base class


class TextEnv(gym.Env[str, str]):
    """Base class of every DistillGym env (see the module docstring for the contract)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    family: ClassVar[str] = ""
    invalid_feedback: ClassVar[str] = "Nothing happens."
    max_observation_length: ClassVar[int] = 16_384
    max_action_length: ClassVar[int] = 8_192
    default_difficulty: ClassVar[int | str | None] = None

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        expose_privileged: bool = False,
        difficulty: int | str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidOptionError(
                f"render_mode {render_mode!r} not in {self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        self.expose_privileged = bool(expose_privileged)
        self.difficulty = self.default_difficulty if difficulty is None else difficulty
        self.observation_space = spaces.Text(
            max_length=self.max_observation_length, min_length=0, charset=CHARSET
        )
        self.action_space = spaces.Text(
            max_length=self.max_action_length, min_length=0, charset=CHARSET
        )
        self.task_id: str = ""
        self.episode_difficulty: int | str | None = self.difficulty
        self._transcript: list[str] = []
        self._steps = 0
        self._ended = False
        self._won = False
        self._terminated_by_env = False
        self._started = False

    # ------------------------------------------------------------------ hooks for subclasses

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: Any) -> str:
        """Build the task ``task_id`` from ``rng`` and return the first observation."""
        raise NotImplementedError

    def _act(self, action: str) -> StepOutcome:
        """Apply one action (always a ``str`` of at most ``max_action_length`` chars)."""
        raise NotImplementedError

    @property
    def task_type(self) -> str:
        raise NotImplementedError

    def expert_action(self) -> str:
        """The expert's next action from the CURRENT state (re-plans from any state)."""
        raise NotImplementedError

    def _privileged(self) -> Privileged:
        """Privileged information for the current state (``outcome`` is added by the base)."""
        raise NotImplementedError

    def _task_salt(self) -> tuple[object, ...]:
        """Extra constructor settings that change which task a task id denotes."""
        return ()

    def _validate_difficulty(self, difficulty: Any) -> Any:
        """Check and normalise a difficulty value; raise :class:`InvalidOptionError`."""
        return difficulty

    def admissible_actions(self) -> list[str] | None:
        """Sorted admissible actions in the current state, or ``None`` where there is no list."""
        return None

    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """OpenAI-style tool schemas, or ``None`` where the env has no tools."""
        return None

    @property
    def instructions(self) -> str:
        """Domain rules the agent must know (plain text, no chat formatting)."""
        return ""

    def _outcome(self) -> str:
        """One sentence describing how the finished episode went."""
        if self._won:
            return "The task was completed successfully."
        if self._ended and not self._terminated_by_env:
            return "The task was not completed within the step limit."
        return "The task was not completed."

    # ------------------------------------------------------------------ task sets

    def task_ids(self, split: str, n: int) -> list[str]:
        """The first ``n`` deterministic task ids of ``split`` (``"train-000000"``, ...)."""
        return [make_task_id(split, i) for i in range(n)]

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - _OPTION_KEYS
        if unknown:
            raise InvalidOptionError(
                f"unknown reset option(s) {sorted(unknown)}; allowed: {sorted(_OPTION_KEYS)}"
            )
        difficulty = options.get("difficulty")
        difficulty = self._validate_difficulty(
            self.difficulty if difficulty is None else difficulty
        )
        task_id = options.get("task_id")
        if task_id is None:
            split = options.get("split", "train")
            index = int(self.np_random.integers(0, _MAX_DRAWN_INDEX))
            task_id = make_task_id(split, index)
        else:
            split, _ = parse_task_id(task_id)
            if "split" in options and options["split"] != split:
                raise InvalidOptionError(
                    f"task id {task_id!r} is not in split {options['split']!r}"
                )
        self.task_id = task_id
        self.episode_difficulty = difficulty
        rng = task_rng(type(self).__name__, task_id, difficulty, *self._task_salt())
        obs = self._setup(task_id, rng, difficulty)
        self._steps = 0
        self._ended = False
        self._won = False
        self._terminated_by_env = False
        self._started = True
        obs = sanitize_text(obs, self.max_observation_length)
        self._transcript = [obs]
        return obs, self._info(action_valid=True, reward_breakdown={})

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self._started:
            raise EnvStateError("step() called before reset()")
        if self._ended and self._terminated_by_env:
            raise EnvStateError("step() called after the episode terminated; call reset()")
        if isinstance(action, str) and len(action) <= self.max_action_length:
            out = self._act(action)
        else:
            out = StepOutcome(self.invalid_feedback, valid=False)
        self._steps += 1
        if out.won:
            self._won = True
        if out.terminated:
            self._ended = self._terminated_by_env = True
        elif self._reached_horizon():
            self._ended = True
        obs = sanitize_text(out.observation, self.max_observation_length)
        shown = action if isinstance(action, str) else repr(action)
        self._transcript.append("> " + sanitize_text(shown, 200))
        self._transcript.append(obs)
        info = self._info(action_valid=out.valid, reward_breakdown=out.reward_breakdown)
        return obs, float(out.reward), bool(out.terminated), False, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return "\n".join(self._transcript) + "\n"
        return None

    # ------------------------------------------------------------------ privileged channel

    def privileged(self) -> Privileged:
        """The privileged record for the current state, with the outcome once ended."""
        priv = self._privileged()
        if self._ended:
            priv.outcome = self._outcome()
        return priv

    def privileged_text(self, strength: str) -> str:
        """Privileged information at ``strength`` as plain text for a teacher prompt.

        ``plan``: the numbered expert plan; ``next_action``: its first step; ``hint``: one short
        sentence; ``answer``: the task's answer; ``outcome_hint``: after the episode, its outcome
        with the reinforcing (won) or corrective (lost) hint, ``""`` before it ended.
        """
        if strength not in STRENGTHS:
            raise InvalidOptionError(f"unknown strength {strength!r}; expected one of {STRENGTHS}")
        priv = self.privileged()
        if strength == "plan":
            if not priv.plan:
                return ""
            steps = "\n".join(f"{i}. {a}" for i, a in enumerate(priv.plan, 1))
            return f"An expert would take these actions from here:\n{steps}"
        if strength == "next_action":
            return f"The expert's next action is: {priv.next_action}" if priv.next_action else ""
        if strength == "hint":
            return f"Hint: {priv.hint}" if priv.hint else ""
        if strength == "answer":
            return f"Answer: {priv.answer}" if priv.answer not in ("", None) else ""
        if priv.outcome is None:
            return ""
        hint = priv.hints.get("reinforcing" if self._won else "corrective", "")
        return f"{priv.outcome} {hint}".strip()

    # ------------------------------------------------------------------ internals

    @property
    def won(self) -> bool:
        return self._won

    @property
    def ended(self) -> bool:
        """True once the env terminated or the registered horizon was reached."""
        return self._ended

    @property
    def steps_taken(self) -> int:
        return self._steps

    def _reached_horizon(self) -> bool:
        limit = self.spec.max_episode_steps if self.spec is not None else None
        return limit is not None and self._steps >= limit

    def _info(self, *, action_valid: bool, reward_breakdown: dict[str, float]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "action_valid": bool(action_valid),
            "won": self._won,
            "reward_breakdown": dict(reward_breakdown),
        }
        admissible = self.admissible_actions()
        if admissible is not None:
            info["admissible_actions"] = admissible
        tools = self.tool_schemas()
        if tools is not None:
            info["tools"] = tools
        if self.expose_privileged:
            info["privileged"] = self.privileged().as_dict()
        return info
