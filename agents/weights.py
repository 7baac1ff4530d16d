"""Weight transport: how a trainer's new weights reach the sampler servers, behind one interface.

``transport.push(backend, model, version) -> pause_s`` is called by
:meth:`agents.server.ServerBackend.update_weights` while no turn is in flight; it pauses the live
replicas (``/pause?mode=wait``: running requests finish first), moves the weights, resumes, and
returns how long generation was paused. Implementations:

* ``inprocess``: the HF and in-process vLLM backends (``agents.backends``) update themselves in
  their own ``update_weights``; no transport object is needed there.
* :class:`FilesystemTransport`: a PEFT model's adapter is saved to ``<root>/v<version>`` and
  hot-loaded through ``/v1/load_lora_adapter`` (requests then name the adapter
  ``policy-<tag>-v<version>``, ``tag`` unique per transport, the previous one is unloaded); a full model is saved as safetensors and
  reloaded in place through ``/collective_rpc reload_weights`` (dev mode). ``root`` must be a path
  the servers can read (the same machine, or a shared filesystem).
* :class:`NativeTransport`: vLLM's own weight transfer (NCCL on CUDA): ``/init_weight_transfer_engine``
  once, then per update ``/pause`` -> ``/start_weight_update`` -> ``/update_weights`` (parameter
  metadata, while the tensors are broadcast) -> ``/finish_weight_update`` -> ``/resume``. The HTTP
  calls are vLLM's ``HTTPVLLMWeightSyncClient``, the broadcast its ``NCCLTrainerWeightTransferEngine``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import torch

from agents.backends import full_state_dict
from agents.errors import BackendError

__all__ = ["WeightTransport", "FilesystemTransport", "NativeTransport", "make_transport",
           "TRANSPORTS"]

TRANSPORTS = ("auto", "inprocess", "filesystem", "native")


class WeightTransport(Protocol):
    """Moves weights to the servers of a ``ServerBackend``; returns the seconds generation paused."""

    name: str

    def push(self, backend: Any, model: torch.nn.Module, version: int) -> float: ...


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "save_pretrained")


class FilesystemTransport:
    """LoRA adapter hot-load or full safetensors reload through a directory the servers read."""

    name = "filesystem"

    def __init__(self, root: str | Path | None = None, keep: int = 2) -> None:
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="distillgym-weights-")
        self.root = Path(root or self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._loaded: list[str] = []
        self.tag = uuid.uuid4().hex[:8]  # runs (and resumes) sharing a server never collide

    def push(self, backend: Any, model: torch.nn.Module, version: int) -> float:
        out = self.root / f"v{version}"
        if out.exists():
            shutil.rmtree(out)
        if _is_peft(model):
            model.save_pretrained(str(out))  # type: ignore[operator]
        else:
            from safetensors.torch import save_file

            out.mkdir(parents=True)
            state = {k: v.contiguous().cpu() for k, v in full_state_dict(model).items()}
            save_file(state, str(out / "model.safetensors"))
        t0 = time.perf_counter()  # written while generation runs; paused only to swap
        backend.pause()
        try:
            if _is_peft(model):
                name = f"policy-{self.tag}-v{version}"
                for url in backend.live_urls():
                    backend.post(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(out)})
                backend.model_name = name
                old, self._loaded = self._loaded, [name]
                for url in backend.live_urls():
                    for stale in old:
                        backend.post(url, "/v1/unload_lora_adapter", {"lora_name": stale})
            else:
                for url in backend.live_urls():
                    backend.post(url, "/collective_rpc",
                                 {"method": "reload_weights", "kwargs": {"weights_path": str(out)}})
                    backend.post(url, "/reset_prefix_cache")
        finally:
            backend.resume()
        pause_s = time.perf_counter() - t0
        for stale in sorted(self.root.glob("v*"), key=lambda p: int(p.name[1:]))[: -self.keep]:
            shutil.rmtree(stale, ignore_errors=True)
        return pause_s

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class NativeTransport:
    """vLLM's native weight transfer (full weights, CUDA): see the module docstring.

    Args:
        init_info: the trainer-side init info (``NCCLTrainerInitInfo(master_address=...,
            master_port=..., world_size=1 + sampler ranks, rank=0)``); needs one per replica in
            general, so this class drives a single replica.
        engine_factory: ``(client, model) -> engine`` with ``send_weights()``; default: vLLM's
            ``NCCLTrainerWeightTransferEngine.trainer_init`` (which also calls
            ``/init_weight_transfer_engine``). Tests pass an engine without a GPU broadcast.
    """

    name = "native"

    def __init__(self, init_info: Any = None, engine_factory: Any = None, timeout_s: float = 300.0) -> None:
        self.init_info = init_info
        self.engine_factory = engine_factory
        self.timeout_s = timeout_s
        self.engine: Any = None

    def _engine(self, backend: Any, model: torch.nn.Module) -> Any:
        if self.engine is None:
            from vllm.distributed.weight_transfer.base import ModuleSource
            from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient

            urls = backend.live_urls()
            if len(urls) != 1:
                raise BackendError(f"weight_transport=native drives one sampler replica, got {len(urls)}")
            client = HTTPVLLMWeightSyncClient(urls[0], timeout=self.timeout_s)
            if self.engine_factory is not None:
                self.engine = self.engine_factory(client, model)
            else:
                if not torch.cuda.is_available() or self.init_info is None:
                    raise BackendError("weight_transport=native needs CUDA and an NCCL init_info")
                from vllm.distributed.weight_transfer.nccl_engine import (
                    NCCLTrainerWeightTransferEngine,
                )

                self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
                    self.init_info, client=client, source=ModuleSource(model))
        return self.engine

    def push(self, backend: Any, model: torch.nn.Module, version: int) -> float:
        engine = self._engine(backend, model)
        t0 = time.perf_counter()
        backend.pause()
        try:
            engine.send_weights()  # /start_weight_update, /update_weights (+ broadcast), /finish_weight_update
            for url in backend.live_urls():
                backend.post(url, "/update_weight_version", {"new_version": str(version)})
        finally:
            backend.resume()
        return time.perf_counter() - t0


def make_transport(kind: str, *, root: str | Path | None = None, **kwargs: Any) -> WeightTransport:
    """``auto`` = filesystem (LoRA hot-load for a PEFT policy, else a full reload) for servers;
    ``native`` on request (``kwargs`` go to :class:`NativeTransport`)."""
    if kind not in TRANSPORTS:
        raise BackendError(f"unknown weight_transport {kind!r}; expected one of {TRANSPORTS}")
    if kind in ("auto", "filesystem"):
        return FilesystemTransport(root)
    if kind == "native":
        return NativeTransport(**kwargs)
    raise BackendError("weight_transport=inprocess is for backend=hf|vllm; servers need "
                       "filesystem or native")
