"""HF backend: sampler log-probs equal the trainer's recomputation; finish reasons; seeds; updates."""

from __future__ import annotations

import os

import pytest
import torch

from agents.backends import HFBackend, SamplingParams, make_backend, sample_next
from agents.errors import BackendError
from agents.renderers import Renderer
from agents.scoring import sequence_logprobs


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    r = Renderer(tok, "household")
    # different lengths so left padding and row dropping are exercised
    return [r.start("You are in a room."), r.start("You see a cabinet 1, a fridge 1 and a sinkbasin 1. " * 3), [1, 2, 3]]


def _recomputed(model, prompt, completion, temperature):
    lp = sequence_logprobs(model, [prompt + completion.token_ids], temperature)[0]
    return lp[len(prompt) - 1 :]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_recomputation(tiny, prompts, temperature) -> None:
    model, tok = tiny
    backend = HFBackend(model, tok, max_batch_size=2)  # 2 chunks, rows of different lengths
    outs = backend.generate(prompts, SamplingParams(temperature=temperature, max_tokens=12, seed=1))
    assert len(outs) == len(prompts)
    for prompt, out in zip(prompts, outs):
        assert len(out.token_ids) == len(out.logprobs) >= 1
        recomputed = _recomputed(model, prompt, out, temperature)
        assert torch.allclose(torch.tensor(out.logprobs), recomputed, atol=1e-4), (out.logprobs, recomputed)


@pytest.mark.slow
def test_sampler_logprobs_match_recomputation_smollm2(smollm2) -> None:
    model, tok = smollm2
    r = Renderer(tok, "household")
    prompts = [r.start("You are in the middle of a room. Your task is to: put a mug in cabinet."), r.start("Hi")]
    outs = HFBackend(model, tok).generate(prompts, SamplingParams(temperature=1.0, max_tokens=10, seed=0))
    gaps = [
        (torch.tensor(o.logprobs) - _recomputed(model, p, o, 1.0)).abs().max().item() for p, o in zip(prompts, outs)
    ]
    assert max(gaps) < 1e-4, gaps


def test_finish_reasons_and_stop_strings(tiny, prompts) -> None:
    model, tok = tiny
    backend = HFBackend(model, tok)
    out = backend.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=5))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
    # greedy text of 5 tokens; asking to stop at its 3rd token's text stops there
    target = tok.decode(out.token_ids[:3], skip_special_tokens=True)[-1]
    stopped = backend.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=5, stop=(target,)))[0]
    assert stopped.finish_reason in ("stop", "empty") and len(stopped.token_ids) <= 3
    assert stopped.token_ids == out.token_ids[: len(stopped.token_ids)]


def test_empty_generation_is_recorded(tiny, prompts) -> None:
    model, tok = tiny
    eos = tok.eos_token_id
    with torch.no_grad():  # make the model put all its mass on eos
        bias = torch.full((model.config.vocab_size,), -1e4)
        bias[eos] = 0.0
        model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        out = HFBackend(model, tok).generate(prompts[:2], SamplingParams(max_tokens=4, seed=0))
    finally:
        model.lm_head.bias = None
    assert [o.finish_reason for o in out] == ["empty", "empty"]
    assert all(o.token_ids == [eos] and o.text == "" for o in out)


def test_seed_reproducible_and_weights_live(tiny, prompts) -> None:
    model, tok = tiny
    backend = HFBackend(model, tok)
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=7)
    a = backend.generate(prompts, params)
    b = backend.generate(prompts, params)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    greedy = SamplingParams(temperature=0, max_tokens=6)
    before = backend.generate(prompts[:1], greedy)[0]
    target = tok.convert_tokens_to_ids("cabinet")
    with torch.no_grad():  # an "optimizer step" on the live model object: favour one token
        bias = torch.zeros(model.config.vocab_size)
        bias[target] = 100.0
        model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        backend.update_weights(model, 3)
        after = backend.generate(prompts[:1], greedy)[0]
    finally:
        model.lm_head.bias = None
    assert backend.policy_version == 3
    assert after.token_ids == [target] * 6 != before.token_ids


def test_sample_next_top_p_and_greedy() -> None:
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    tok, lp = sample_next(logits, SamplingParams(temperature=0), None)
    assert tok.item() == 2 and torch.allclose(lp, torch.log_softmax(logits, -1)[:, 2])
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_p=0.5), g)[0].item() for _ in range(50)}
    assert draws == {2}  # the nucleus of mass 0.5 holds only the top token
    _, lp_t = sample_next(logits, SamplingParams(temperature=0.5, top_p=0.5), g)
    assert torch.allclose(lp_t, torch.log_softmax(logits / 0.5, -1)[:, 2])


def test_make_backend_and_bad_params(tiny) -> None:
    model, tok = tiny
    assert isinstance(make_backend("auto", model=model, tokenizer=tok), HFBackend)
    with pytest.raises(BackendError):
        make_backend("vllm", model=model, tokenizer=tok)
    with pytest.raises(BackendError):
        make_backend("tpu", model=model, tokenizer=tok)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    with pytest.raises(BackendError):
        HFBackend(model, tok).generate([[]], SamplingParams())


def test_prefix_cache_reuses_rows_and_never_serves_stale_weights(tiny, prompts) -> None:
    model, tok = tiny
    greedy = SamplingParams(temperature=0, max_tokens=5)
    cached = HFBackend(model, tok)

    def fresh(ids):
        return HFBackend(model, tok, prefix_cache=False).generate([ids], greedy)[0]

    first = cached.generate([prompts[0]], greedy)[0]
    follow_up = prompts[0] + first.token_ids + [2, 198, 1, 4093, 198, 33]
    assert cached._lookup(follow_up)[0] == len(prompts[0]) + len(first.token_ids) - 1
    reused = cached.generate([follow_up, prompts[1]], greedy)[0]  # one cached row, one new row
    reference = fresh(follow_up)
    assert reused.token_ids == reference.token_ids
    assert torch.allclose(torch.tensor(reused.logprobs), torch.tensor(reference.logprobs), atol=1e-5)
    longer = follow_up + reused.token_ids + [2, 198, 1, 4093, 198, 34]
    norm = model.model.layers[0].input_layernorm.weight
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.mul_(3.0)  # an in-place optimizer step: cached keys are now stale
    try:
        after = cached.generate([longer], greedy)[0]
        reference = fresh(longer)
    finally:
        with torch.no_grad():
            norm.copy_(saved)
    assert torch.allclose(torch.tensor(after.logprobs), torch.tensor(reference.logprobs), atol=1e-5)


def test_identical_prompts_prefilled_once_sample_independently(tiny, prompts) -> None:
    model, tok = tiny
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=4)
    outs = HFBackend(model, tok).generate([prompts[0]] * 4 + [prompts[1]], params)
    assert len({tuple(o.token_ids) for o in outs[:4]}) > 1  # rows share the prefill, not the samples
    for o in outs[:4]:
        ref = _recomputed(model, prompts[0], o, 1.0)
        assert torch.allclose(torch.tensor(o.logprobs), ref, atol=1e-4)


def test_shared_system_prompt_prefilled_once_for_different_tasks(tiny) -> None:
    """Different tasks share the system prompt: it is prefilled once, and nothing else changes."""
    model, tok = tiny
    r = Renderer(tok, "household")
    prompts = [r.start(f"You are in room {i}. Your task is to: put a mug {i} in cabinet.") for i in range(3)]
    shared = len(os.path.commonprefix(prompts))
    assert shared >= 32
    greedy = SamplingParams(temperature=0, max_tokens=6)
    backend = HFBackend(model, tok)
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        outs = backend.generate(prompts, greedy)
    finally:
        hook.remove()
    # one pass over the shared prefix, then a batch holding only each row's own suffix
    assert calls[0] == shared and calls[1] == 3 * max(len(p) - shared for p in prompts)
    for prompt, out in zip(prompts, outs):
        alone = HFBackend(model, tok, prefix_cache=False).generate([prompt], greedy)[0]
        assert out.token_ids == alone.token_ids
        assert torch.allclose(torch.tensor(out.logprobs), torch.tensor(alone.logprobs), atol=1e-5)
