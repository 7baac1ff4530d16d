"""Model loading: bundled GGUF -> safetensors cache, rebuild of broken caches, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from agents import models
from agents.models import ModelLoadError, load_model, resolve_model_dir

PROMPT = "<|im_start|>user\ngo to fridge 1<|im_end|>\n<|im_start|>assistant\n"


def _logits(model, tokenizer):
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0]


@pytest.mark.slow
def test_half_written_cache_is_rebuilt_and_matches_gguf(tmp_path, monkeypatch):
    """A cache dir without its manifest (a killed conversion) is rebuilt, and the rebuilt
    safetensors model gives the same logits as loading the GGUF directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("DISTILLGYM_CACHE", str(tmp_path))
    half = tmp_path / "models" / "smollm2-135m-instruct"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{")  # what a kill mid-conversion leaves behind
    (half / "model.safetensors").write_bytes(b"\0" * 100)

    model, tokenizer = load_model("smollm2-135m-instruct")
    assert json.loads((half / models.MANIFEST).read_text())["files"]["model.safetensors"] > 10**8

    gguf = models.bundled_gguf_path("smollm2-135m-instruct")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert tokenizer(PROMPT).input_ids == ref_tok(PROMPT).input_ids
    torch.testing.assert_close(_logits(model, tokenizer), _logits(reference, ref_tok), rtol=0, atol=1e-5)


def test_truncated_cache_file_is_detected(smollm2_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smollm2_dir, copy)
    assert models._manifest_ok(copy)
    with open(copy / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    assert not models._manifest_ok(copy)
    with pytest.raises(ModelLoadError, match="incomplete or corrupted"):
        resolve_model_dir(copy)


def test_corrupted_gguf_gives_clear_error(tmp_path):
    gguf = models.bundled_gguf_path("smollm2-135m-instruct")
    broken = tmp_path / "broken.gguf"
    with open(gguf, "rb") as src:
        broken.write_bytes(src.read(4096))
    target = tmp_path / "out"
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        models._convert_gguf(broken, target)
    assert not target.exists()


def test_missing_and_non_model_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a bundled model"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_tiny_model_shares_tokenizer(tiny, smollm2):
    tiny_model, tiny_tok = tiny
    _, tok = smollm2
    assert tiny_tok.get_vocab() == tok.get_vocab()
    out = tiny_model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, len(tok))
