"""``DistillGym/Calculator-v0``: arithmetic and word problems solved with a calculator tool.

The setting of tool-integrated reasoning: the agent may reason in ``think`` calls, evaluates
expressions with the ``calculator`` tool (a safe ``ast`` evaluator, see
:mod:`envs.tooluse.safe_eval`; model text is never ``eval``-ed) and ends the episode with
``submit_answer`` -- or with a plain-text ``\\boxed{...}`` / ``Answer: ...``. Reward 1 when the
submitted number equals the answer (within 0.005 where the problem asks for two decimals, else
within a relative 1e-6).

Task kinds: ``arithmetic`` (a random expression; held-out operators ``%``/``**`` in
``valid_unseen``) and ``word_problem`` (templates; held-out templates in ``valid_unseen``).
``difficulty`` 1..3 scales the number of operations and the size of the numbers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from envs.base import InvalidOptionError, Privileged, StepOutcome, TextEnv, parse_task_id
from envs.tooluse.actions import InvalidAction, ToolAction, format_tool_call, parse_tool_action
from envs.tooluse.safe_eval import Number, UnsafeExpressionError, format_number, safe_eval
from envs.tooluse.toolbox import Toolbox, ToolCallError, error_text

__all__ = [
    "CalcTask",
    "CalculatorEnv",
    "CalculatorTools",
    "build_calc_task",
    "read_answer",
    "UnsafeExpressionError",
    "safe_eval",
]

_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_RE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]?\s*([^\n]+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ines", "Jon")

# (question template, expression template, sampler of the slots given (rng, scale))
_Template = tuple[str, str, Any]


def _ints(rng: random.Random, lo: int, hi: int, n: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _t_boxes(rng, s):
    a, b, c = _ints(rng, 2, 12 * s, 3)
    return {"a": a, "b": b, "c": c}


def _t_money(rng, s):
    b, c = _ints(rng, 2, 6 * s, 1)[0], _ints(rng, 3, 20 * s, 1)[0]
    return {"a": b * c + _ints(rng, 1, 50 * s, 1)[0], "b": b, "c": c}


def _t_speed(rng, s):
    b, k = _ints(rng, 2, 5 * s, 1)[0], _ints(rng, 30, 90 + 20 * s, 1)[0]
    return {"a": b * k + _ints(rng, 0, 1, 1)[0] * _ints(rng, 1, b - 1, 1)[0], "b": b}


def _t_saving(rng, s):
    a, b = _ints(rng, 5, 25 * s, 1)[0], _ints(rng, 3, 12, 1)[0]
    return {"a": a, "b": b, "c": _ints(rng, 1, a * b - 1, 1)[0]}


def _t_groups(rng, s):
    b, k = _ints(rng, 2, 9 * s, 2)
    return {"a": b * k, "b": b}


def _t_discount(rng, s):
    return {"a": _ints(rng, 20, 200 * s, 1)[0], "p": rng.choice([5, 10, 15, 20, 25, 30, 35, 40])}


def _t_tank(rng, s):
    b, c = _ints(rng, 2, 8 * s, 2)
    return {"a": b * c + _ints(rng, 5, 100 * s, 1)[0], "b": b, "c": c}


def _t_laps(rng, s):
    return {
        "a": _ints(rng, 2, 10, 1)[0],
        "b": rng.choice([200, 250, 400, 500]),
        "c": _ints(rng, 2, 7 * s, 1)[0],
    }


def _t_recipe(rng, s):
    b = rng.choice([6, 8, 10, 12])
    return {"a": _ints(rng, 100, 400 * s, 1)[0], "b": b, "c": b * _ints(rng, 2, 6, 1)[0]}


_SEEN_TEMPLATES: tuple[_Template, ...] = (
    (
        "A shop sells {a} boxes of pencils with {b} pencils in each box, plus {c} loose pencils. "
        "How many pencils does it sell in total?",
        "{a} * {b} + {c}",
        _t_boxes,
    ),
    (
        "{name} has ${a}. She buys {b} books at ${c} each. How many dollars does she have left?",
        "{a} - {b} * {c}",
        _t_money,
    ),
    (
        "A train travels {a} km in {b} hours. What is its average speed in km/h?",
        "{a} / {b}",
        _t_speed,
    ),
    (
        "{name} saves ${a} each week for {b} weeks, then spends ${c}. How many dollars are left?",
        "{a} * {b} - {c}",
        _t_saving,
    ),
    (
        "{a} students are split equally into {b} groups. How many students are in each group?",
        "{a} / {b}",
        _t_groups,
    ),
    (
        "A jacket costs ${a} and is discounted by {p} percent. What is the sale price in dollars?",
        "{a} * (100 - {p}) / 100",
        _t_discount,
    ),
)
_UNSEEN_TEMPLATES: tuple[_Template, ...] = (
    (
        "A tank holds {a} liters. It is filled at {b} liters per minute for {c} minutes. "
        "How many liters are still missing?",
        "{a} - {b} * {c}",
        _t_tank,
    ),
    (
        "{name} runs {a} laps of {b} meters every day for {c} days. How many kilometers is that in total?",
        "{a} * {b} * {c} / 1000",
        _t_laps,
    ),
    (
        "A recipe needs {a} grams of flour for {b} cookies. How many grams are needed for {c} cookies?",
        "{a} * {c} / {b}",
        _t_recipe,
    ),
)


@dataclass(frozen=True)
class CalcTask:
    """One problem: its text, the gold expression and the exact answer."""

    task_id: str
    kind: str  # "arithmetic" | "word_problem"
    question: str
    expression: str
    answer: Number
    two_decimals: bool  # the answer is not whole: the problem asks for two decimals

    @property
    def answer_text(self) -> str:
        return f"{float(self.answer):.2f}" if self.two_decimals else format_number(self.answer)


def _random_expression(rng: random.Random, n_ops: int, hi: int, unseen: bool) -> str:
    """A fully parenthesised random expression with ``n_ops`` binary operations."""
    ops = ["+", "-", "*", "%", "**"] if unseen else ["+", "-", "*", "/"]
    expr = str(rng.randint(1, hi))
    for _ in range(n_ops):
        op = rng.choice(ops)
        if op == "**":
            expr = (
                f"({expr}) ** {rng.randint(2, 3)}"
                if len(expr) < 12
                else f"({expr}) + {rng.randint(1, hi)}"
            )
            continue
        term = str(rng.randint(1, hi))
        expr = f"({expr}) {op} {term}" if rng.random() < 0.5 else f"{term} {op} ({expr})"
    return expr


def _draw_arithmetic(rng: random.Random, difficulty: int, unseen: bool) -> tuple[str, Number]:
    """A random expression and its value (redrawn while it is invalid, e.g. ``% 0``)."""
    while True:
        expr = _random_expression(rng, difficulty + 1, (20, 99, 999)[difficulty - 1], unseen)
        try:
            return expr, safe_eval(expr)
        except UnsafeExpressionError:
            continue


def build_calc_task(
    task_id: str, split: str, np_rng: np.random.Generator, difficulty: int
) -> CalcTask:
    """The problem ``task_id`` (pure function of its arguments)."""
    unseen = split == "valid_unseen"
    rng = random.Random(int(np_rng.integers(2**63)))  # Python's generator: cheaper per draw
    if rng.random() < 0.5:
        expr, answer = _draw_arithmetic(rng, difficulty, unseen)
        question = f"Compute {expr}."
        kind = "arithmetic"
    else:
        templates = _UNSEEN_TEMPLATES if unseen else _SEEN_TEMPLATES
        q_tpl, e_tpl, sampler = rng.choice(templates)
        slots = sampler(rng, difficulty)
        name = rng.choice(_NAMES)
        question, expr = q_tpl.format(name=name, **slots), e_tpl.format(**slots)
        answer = safe_eval(expr)
        kind = "word_problem"
    two = not (isinstance(answer, Fraction) and answer.denominator == 1)
    if two:
        question += " Give the answer rounded to 2 decimal places."
    return CalcTask(task_id, kind, question, expr, answer, two)


def read_answer(text: str) -> Number | None:
    """The number in an answer: a whole arithmetic expression (``"3/4"``, ``"1,234"``) or
    else the last number in the text (``"$12.50 in total"``); ``None`` when there is none."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip("%. ")
    try:
        return safe_eval(cleaned)
    except UnsafeExpressionError:
        pass
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    try:
        return Fraction(numbers[-1].replace(",", ""))
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return None


class CalculatorTools:
    """The calculator env's tools; ``submitted`` holds the answer once given."""

    def __init__(self) -> None:
        self.results: list[str] = []
        self.submitted: str | None = None

    def calculator(self, expression: str) -> str:
        """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses, and the functions sqrt, abs, round, min, max, floor, ceil.

        Args:
            expression: The expression, such as "(17 * 23) - 45 / 3".
        """
        try:
            value = format_number(safe_eval(expression))
        except UnsafeExpressionError as exc:
            raise ToolCallError(str(exc)) from exc
        self.results.append(value)
        return value

    def think(self, thought: str) -> str:
        """Think out loud; changes nothing.

        Args:
            thought: Your reasoning.
        """
        return "Thought logged."

    def submit_answer(self, answer: str) -> str:
        """Submit the final answer and end the episode.

        Args:
            answer: The final answer, a number such as "42" or "3.75".
        """
        if read_answer(answer) is None:
            raise ToolCallError(f"the answer {answer[:40]!r} contains no number")
        self.submitted = answer
        return "Answer submitted."


CALCULATOR_TOOLBOX = Toolbox(CalculatorTools, ("calculator", "think", "submit_answer"))


class CalculatorEnv(TextEnv):
    """Math problems with a calculator tool (see the module docstring)."""

    family: ClassVar[str] = "tool"
    invalid_feedback: ClassVar[str] = "Error: the action is not a string or is too long."
    default_difficulty: ClassVar[int] = 1
    max_episode_steps: ClassVar[int] = 10
    max_observation_length: ClassVar[int] = 4_096
    max_action_length: ClassVar[int] = 4_096

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        expose_privileged: bool = False,
        difficulty: int | None = None,
    ) -> None:
        super().__init__(render_mode, expose_privileged=expose_privileged, difficulty=difficulty)
        CALCULATOR_TOOLBOX.prepare()  # build schemas now (imports transformers once), not mid-episode
        self._validate_difficulty(self.difficulty)

    def _validate_difficulty(self, difficulty: Any) -> int:
        if isinstance(difficulty, bool) or difficulty not in (1, 2, 3):
            raise InvalidOptionError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
        return int(difficulty)

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: Any) -> str:
        split, _ = parse_task_id(task_id)
        self.task = build_calc_task(task_id, split, rng, difficulty)
        self.tools = CalculatorTools()
        self._correct = False
        return self.task.question

    @property
    def task_type(self) -> str:
        return self.task.kind

    def tool_schemas(self) -> list[dict[str, Any]]:
        return list(CALCULATOR_TOOLBOX.schemas)

    @property
    def instructions(self) -> str:
        return (
            "Solve the math problem. Use the calculator tool for arithmetic instead of computing "
            "by hand; it accepts numbers, + - * / // % ** and parentheses, and sqrt, abs, round, "
            "min, max, floor, ceil. Finish with submit_answer (or write your final answer as "
            "\\boxed{...}); the first answer ends the episode.\n\nTo call a tool, answer with one "
            "JSON object inside <tool_call></tool_call> tags, for example:\n<tool_call>\n"
            '{"name": "calculator", "arguments": {"expression": "17 * 23 - 45"}}\n</tool_call>\n'
            'One tool call per turn. Tool errors come back as a line starting with "Error:".'
        )

    def _act(self, action: str) -> StepOutcome:
        parsed = parse_tool_action(action)
        if isinstance(parsed, InvalidAction):
            return StepOutcome(error_text(parsed.error), valid=False)
        if isinstance(parsed, ToolAction):
            obs, ok = CALCULATOR_TOOLBOX.call(self.tools, parsed.name, parsed.arguments)
            if ok and self.tools.submitted is not None:
                return self._grade(self.tools.submitted)
            return StepOutcome(obs, valid=ok)
        final = _BOXED_RE.findall(parsed.text) or _ANSWER_RE.findall(parsed.text)
        if final and read_answer(final[-1]) is not None:
            return self._grade(final[-1])
        return StepOutcome(
            error_text("call a tool, or give your final answer as \\boxed{...}"), valid=False
        )

    def _grade(self, answer: str) -> StepOutcome:
        value = read_answer(answer)
        self._correct = value is not None and is_correct(value, self.task)
        breakdown = {
            "correct": float(self._correct),
            "calculator_calls": float(len(self.tools.results)),
        }
        return StepOutcome(
            f"Answer {answer.strip()[:80]} submitted.",
            reward=float(self._correct),
            terminated=True,
            won=self._correct,
            reward_breakdown=breakdown,
        )

    def expert_action(self) -> str:
        return self._plan()[0]

    def _plan(self) -> list[str]:
        submit = format_tool_call("submit_answer", {"answer": self.task.answer_text})
        if (
            self.task.answer_text in self.tools.results
            or format_number(self.task.answer) in self.tools.results
        ):
            return [submit]
        return [format_tool_call("calculator", {"expression": self.task.expression}), submit]

    def _privileged(self) -> Privileged:
        t = self.task
        plan = self._plan() if not self._ended else []
        hint = f"The problem amounts to {t.expression}; compute it with the calculator and submit."
        return Privileged(
            answer=t.answer_text,
            plan=plan,
            next_action=plan[0] if plan else "",
            subgoals=["compute the expression", "submit the answer"][-len(plan) :] if plan else [],
            state_facts=[f"calculator results so far: {', '.join(self.tools.results) or 'none'}"],
            rubric=(
                "Correct if the submitted number is within 0.005 of "
                if t.two_decimals
                else "Correct if the submitted number equals "
            )
            + t.answer_text,
            hint=hint,
            hints={
                "reinforcing": "The calculator was used and the answer was right.",
                "corrective": f"{hint} The answer is {t.answer_text}.",
            },
        )


def is_correct(value: Number, task: CalcTask) -> bool:
    """``|value - answer| <= 0.005`` for two-decimal answers, else a relative 1e-6. A value
    beyond the float range (a very long number) is wrong: every answer is at most 1e100."""
    try:
        diff = abs(float(value) - float(task.answer))
    except OverflowError:
        return False
    return (
        diff <= 0.005 + 1e-9
        if task.two_decimals
        else diff <= 1e-6 * max(1.0, abs(float(task.answer)))
    )
