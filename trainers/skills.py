"""Skill-SD's skill bank: summarize finished trajectories into skills, pick one per task by UCB.

A *skill* is a JSON summary of one completed trajectory (Skill-SD, arXiv 2604.10674)::

    {"success_analysis": str, "mistake_analysis": str, "golden_workflow": str | list[str]}

The flow, as used by ``trainers.methods.skill_sd``:

1. after a training step the method hands finished episodes to a :class:`SkillWorker`;
2. the worker (a daemon thread, so training never waits for it) asks a :class:`Summarizer` for a
   summary, validates it against :data:`SKILL_SCHEMA` (malformed output is retried, then
   dropped: a skill is never stored half) and adds it to the store's skill bank;
3. before the next rollout the method picks, per task, one skill from that task's bank with
   :func:`select_skill` (UCB, untried skills first) and puts its text in the *teacher's* prompt;
   the student never sees skills. The episode's reward is then credited to the skill.

Summarizer backends (all implement ``complete(messages) -> str``):

- :class:`ModelSummarizer`: any local Hugging Face causal LM, the policy itself by default;
- :class:`OpenAISummarizer`: an OpenAI-compatible ``/v1/chat/completions`` endpoint by URL,
  called with the standard library's ``urllib`` (no client package needed).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema

from agents.types import Episode

__all__ = [
    "SKILL_SCHEMA",
    "Skill",
    "SkillError",
    "MalformedSkillError",
    "SummarizerError",
    "Summarizer",
    "ModelSummarizer",
    "OpenAISummarizer",
    "parse_skill",
    "skill_text",
    "trajectory_messages",
    "summarize_episode",
    "ucb_scores",
    "select_skill",
    "SkillBank",
    "SkillWorker",
]

log = logging.getLogger(__name__)

SKILL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "success_analysis": {"type": "string", "minLength": 1},
        "mistake_analysis": {"type": "string"},
        "golden_workflow": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        },
    },
    "required": ["success_analysis", "mistake_analysis", "golden_workflow"],
}
"""JSON schema of a skill. Extra keys are allowed but not stored (see :func:`parse_skill`)."""

SKILL_KEYS = ("success_analysis", "mistake_analysis", "golden_workflow")


class SkillError(Exception):
    """Base class of the skill bank's errors."""


class MalformedSkillError(SkillError):
    """A summarizer's output is not a JSON object matching :data:`SKILL_SCHEMA`."""


class SummarizerError(SkillError):
    """A summarizer backend failed (HTTP error, unreachable endpoint, bad response shape)."""


@dataclass(frozen=True)
class Skill:
    """One skill of the bank, as the trainer sees it (converted from the store's row at its edge)."""

    skill_id: int
    task_id: str
    content: dict[str, Any]  # the validated JSON summary
    uses: int = 0
    mean_reward: float = 0.0


# --------------------------------------------------------------------------------------------
# Parsing and rendering skills
# --------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_candidates(text: str) -> list[str]:
    """Substrings of ``text`` that may hold the JSON object: fenced blocks, then the outermost braces."""
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    candidates.append(text.strip())
    return candidates


def parse_skill(text: str) -> dict[str, Any]:
    """Parse and validate a summarizer's output into a skill dict (only the schema's keys).

    Accepts a bare JSON object, one inside a Markdown code fence, or one surrounded by prose.
    Raises :class:`MalformedSkillError` when no candidate parses to an object matching the schema.
    """
    errors: list[str] = []
    for candidate in _json_candidates(text):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError as exc:
            errors.append(f"invalid JSON ({exc.msg})")
            continue
        try:
            jsonschema.validate(obj, SKILL_SCHEMA)
        except jsonschema.ValidationError as exc:
            errors.append(f"schema: {exc.message}")
            continue
        return {key: obj[key] for key in SKILL_KEYS}
    raise MalformedSkillError(f"no valid skill JSON in summarizer output: {'; '.join(errors)}")


def skill_text(content: dict[str, Any]) -> str:
    """Render a skill as the plain text spliced into the teacher's prompt."""
    workflow = content["golden_workflow"]
    if isinstance(workflow, list):
        workflow = "\n".join(f"{i + 1}. {step}" for i, step in enumerate(workflow))
    return (
        "Skill learned from an earlier attempt at this task.\n"
        f"What worked: {content['success_analysis']}\n"
        f"Mistakes to avoid: {content['mistake_analysis'] or 'none noted'}\n"
        f"Golden workflow:\n{workflow}"
    )


SUMMARIZER_SYSTEM = (
    "You analyse an agent's attempt at a task and write a reusable skill. Answer with ONLY a JSON "
    'object with exactly these keys: "success_analysis" (what worked), "mistake_analysis" (what '
    'went wrong; empty string if nothing), "golden_workflow" (a list of the steps that solve the task).'
)


def trajectory_messages(episode: Episode, max_chars: int = 6000) -> list[dict[str, str]]:
    """Chat messages asking a summarizer to turn ``episode`` into a skill.

    The transcript lists the first observation (from ``episode.info["first_observation"]`` when the
    rollout recorded it), then every action with the env's answer, then the outcome.
    """
    lines = [f"Task id: {episode.task_id} ({episode.task_type or episode.env_id})"]
    first_obs = episode.info.get("first_observation")
    if first_obs:
        lines.append(f"Initial observation:\n{first_obs}")
    for turn in episode.turns:
        lines.append(f"Action {turn.index + 1}: {turn.action or turn.action_text!r}")
        if turn.observation:
            lines.append(f"Observation: {turn.observation}")
    lines.append(
        f"Outcome: {'success' if episode.won else 'failure'}, reward {episode.reward:.3f}, "
        f"ended by {episode.end_reason}."
    )
    transcript = "\n".join(lines)
    if len(transcript) > max_chars:  # keep the head (task) and the tail (outcome)
        half = max_chars // 2
        transcript = transcript[:half] + "\n...\n" + transcript[-half:]
    return [
        {"role": "system", "content": SUMMARIZER_SYSTEM},
        {"role": "user", "content": transcript},
    ]


# --------------------------------------------------------------------------------------------
# Summarizer backends
# --------------------------------------------------------------------------------------------


class Summarizer(Protocol):
    """Anything that answers a chat conversation with text."""

    def complete(self, messages: list[dict[str, str]]) -> str: ...


@dataclass
class ModelSummarizer:
    """A local Hugging Face causal LM (the policy itself by default) used as the summarizer.

    ``structured=True`` (the default) is constrained decoding for this flat schema: the JSON
    skeleton is forced and the model only writes each value, greedily, until it closes the string
    (a ``"``) or reaches ``field_max_tokens``. The values are escaped with :func:`json.dumps`, so the
    result always parses; a value the model leaves empty still fails :data:`SKILL_SCHEMA` and is
    retried or dropped like any malformed output. Small models (the bundled 135M one) almost never
    write a whole schema-valid object unaided; ``structured=False`` asks for the object as free text.

    ``lock`` serializes generation with other users of the same model object (the trainer passes
    its own lock when the summarizer shares the policy's weights).
    """

    model: Any
    tokenizer: Any
    max_new_tokens: int = 256
    lock: threading.Lock = field(default_factory=threading.Lock)
    structured: bool = True
    field_max_tokens: int = 64

    def complete(self, messages: list[dict[str, str]]) -> str:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not self.structured:
            return self._generate(prompt, self.max_new_tokens)
        return self._complete_structured(prompt)

    def _complete_structured(self, prompt: str) -> str:
        reply = "{"
        for i, key in enumerate(SKILL_KEYS):
            reply += ("" if i == 0 else ", ") + f'"{key}": "'
            raw = self._generate(prompt + reply, self.field_max_tokens, stop='"')
            value = raw.split('"', 1)[0].strip()
            reply = reply[: -1] + json.dumps(value)  # replace the opening quote by the escaped string
        return reply + "}"

    def _generate(self, prompt: str, max_new_tokens: int, stop: str | None = None) -> str:
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        input_ids = ids["input_ids"].to(device)
        extra: dict[str, Any] = {"stop_strings": [stop], "tokenizer": self.tokenizer} if stop else {}
        with self.lock, torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=ids["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **extra,
            )
        return self.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)


@dataclass
class OpenAISummarizer:
    """An OpenAI-compatible chat endpoint: POST ``{base_url}/v1/chat/completions``.

    ``base_url`` is e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted too).
    """

    base_url: str
    model: str = "default"
    api_key: str | None = None
    timeout_s: float = 60.0
    max_tokens: int = 512
    temperature: float = 0.0

    @property
    def endpoint(self) -> str:
        base = self.base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        return base + "/v1/chat/completions"

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise SummarizerError(f"summarizer endpoint {self.endpoint} failed: {exc}") from exc
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise SummarizerError(
                f"summarizer endpoint {self.endpoint} returned no choices[0].message.content"
            ) from exc


def summarize_episode(
    summarizer: Summarizer, episode: Episode, max_attempts: int = 2
) -> dict[str, Any] | None:
    """Ask ``summarizer`` for a skill of ``episode``; retry malformed output, then give up (None).

    Malformed output is a model failure (data): it is logged and counted by the caller, never
    stored. Backend failures (:class:`SummarizerError`) are retried the same way.
    """
    messages = trajectory_messages(episode)
    for attempt in range(1, max_attempts + 1):
        try:
            return parse_skill(summarizer.complete(messages))
        except SkillError as exc:
            log.info("skill summary attempt %d/%d dropped: %s", attempt, max_attempts, exc)
    return None


# --------------------------------------------------------------------------------------------
# UCB selection (pure)
# --------------------------------------------------------------------------------------------


def ucb_scores(mean_rewards: Sequence[float], counts: Sequence[int], c: float = 1.0) -> list[float]:
    """UCB score of each skill of one task's bank.

    ``score(e) = mean_reward(e) + c * sqrt(ln N / n(e))`` with ``N = sum_e n(e)``;
    an untried skill (``n(e) = 0``) scores ``+inf`` so it is tried first. With ``N = 1`` the bonus
    is 0 (``ln 1 = 0``) for the one tried skill.
    """
    if len(mean_rewards) != len(counts):
        raise ValueError("mean_rewards and counts must have the same length")
    total = sum(counts)
    scores = []
    for mean, n in zip(mean_rewards, counts):
        if n <= 0:
            scores.append(math.inf)
        else:
            scores.append(mean + c * math.sqrt(math.log(total) / n))
    return scores


def select_skill(skills: Sequence[Skill], c: float = 1.0) -> Skill | None:
    """The skill with the highest UCB score (ties: the earliest in ``skills``); None if empty."""
    if not skills:
        return None
    scores = ucb_scores([s.mean_reward for s in skills], [s.uses for s in skills], c)
    best = max(range(len(skills)), key=lambda i: (scores[i], -i))
    return skills[best]


# --------------------------------------------------------------------------------------------
# The bank (store edge) and the asynchronous worker
# --------------------------------------------------------------------------------------------


class SkillBank:
    """The per-task skill bank of one run, kept in the trajectory store (``data.Store``).

    The store owns persistence (``add_skill``, ``skills``, ``record_skill_use``); this class
    validates skills before they are stored, converts the store's ``SkillRecord`` rows to
    :class:`Skill` at the edge, and is safe to call from the worker thread.
    """

    def __init__(self, store: Any, run_id: int) -> None:
        self.store = store
        self.run_id = run_id
        self.step = 0  # the trainer's current step, recorded as the skill's creation step

    def add(self, task_id: str, content: dict[str, Any]) -> int:
        """Validate and store a skill; returns its id. Never stores half a skill.

        Raises :class:`MalformedSkillError` when ``content`` does not match :data:`SKILL_SCHEMA`.
        """
        try:
            jsonschema.validate(content, SKILL_SCHEMA)
        except jsonschema.ValidationError as exc:
            raise MalformedSkillError(f"skill for task {task_id!r} rejected: {exc.message}") from exc
        return int(self.store.add_skill(self.run_id, task_id, dict(content), self.step))

    def for_task(self, task_id: str) -> list[Skill]:
        return [_to_skill(row) for row in self.store.skills(self.run_id, task_id)]

    def record_use(self, skill_id: int, reward: float) -> None:
        self.store.record_skill_use(int(skill_id), float(reward))

    def size(self) -> int:
        return len(self.store.skills(self.run_id))


def _to_skill(row: Any) -> Skill:
    """Convert a store ``data.types.SkillRecord`` to the trainer's :class:`Skill`."""
    return Skill(
        skill_id=int(row.skill_id),
        task_id=str(row.task_id),
        content=dict(row.skill),
        uses=int(row.usage_count),
        mean_reward=float(row.mean_reward),
    )


@dataclass
class WorkerStats:
    """Counters of the summarizer worker (read by the trainer's metrics)."""

    submitted: int = 0
    stored: int = 0
    dropped: int = 0
    errors: int = 0


class SkillWorker:
    """A daemon thread that summarizes episodes into the bank without blocking training.

    ``submit`` only enqueues; ``drain`` waits until the queue is empty (tests, end of training).
    ``on_error`` (default: log) receives unexpected exceptions; the worker keeps running.
    """

    def __init__(
        self,
        summarizer: Summarizer,
        bank: SkillBank,
        max_attempts: int = 2,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.summarizer = summarizer
        self.bank = bank
        self.max_attempts = max_attempts
        self.stats = WorkerStats()
        self._on_error = on_error or (lambda exc: log.exception("skill worker error", exc_info=exc))
        self._queue: queue.Queue[Episode | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="skill-summarizer", daemon=True)
        self._thread.start()

    def submit(self, episode: Episode) -> None:
        self.stats.submitted += 1
        self._queue.put(episode)

    def drain(self, timeout_s: float | None = None) -> None:
        """Block until every submitted episode has been handled."""
        if timeout_s is None:
            self._queue.join()
            return
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout_s)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            episode = self._queue.get()
            try:
                if episode is None:
                    return
                self._handle(episode)
            except Exception as exc:  # a bug in a backend must not kill training: record it
                self.stats.errors += 1
                self._on_error(exc)
            finally:
                self._queue.task_done()

    def _handle(self, episode: Episode) -> None:
        content = summarize_episode(self.summarizer, episode, self.max_attempts)
        if content is None:
            self.stats.dropped += 1
            return
        self.bank.add(episode.task_id, content)
        self.stats.stored += 1
