"""The evaluation harness (trainers/evaluate.py): rates with intervals per split and task type,
pass@k over repeated samples, the store record linked to its checkpoint, and resume."""

from __future__ import annotations

import math

import pytest

from agents.types import Episode
from data import Store
from trainers.config import ConfigError, parse_config
from trainers.evaluate import (
    EvalConfig,
    baseline_lines,
    checkpoint_link,
    evaluate_checkpoint,
    report_from_episodes,
)
from trainers.stats import wilson_interval


def _ep(task_id: str, won: bool, task_type: str = "t") -> Episode:
    return Episode(env_id="DistillGym/Sum-v0", task_id=task_id, seed=0, task_type=task_type, won=won,
                   reward=float(won))


def test_report_pass_at_k_and_task_types_by_hand():
    # task a: 3 samples, 1 won; task b: 3 samples, 0 won; task c: 3 samples, 3 won
    wins = {"a": [1, 0, 0], "b": [0, 0, 0], "c": [1, 1, 1]}
    eps = [_ep(f"valid_seen-{t}", bool(w), "easy" if t == "c" else "hard")
           for t, ws in wins.items() for w in ws]
    rep = report_from_episodes("valid_seen", eps, samples=3)
    # pass@1 = mean c/n = (1/3 + 0 + 1)/3; pass@2 = (1 - C(2,2)/C(3,2) + 0 + 1)/3 = (2/3 + 1)/3
    assert rep.pass_at[1] == pytest.approx((1 / 3 + 1) / 3)
    assert rep.pass_at[2] == pytest.approx((1 - 1 / 3 + 1) / 3)
    assert rep.pass_at[3] == pytest.approx(2 / 3)
    assert (rep.success.successes, rep.success.n) == (4, 9)
    assert rep.success_ci == wilson_interval(4, 9)
    assert (rep.by_task_type["easy"].successes, rep.by_task_type["easy"].n) == (3, 3)
    assert (rep.by_task_type["hard"].successes, rep.by_task_type["hard"].n) == (1, 6)
    flat = rep.flat()
    assert flat["success_ci_low/hard"] == pytest.approx(wilson_interval(1, 6)[0])
    assert flat["episodes/hard"] == 6 and flat["pass@2"] == rep.pass_at[2]
    assert "pass@1 0.444" in rep.table() and "(n=6)" in rep.table()


def test_checkpoint_link(tmp_path):
    step = tmp_path / "runs" / "opd-x" / "checkpoints" / "step-000004" / "model"
    final = tmp_path / "runs" / "opd-x" / "final"
    step.mkdir(parents=True)
    final.mkdir()
    out = str(tmp_path / "runs")
    assert checkpoint_link(str(step), out) | {"dir": ""} == {
        "model": str(step), "dir": "", "train_run": "opd-x", "step": 4}
    assert checkpoint_link(str(final), out)["step"] == "final"
    assert checkpoint_link("smollm2-135m-instruct", out)["train_run"] == ""


def test_bad_eval_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="split"):
        parse_config(EvalConfig, ["split=valid_seen,test"])
    with pytest.raises(ConfigError, match="greedy"):
        parse_config(EvalConfig, ["--greedy", "samples=4"])
    with pytest.raises(ConfigError, match="run_name"):
        parse_config(EvalConfig, ["resume=true"])


class _Stop(Exception):
    pass


def test_interrupted_evaluation_resumes_to_the_uninterrupted_result(tmp_path):
    """Sampled (2 per task) over two splits, 3 chunks; killed after chunk 1, then resumed."""
    args = ["env=DistillGym/Sum-v0", "model=tiny", "split=valid_seen,valid_unseen", "episodes=5",
            "samples=2", "chunk=4", "max_turns=1", "max_new_tokens=6", "max_context_tokens=256",
            f"output_dir={tmp_path}", "seed=3"]
    whole = evaluate_checkpoint(parse_config(EvalConfig, [*args, "run_name=whole"]))

    def stop_after_first(done: int, total: int) -> None:
        assert total == math.ceil(2 * 5 / 4)
        if done == 1:
            raise _Stop

    with pytest.raises(_Stop):
        evaluate_checkpoint(parse_config(EvalConfig, [*args, "run_name=cut"]), on_chunk=stop_after_first)
    store = Store(f"sqlite:///{tmp_path}/distillgym.db")
    assert store.count_episodes(store.get_run("cut").run_id) == 4 * 2  # chunk 0 only
    resumed_chunks: list[int] = []
    resumed = evaluate_checkpoint(parse_config(EvalConfig, [*args, "run_name=cut", "resume=true"]),
                                  on_chunk=lambda d, t: resumed_chunks.append(d))
    assert resumed_chunks == [2, 3]  # chunk 0 came from the store, not played again

    assert [r.split for r in resumed] == ["valid_seen", "valid_unseen"]
    for a, b in zip(whole, resumed):
        assert [(e.task_id, e.turns[0].action_text, e.won) for e in a.episodes] == \
               [(e.task_id, e.turns[0].action_text, e.won) for e in b.episodes]
        assert a.flat() == b.flat() and len(a.episodes) == 10
    run = store.get_run("cut")
    assert run.status == "finished" and run.config["checkpoint"]["model"] == "tiny"
    assert store.count_episodes(run.run_id) == 20
    rows = dict(store.steps(run.run_id))
    assert rows[1]["episodes"] == 10 and rows[1]["pass@2"] == resumed[1].pass_at[2]
    # the same evaluation as its own baseline: delta 0 on both splits, not resolved
    lines = baseline_lines(store, "whole", resumed)
    assert len(lines) == 2 and all("delta +0.000" in ln and "not resolved" in ln for ln in lines)
    assert lines[0].startswith(f"valid_seen: success {whole[0].success} -> {resumed[0].success}")
