"""Renderer properties with the real SmolLM2 tokenizer: incremental ids == chat template ids."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.errors import TemplateError, TokenDriftError
from agents.renderers import Renderer, check_extends, strip_span
from agents.system_prompts import system_text


@pytest.fixture(scope="module")
def tok():
    from agents.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def renderer(tok):
    return Renderer(tok, "household", "Commands: go to {recep}, open {recep}, look.")


def _template_ids(tok, messages, gen):
    out = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _incremental(renderer, tok, observations, replies):
    """Ids built the rollout's way: start, then (reply + eot, extend) per turn."""
    ids = renderer.start(observations[0])
    for reply, obs in zip(replies, observations[1:]):
        sampled = tok(reply, add_special_tokens=False)["input_ids"] + [renderer.stop_token_id]
        completion, _ = renderer.finish_completion(sampled, "stop")
        previous = ids + completion
        ids = renderer.extend(previous, obs)
        assert ids[: len(previous)] == previous
    return ids


# Observations: any text (even chat markup). Replies: what a sampler emits after "assistant\n"
# (no leading whitespace: the template would merge it with that newline on re-tokenization,
# which is exactly the drift the renderer avoids by never re-tokenizing).
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
reply = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=3).flatmap(
    lambda head: st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30).map(lambda t: head + t)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(observations=st.lists(text, min_size=1, max_size=4), data=st.data())
def test_incremental_ids_equal_chat_template(renderer, tok, observations, data) -> None:
    replies = data.draw(st.lists(reply, min_size=len(observations) - 1, max_size=len(observations) - 1))
    ids = _incremental(renderer, tok, observations, replies)
    messages = [{"role": "system", "content": renderer.system_text()}]
    for i, obs in enumerate(observations):
        messages.append({"role": "user", "content": obs})
        if i < len(replies):
            messages.append({"role": "assistant", "content": replies[i]})
    assert ids == _template_ids(tok, messages, gen=True)


def test_finish_completion_masks(renderer) -> None:
    eot = renderer.eot_ids
    assert eot[0] == renderer.stop_token_id == 2  # <|im_end|>, then "\n"
    ids, mask = renderer.finish_completion([10, 11, eot[0]], "stop")
    assert ids == [10, 11, *eot] and mask == [1, 1, 1] + [0] * (len(eot) - 1)
    ids, mask = renderer.finish_completion([10, 11], "length")
    assert ids == [10, 11, *eot] and mask == [1, 1] + [0] * len(eot)
    ids, mask = renderer.finish_completion([], "empty")
    assert ids == eot and mask == [0] * len(eot)


def test_teacher_ids_splice_and_strip(renderer, tok) -> None:
    student = _incremental(renderer, tok, ["You are in a room.", "You arrive at fridge 1."], ["go to fridge 1"])
    teacher, pos, n = renderer.teacher_ids(student, "The expert's next action is: open fridge 1")
    assert n > 0 and pos == len(renderer.system_ids)
    assert teacher[:pos] == student[:pos] and teacher[pos + n :] == student[pos:]
    assert strip_span(teacher, pos, n) == student
    block = tok.decode(teacher[pos : pos + n])
    assert block.startswith("<|im_start|>system\n") and "open fridge 1" in block
    # the teacher context is itself a valid chat-template rendering
    assert tok.decode(teacher).count("<|im_start|>") == tok.decode(student).count("<|im_start|>") + 1
    same, pos0, n0 = renderer.teacher_ids(student, "")
    assert same == student and n0 == 0 and pos0 == pos
    with pytest.raises(TokenDriftError):
        renderer.teacher_ids([5, 6, 7] + student, "x")


def test_render_assistant_matches_template(renderer, tok) -> None:
    ids = renderer.extend(renderer.start("obs 0") + renderer.render_assistant("look"), "obs 1")
    messages = [
        {"role": "system", "content": renderer.system_text()},
        {"role": "user", "content": "obs 0"},
        {"role": "assistant", "content": "look"},
        {"role": "user", "content": "obs 1"},
    ]
    assert ids == _template_ids(tok, messages, gen=True)


def test_template_that_rewrites_history_is_refused(tok) -> None:
    import copy

    bad = copy.copy(tok)
    # renders only the last message: adding a message rewrites what came before
    bad.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(TemplateError):
        Renderer(bad, "household")


def test_check_extends_reports_position() -> None:
    check_extends([1, 2], [1, 2, 3])
    with pytest.raises(TokenDriftError, match="position 1"):
        check_extends([1, 2, 3], [1, 9, 3, 4])


def test_system_prompts_per_family() -> None:
    tools = [{"type": "function", "function": {"name": "get_order", "parameters": {}}}]
    tool_text = system_text("tool", "Authenticate first.", tools)
    assert "<tool_call>" in tool_text and "get_order" in tool_text and "Authenticate first." in tool_text
    assert "<action>" in system_text("household")
    assert "submit_answer" in system_text("clinical")
    assert system_text("my-family").startswith("You are an agent")
