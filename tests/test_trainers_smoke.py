"""Two-step runs of every G1 method on a tiny model, bad input, NaN steps and the CLI.

Each run writes to a real SQLite store; the tests read it back: run status, one step row per
step, every episode of every step (no loss, no duplicates), a checkpoint row, and the run
directory (resolved config, metrics CSV, learning curve, final policy).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from subproc import child_env

from data import Store
from trainers.config import ConfigError, load_yaml, parse_config
from trainers.methods import METHODS, get_method, register_method
from trainers.methods.base import Method

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "steps=2", "tasks_per_step=2", "group_size=2", "max_turns=2",
        "max_new_tokens=6", "max_context_tokens=1024", "token_budget=2048", "lr=1e-3",
        "progress=false", "checkpoint_every=1"]


def tiny_cfg(method: str, tmp_path: Path, *extra: str):
    cls = get_method(method).config_cls
    return parse_config(cls, [*TINY, f"output_dir={tmp_path}", f"run_name={method}-smoke",
                              f"method={method}", *extra])


EXPECTED_KEYS = {"loss", "entropy", "success_rate", "reward", "turns", "trained_tokens",
                 "tokens_per_s", "grad_norm", "lr", "time_rollout_s", "time_score_s",
                 "time_loss_s", "time_optim_s"}


@pytest.mark.parametrize("method, extra, keys", [
    ("grpo", ("kl_coef=0.05",), {"clip_frac", "kl_old", "kl_ref", "pg_loss"}),
    ("sft", (), {"nll"}),
    ("opd", ("teacher=tiny:1",), {"clip_frac", "kl_teacher", "abs_l", "kl_old"}),
    ("sod", ("teacher=tiny:1", "finetune=full"), {"clip_frac", "kl_teacher", "abs_l", "step_weight_mean"}),
])
def test_two_step_run_writes_complete_run(tmp_path, method, extra, keys):
    from trainers.loop import train

    cfg = tiny_cfg(method, tmp_path, *extra)
    result = train(cfg)
    store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
    run = store.get_run(f"{method}-smoke")
    assert run.status == "finished" and run.method == method
    assert run.config["teacher"] == cfg.teacher
    steps = store.steps(run.run_id)
    assert [s for s, _ in steps] == [0, 1]
    per_step = cfg.tasks_per_step * (1 if method == "sft" else cfg.group_size)  # one demo per task
    for s in (0, 1):
        assert store.count_episodes(run.run_id, step=s) == per_step
    metrics = steps[-1][1]
    assert EXPECTED_KEYS | keys <= set(metrics), sorted(EXPECTED_KEYS | keys - set(metrics))
    assert metrics["skipped"] == 0 and metrics["trained_tokens"] > 0
    assert metrics["grad_norm"] > 0 or method == "grpo"  # GRPO: no reward variance, zero gradient
    assert store.latest_checkpoint(run.run_id).policy_version == 2
    run_dir = result.run_dir
    assert load_yaml(type(cfg), run_dir / "config.yaml").teacher == cfg.teacher
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert len(result.metrics) == 2 and (run_dir / "metrics.csv").read_text().count("\n") == 3
    assert any(result.final_dir.glob("*.safetensors"))
    if method in ("opd", "sod"):
        ep = next(iter(store.episodes(run.run_id, step=1)))
        assert all(t.teacher_logprobs is not None and len(t.teacher_logprobs) == t.num_tokens
                   for t in ep.turns)


def test_summary_reports_the_last_evaluation_with_its_interval(tmp_path, capsys):
    from trainers.loop import train

    cfg = tiny_cfg("sft", tmp_path, "progress=true", "eval_every=2", "eval_episodes=3",
                   "checkpoint_every=0")
    result = train(cfg)
    last = result.metrics[-1]
    out = capsys.readouterr().out
    assert (f"[sft-smoke] evaluation after step 2 on valid_seen (greedy): success "
            f"{last['eval/success_rate']:.3f} [{last['eval/success_ci_low']:.3f}, "
            f"{last['eval/success_ci_high']:.3f}] (n=3)") in out, out


def test_teacher_scoring_matches_agents_score_turns(tiny):
    """The trainer's selective-head teacher scoring equals agents.scoring on trained tokens."""
    import functools

    from agents.backends import HFBackend, SamplingParams
    from agents.models import tiny_model
    from agents.renderers import Renderer
    from agents.rollout import RolloutConfig, collect_groups
    from agents.scoring import score_turns
    from trainers.methods.opd import score_trained_tokens

    model, tok = tiny
    teacher, _ = tiny_model(seed=7)
    cfg = RolloutConfig(group_size=2, max_turns=2, max_context_tokens=1024,
                        sampling=SamplingParams(max_tokens=5))
    groups = collect_groups("DistillGym/Household-v0", ["train-000003"], HFBackend(model, tok),
                            functools.partial(Renderer.for_env, tok), cfg, seed=1)
    score_trained_tokens(teacher, groups, tok, temperature=0.8, token_budget=4096)
    mine = [(t.teacher_logprobs, t.loss_mask) for g in groups for e in g.episodes for t in e.turns]
    score_turns(teacher, [e for g in groups for e in g.episodes], temperature=0.8)
    theirs = [t.teacher_logprobs for g in groups for e in g.episodes for t in e.turns]
    n = 0
    for (lp, mask), ref in zip(mine, theirs):
        for a, b, m in zip(lp, ref, mask):
            if m:
                assert a == pytest.approx(b, abs=1e-4)
                n += 1
    assert n > 0


def test_full_finetune_final_dir_loads_with_load_model(tmp_path):
    from agents.models import load_model
    from trainers.loop import train

    result = train(tiny_cfg("sft", tmp_path, "finetune=full", "steps=1"))
    model, tok = load_model(result.final_dir)
    assert model.config.num_hidden_layers == 2 and tok.eos_token


def test_unknown_env_and_teacher_with_other_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from agents.models import tiny_model
    from envs import UnknownEnvError
    from trainers.errors import TeacherMismatchError
    from trainers.loop import train

    with pytest.raises(UnknownEnvError, match="Nope-v0"):
        train(tiny_cfg("grpo", tmp_path, "env=DistillGym/Nope-v0"))
    # a teacher whose tokenizer is not the student's: a real model dir with another vocabulary
    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_end|>", "go", "to", "desk"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<|im_end|>")
    teacher, _ = tiny_model(seed=3)
    teacher.save_pretrained(tmp_path / "teacher")
    other.save_pretrained(tmp_path / "teacher")
    with pytest.raises(TeacherMismatchError, match="different tokenizer"):
        train(tiny_cfg("opd", tmp_path, f"teacher={tmp_path / 'teacher'}", "run_name=mismatch"))
    assert Store(f"sqlite:///{tmp_path / 'distillgym.db'}").get_run("mismatch").status == "failed"


@register_method("nan-test")
class _NaNMethod(Method):
    """GRPO whose loss is NaN: the loop must skip every step and stop after max_bad_steps."""

    description = "test only"

    def loss(self, ctx, batch, logp_BT, logits_fn):
        loss, stats = super().loss(ctx, batch, logp_BT, logits_fn)
        return loss * float("nan"), stats


def test_nan_loss_steps_are_skipped_then_run_stops(tmp_path):
    from agents.models import tiny_model
    from trainers.errors import TooManyBadStepsError
    from trainers.loop import train

    try:
        model, tok = tiny_model(seed=5)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = tiny_cfg("nan-test", tmp_path, "steps=5", "max_bad_steps=2", "finetune=full")
        with pytest.raises(TooManyBadStepsError, match="2 steps had a NaN"):
            train(cfg, policy=(model, tok))
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k].cpu()) for k in before)  # weights untouched (the loop may have moved them to a GPU)
        store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
        run = store.get_run("nan-test-smoke")
        assert run.status == "failed"
        assert [m["skipped"] for _, m in store.steps(run.run_id)] == [1.0, 1.0]
    finally:
        METHODS.pop("nan-test", None)


def test_config_that_cannot_fit_is_refused():
    with pytest.raises(ConfigError, match="token_budget=1000 cannot hold"):
        parse_config(get_method("grpo").config_cls, ["token_budget=1000", "max_context_tokens=2048"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "trainers", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_help_and_bad_key():
    out = _cli("--help")
    assert out.returncode == 0
    for name in ("grpo", "sft", "opd", "sod", "eval"):
        assert f"  {name} " in out.stdout
    bad = _cli("grpo", "--env", "DistillGym/Household-v0", "lr_rate=3")
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert lines == ["error: unknown config key 'lr_rate' for TrainConfig"], bad.stderr


def test_bench_train_step_reports_shares(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import train_step

    out = train_step.main(["--model", "tiny", "--modes", "lora", "--tasks", "1", "--group", "2",
                           "--max-turns", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "b.json")])
    lora = out["lora"]
    assert lora["trained_tokens"] > 0 and lora["trained_tokens_per_s"] > 0
    assert set(lora["share"]) == {"rollout", "scoring", "loss", "optimizer"}
    assert 0.5 < sum(lora["share"].values()) <= 1.0001


def test_quickstart_configs_parse():
    from trainers.methods.opd import OPDConfig
    from trainers.methods.sft import SFTConfig

    sft = load_yaml(SFTConfig, ROOT / "configs" / "quickstart.yaml")
    opd = load_yaml(OPDConfig, ROOT / "configs" / "quickstart_opd.yaml")
    assert sft.method == "sft" and opd.method == "opd"
    assert opd.teacher == f"{sft.output_dir}/{sft.run_name}/final"
