"""Renderer: env text -> chat messages -> token ids, incrementally, without ever re-rendering.

The env speaks text, the renderer speaks tokens. A :class:`Renderer` wraps a tokenizer's own chat
template and renders each new piece of a conversation as a *delta*, so that

    start(obs0) + completion0 + ... = apply_chat_template(whole conversation)   (token for token)

holds, and no earlier token is ever recomputed. The deltas are found once, at construction, by
rendering probe conversations as text and checking that each longer conversation extends the
shorter one (a template that rewrites earlier turns raises :class:`TemplateError`).

Token layout for a ChatML template (SmolLM2)::

    start(obs0)      <|im_start|>system\\n{sys}<|im_end|>\\n<|im_start|>user\\n{obs0}<|im_end|>\\n<|im_start|>assistant\\n
    completion       {sampled tokens}<|im_end|>   (+ "\\n" appended by finish_completion, mask 0)
    extend(.., obs1) <|im_start|>user\\n{obs1}<|im_end|>\\n<|im_start|>assistant\\n

Teacher context (privileged information ``I``) is a pure function of the student's ids: a block
``<|im_start|>system\\n{I}<|im_end|>\\n`` spliced right after the system message, at position
``pos`` with ``n`` tokens; removing ``[pos, pos + n)`` gives back the student's ids exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.errors import TemplateError, TokenDriftError
from agents.parsing import ParsedAction, parse_action
from agents.system_prompts import system_text as family_system_text

__all__ = ["Renderer", "PRIVILEGED_HEADER", "strip_span", "check_extends"]

PRIVILEGED_HEADER = "Privileged information for this task (use it to act well):\n"
_PROBE_USER = "PROBE_USER_7d1f"
_PROBE_ASSISTANT = "PROBE_ASSISTANT_7d1f"


def strip_span(ids: list[int], pos: int, n: int) -> list[int]:
    """Remove the ``n`` tokens at ``[pos, pos + n)``: teacher ids -> student ids."""
    return list(ids[:pos]) + list(ids[pos + n :])


def check_extends(previous: list[int], current: list[int], where: str = "") -> None:
    """Raise :class:`TokenDriftError` unless ``current`` starts with ``previous``."""
    n = len(previous)
    if len(current) < n or current[:n] != previous:
        first = next((i for i, (a, b) in enumerate(zip(previous, current)) if a != b), min(n, len(current)))
        raise TokenDriftError(
            f"token drift{(' in ' + where) if where else ''}: the new context does not extend the "
            f"previous one (first difference at position {first} of {n}); history was re-rendered"
        )


def _ids(encoded: Any) -> list[int]:
    """Token ids from whatever ``apply_chat_template(tokenize=True)`` returned (list or dict)."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(t) for t in encoded]


class Renderer:
    """Incremental chat rendering for one tokenizer and one env family.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        family: the env family (``"household" | "tool" | "clinical"``), picks the system prompt.
        instructions: the env's domain rules (``env.unwrapped.instructions``).
        system_prompt: replaces the generated system text entirely when given.
        tools: OpenAI-style tool schemas listed in the system prompt.
        privileged_role: chat role of the spliced privileged block.
        action_parser: ``f(reply) -> action | None`` replacing the family's parser (a custom env's
            ``parse_action``); ``None`` means the reply holds no valid action.
    """

    def __init__(
        self,
        tokenizer: Any,
        family: str,
        instructions: str = "",
        system_prompt: str | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        privileged_role: str = "system",
        action_parser: Callable[[str], str | None] | None = None,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError("the tokenizer has no chat template; set tokenizer.chat_template")
        self.tokenizer = tokenizer
        self.family = family
        self.instructions = instructions
        self.tools = tools
        self.privileged_role = privileged_role
        self.action_parser = action_parser
        self._system = system_prompt if system_prompt is not None else family_system_text(
            family, instructions, tools
        )
        self._system_ids = self._encode(self._delta([], [self._msg("system", self._system)], False))
        self._user_prefix, self._user_suffix = self._split_probe(self._user_probe(), _PROBE_USER)
        self.eot_ids: list[int] = self._encode(self._assistant_suffix())
        if not self.eot_ids:
            raise TemplateError("the chat template closes assistant messages with no tokens")
        self.stop_token_id: int = self.eot_ids[0]

    # ------------------------------------------------------------------ template probing

    @staticmethod
    def _msg(role: str, content: str) -> dict[str, str]:
        return {"role": role, "content": content}

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def _delta(self, before: list[dict[str, str]], added: list[dict[str, str]], gen: bool) -> str:
        """Text that ``added`` appends to the rendered ``before`` (raises if history changes)."""
        head = self._render(before, False)
        full = self._render(before + added, gen)
        if not full.startswith(head):
            raise TemplateError(
                "the chat template rewrites earlier turns when a message is added; it cannot be "
                "rendered token-in-token-out"
            )
        return full[len(head) :]

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def _base(self) -> list[dict[str, str]]:
        return [
            self._msg("system", self._system),
            self._msg("user", "u"),
            self._msg("assistant", "a"),
        ]

    def _user_probe(self) -> str:
        return self._delta(self._base(), [self._msg("user", _PROBE_USER)], True)

    @staticmethod
    def _split_probe(text: str, probe: str) -> tuple[str, str]:
        if text.count(probe) != 1:
            raise TemplateError("the chat template does not copy message content verbatim")
        head, tail = text.split(probe)
        return head, tail

    def _assistant_suffix(self) -> str:
        """Text that closes an assistant message (``<|im_end|>\\n`` for ChatML)."""
        conv = self._base()[:2]
        opened = self._render(conv, True)
        closed = self._render(conv + [self._msg("assistant", _PROBE_ASSISTANT)], False)
        if not closed.startswith(opened + _PROBE_ASSISTANT):
            raise TemplateError(
                "the chat template does not render an assistant message as generation prompt + "
                "content (it may rewrite or strip the reply)"
            )
        return closed[len(opened) + len(_PROBE_ASSISTANT) :]

    # ------------------------------------------------------------------ public API

    def system_text(self) -> str:
        """The system message text this renderer uses."""
        return self._system

    @property
    def system_ids(self) -> list[int]:
        """Token ids of the system message alone (every context starts with them)."""
        return list(self._system_ids)

    def start(self, first_obs: str) -> list[int]:
        """Ids of ``system + user(first_obs) + assistant header`` (the first prompt)."""
        messages = [self._msg("system", self._system), self._msg("user", first_obs)]
        ids = _ids(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        )
        check_extends(self._system_ids, ids, "Renderer.start (system block)")
        return ids

    def user_delta_ids(self, obs: str) -> list[int]:
        """Ids of ``user(obs) + assistant header`` appended after a closed assistant turn."""
        return self._encode(self._user_prefix + obs + self._user_suffix)

    def extend(self, context_ids: list[int], obs: str) -> list[int]:
        """``context_ids`` plus a new user message and the assistant header; history untouched."""
        return list(context_ids) + self.user_delta_ids(obs)

    def finish_completion(
        self, completion_ids: list[int], finish_reason: str = "stop"
    ) -> tuple[list[int], list[int]]:
        """Close a sampled reply: ``(ids, loss_mask)`` with the end-of-turn tokens appended.

        Sampled tokens get mask 1 (including a sampled stop token: the model must learn to
        stop). Whatever part of :attr:`eot_ids` the sampler did not emit is appended with mask 0
        (a reply cut by ``max_tokens`` or a stop string gets the whole end-of-turn).
        ``finish_reason`` is accepted for the record; the tokens alone decide.
        """
        ids = list(completion_ids)
        mask = [1] * len(ids)
        k = len(self.eot_ids)
        if len(ids) >= k and ids[-k:] == self.eot_ids:
            return ids, mask
        missing = self.eot_ids[1:] if ids and ids[-1] == self.stop_token_id else self.eot_ids
        return ids + list(missing), mask + [0] * len(missing)

    def render_assistant(self, text: str) -> list[int]:
        """Ids of an assistant reply given as text, closed (used to replay expert actions)."""
        return self._encode(text) + list(self.eot_ids)

    def privileged_block_ids(self, privileged_text: str) -> list[int]:
        """Ids of the privileged message spliced after the system message ([] for empty text)."""
        if not privileged_text:
            return []
        block = self._msg(self.privileged_role, PRIVILEGED_HEADER + privileged_text)
        return self._encode(self._delta([self._msg("system", self._system)], [block], False))

    def teacher_ids(self, student_prompt_ids: list[int], privileged_text: str) -> tuple[list[int], int, int]:
        """Splice privileged text after the system message: ``(teacher_ids, pos, n)``.

        ``strip_span(teacher_ids, pos, n) == student_prompt_ids``; with empty text ``n == 0``.
        """
        check_extends(self._system_ids, list(student_prompt_ids[: len(self._system_ids)]), "teacher_ids")
        pos = len(self._system_ids)
        block = self.privileged_block_ids(privileged_text)
        ids = list(student_prompt_ids)
        return ids[:pos] + block + ids[pos:], pos, len(block)

    def decode(self, ids: list[int]) -> str:
        """Text of sampled ids without special tokens (invalid UTF-8 pieces become U+FFFD)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @classmethod
    def for_env(cls, tokenizer: Any, env: Any, info: dict[str, Any] | None = None, **kwargs: Any) -> Renderer:
        """A renderer for an env instance: its family, instructions and tools, and, where the env
        defines them, its own ``system_prompt`` (replacing the family's) and ``parse_action``."""
        base = getattr(env, "unwrapped", env)
        tools = (info or {}).get("tools")
        if tools is None and hasattr(base, "tool_schemas"):
            tools = base.tool_schemas()
        kwargs.setdefault("system_prompt", getattr(base, "system_prompt", None))
        parser = getattr(base, "parse_action", None)
        kwargs.setdefault("action_parser", parser if callable(parser) else None)
        return cls(tokenizer, getattr(base, "family", ""), getattr(base, "instructions", ""), tools=tools, **kwargs)

    def parse(self, reply: str) -> ParsedAction:
        """The action in a model reply: the env's own parser when it has one, else the family's.
        Never raises: a parser that fails or finds nothing gives an invalid action (model data)."""
        if self.action_parser is None:
            return parse_action(self.family, reply)
        if not isinstance(reply, str):
            return ParsedAction("", False, f"reply is {type(reply).__name__}, not str")
        try:
            action = self.action_parser(reply)
        except Exception as exc:  # noqa: BLE001 - the env's parser rejected the reply
            return ParsedAction("", False, f"{type(exc).__name__}: {exc}")
        if action is None:
            return ParsedAction("", False, "the env's parser found no action in the reply")
        return ParsedAction(str(action), True)
