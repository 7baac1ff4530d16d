"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is forced on here."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU the Triton kernel runs under Triton's interpreter. Triton must see this before its
# first import anywhere in the process (vLLM and torch import it too), so it is set here, first.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """The real bundled SmolLM2-135M-Instruct as ``(model, tokenizer)`` in fp32 (cached after first use)."""
    from agents.models import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_dir():
    """Local HF directory of the bundled model (what the vLLM backend loads)."""
    from agents.models import resolve_model_dir

    return resolve_model_dir("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer random Llama with the real SmolLM2 tokenizer, as ``(model, tokenizer)``."""
    from agents.models import tiny_model

    return tiny_model()
