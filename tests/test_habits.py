"""Small things in a new user's way (issue 24), each through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from subproc import ROOT, child_env


def test_option_without_value_is_named_not_misread() -> None:
    """``python -m trainers grpo --steps``: one line naming the option, not "got 'method=grpo'"."""
    from trainers.config import ConfigError, parse_config
    from trainers.train_config import TrainConfig

    res = subprocess.run([sys.executable, "-m", "trainers", "grpo", "--steps"], capture_output=True,
                         text=True, cwd=ROOT, env=child_env(), timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.strip() == "error: option --steps needs a value", res.stderr
    for argv in (["--steps", "--lr", "1e-3"], ["--steps", "lr=1e-3"]):
        with pytest.raises(ConfigError, match="^option --steps needs a value$"):
            parse_config(TrainConfig, argv)
    assert parse_config(TrainConfig, ["--store", "sqlite:///x.db?mode=ro"]).store.endswith("mode=ro")


def test_entry_point_envs_are_visible_to_plain_gymnasium_make(tmp_path) -> None:
    """A package declaring an env in ``distillgym.envs``: ``gymnasium.make`` finds it without
    DistillGym's ``make``/``list_envs`` having been called."""
    dist = tmp_path / "guess_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: guess-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        '[distillgym.envs]\nPlugin/Guess-v0 = envs.examples.guess_number:GuessNumberEnv\n')
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('envs:Plugin/Guess-v0')\n"  # gymnasium imports the module named first
        "obs, info = env.reset(seed=0)\n"
        "assert 'Guess it' in obs and env.spec.max_episode_steps == 10, (obs, env.spec)\n"
        "import envs  # noqa: F401\n"
        "assert gym.make('Plugin/Guess-v0').spec.id == 'Plugin/Guess-v0'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=child_env(PYTHONPATH=f"{ROOT}:{tmp_path}"), timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_missing_or_unknown_tracker_is_one_line_error_before_training() -> None:
    import accelerate.utils

    from trainers.metrics import TRACKERS

    missing = next((n for n in TRACKERS if not getattr(accelerate.utils, f"is_{n}_available")()), None)
    from trainers.config import ConfigError, parse_config
    from trainers.train_config import TrainConfig

    with pytest.raises(ConfigError, match="^report_to: unknown tracker 'nosuch'"):
        parse_config(TrainConfig, ["report_to=nosuch"])
    if missing is None:
        pytest.skip("every tracker package accelerate knows is installed here")
    line = (f"error: report_to: tracker {missing!r} is requested but its package cannot be "
            f"imported (pip install {TRACKERS[missing]})")
    res = subprocess.run([sys.executable, "-m", "trainers", "grpo", f"report_to=tensorboard,{missing}"],
                         capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == line, res.stderr
    assert res.stdout == ""  # nothing loaded, nothing trained


def test_tensorboard_tracker_writes_events_that_read_back(tmp_path) -> None:
    """A real 2-step SFT run with ``report_to=tensorboard``: accelerate's tracker writes event files
    under ``<run_dir>/tensorboard/<project>``; TensorBoard's reader gets every step's metrics back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods import get_method
    from trainers.metrics import read_csv

    cfg = parse_config(get_method("sft").config_cls, [
        "model=tiny", "steps=2", "tasks_per_step=1", "max_turns=2", "max_new_tokens=6",
        "max_context_tokens=1024", "token_budget=2048", "progress=false", "method=sft",
        "run_name=tb", f"output_dir={tmp_path}", "report_to=tensorboard", "tracker_project=proj"])
    result = train(cfg)
    logdir = result.run_dir / "tensorboard" / "proj"
    assert list(logdir.glob("events.out.tfevents.*")), sorted(p.name for p in logdir.rglob("*"))
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    rows = read_csv(result.run_dir / "metrics.csv")
    for key in ("loss", "nll", "tokens_per_s", "success_rate"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [0, 1], key
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6), key


def _hub_cache(cache, repo_id: str, files) -> str:
    """Lay ``files`` out as the Hub's cache does: blobs by hash, a snapshot of symlinks, refs/main."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in files:
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(f"../../blobs/{blob.name}")
    return commit


_LOGITS = ("import json, torch\n"
           "ids = torch.tensor([[1, 20, 300, 4000]])\n"
           "with torch.no_grad():\n"
           "    print(json.dumps(model(ids).logits[0, -1, :16].tolist()))\n")


def test_hub_model_id_resolves_offline_from_the_hf_cache(tmp_path) -> None:
    """``load_model("org/name")`` resolves a Hub id through huggingface_hub; with HF_HUB_OFFLINE=1
    from a cache in the Hub's own layout (the child gets only HF_HUB_CACHE pointing there)."""
    import json

    import torch

    from agents.models import tiny_model

    model, tok = tiny_model(seed=3)
    src = tmp_path / "src"
    model.save_pretrained(src, safe_serialization=True)
    tok.save_pretrained(src)
    _hub_cache(tmp_path / "hub", "distillgym-test/tiny-llama", sorted(src.iterdir()))
    with torch.no_grad():
        want = model(torch.tensor([[1, 20, 300, 4000]])).logits[0, -1, :16].tolist()
    env = child_env(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    code = ("from agents.models import load_model\n"
            "model, tok = load_model('distillgym-test/tiny-llama')\n") + _LOGITS
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == pytest.approx(want, abs=1e-5)
    missing = subprocess.run(
        [sys.executable, "-c", "from agents.models import resolve_model_dir as r; r('nobody/none')"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert missing.returncode == 1
    assert "ModelLoadError: Hub model 'nobody/none' cannot be resolved (HF_HUB_OFFLINE=1" in missing.stderr


def test_saved_lora_adapter_loads_in_plain_peft_without_distillgym(tmp_path) -> None:
    """``save_policy`` (what writes ``final/`` and checkpoints) names the base so that plain
    ``peft.AutoPeftModelForCausalLM`` loads it in a process that never imports DistillGym."""
    import json
    import os

    import torch
    from peft import LoraConfig, get_peft_model

    from agents.models import load_model
    from trainers.checkpoint import save_policy

    base, tok = load_model("smollm2-135m-instruct")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so the comparison sees it
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    final = tmp_path / "final"
    save_policy(model, tok, final, "smollm2-135m-instruct")
    base_ref = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_ref != "smollm2-135m-instruct" and (Path(base_ref) / "config.json").is_file()
    with torch.no_grad():
        want = model(torch.tensor([[1, 20, 300, 4000]])).logits[0, -1, :16].tolist()
    code = ("import sys\n"
            "from peft import AutoPeftModelForCausalLM\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({str(final)!r}).eval()\n"
            + _LOGITS +
            "ours = {'agents', 'envs', 'trainers', 'kernels', 'data'}\n"
            "assert not ours & {m.split('.')[0] for m in sys.modules}, 'DistillGym was imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=180)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == pytest.approx(want, abs=1e-4)
