"""The method comparison (bench/compare.py): a tiny end-to-end run and its bookkeeping.

The smoke run uses the ``smoke`` preset: a random 2-layer model with the real tokenizer, SFT warm
start, GRPO and OPD on the easy household world, a 30-token generation budget. It checks the
plumbing the real comparison relies on: the budget stops each run after the first step that
crosses it (read back from the store's episodes), the curve is taken at the right token counts,
every run and evaluation lands in one SQLite store, the report files exist, and a second call
reuses the finished runs instead of training again.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from subproc import child_env

from bench.compare import CompareConfig, TokenMeter, parse_args
from bench.compare_report import (
    RunResult,
    check_claims,
    claim_verdict,
    success_se,
    summarize,
)
from trainers.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--preset", "smoke", f"output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=child_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_smoke_run_respects_budget_and_records_everything(smoke):
    from data import Store

    out, paths = smoke
    cfg = parse_args(["--preset", "smoke"])
    data = json.loads(Path(paths["json"]).read_text())
    runs = {r["method"]: r for r in data["runs"]}
    assert set(runs) == {"grpo", "opd"}
    store = Store(f"sqlite:///{out / 'compare.db'}")
    for method, r in runs.items():
        assert r["status"] == "finished", r["error"]
        run = store.get_run(r["run_name"])
        assert run.status == "finished" and run.method == method
        # generated tokens per step, read back from the stored episodes
        per_step = [sum(sum(t.loss_mask) for e in store.episodes(run.run_id, step=s) for t in e.turns)
                    for s in range(r["steps"])]
        assert sum(per_step) == r["tokens"] >= cfg.gen_token_budget
        assert sum(per_step[:-1]) < cfg.gen_token_budget  # stopped at the first step crossing it
        assert 1 <= r["steps"] <= cfg.max_steps
        # curve: intermediate points at the step ends that passed k·budget/points, then the final
        xs = [x for x, _ in r["curve"]]
        assert xs == sorted(xs) and xs[-1] == r["tokens"]
        assert r["curve"][-1][1] == r["success"]["valid_seen"]
        for split in ("valid_seen", "valid_unseen"):
            ev = store.get_run(f"{r['run_name']}-final-{split}")
            assert store.count_episodes(ev.run_id) == cfg.eval_episodes
        if method == "opd":
            assert r["kl_key"] == "kl_teacher" and math.isfinite(r["mean_kl"])
    warm = data["warm_start"][0]
    assert Path(warm["student_dir"]).is_dir() and Path(warm["teacher_dir"]).is_dir()
    assert warm["student_dir"] != warm["teacher_dir"]
    assert store.get_run("sft-household-easy-v0").status == "finished"
    report = Path(paths["markdown"]).read_text()
    assert "| Household-Easy-v0 | grpo | 1 |" in report and "| Household-Easy-v0 | opd | 1 |" in report
    assert "too small to conclude" in report
    for key in ("curves", "final"):
        assert Path(paths[key]).stat().st_size > 5000


def test_second_call_reuses_finished_runs(smoke):
    from bench.compare import run_comparison
    from data import Store

    out, paths = smoke
    before = json.loads(Path(paths["json"]).read_text())["runs"]
    n_runs = len(Store(f"sqlite:///{out / 'compare.db'}").runs())
    cfg = parse_args(["--preset", "smoke", f"output_dir={out}"])
    again = run_comparison(cfg, command="again")
    assert json.loads(again["json"].read_text())["runs"] == before
    assert len(Store(f"sqlite:///{out / 'compare.db'}").runs()) == n_runs  # nothing trained again


def test_token_meter_curve_points():
    meter = TokenMeter(budget=100, curve_points=4)
    due = []
    for n in (30, 30, 30, 30):
        while meter.eval_due():
            meter.evals_done += 1
            due.append(meter.generated)
        meter.add(n)
    assert due == [30, 60, 90]  # points at >= 25, 50, 75 tokens, taken before the next step
    assert meter.exhausted and meter.per_step == [30, 30, 30, 30]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="sft_student_steps"):
        CompareConfig(sft_student_steps=5, sft_teacher_steps=2)
    with pytest.raises(ConfigError, match="method_args names unknown methods"):
        CompareConfig(methods="grpo", method_args={"tcod-fb2": {"curriculum_k": 1}})
    with pytest.raises(ConfigError, match="methods names unknown methods .'gpro'"):
        CompareConfig(methods="gpro,opd")
    subset = CompareConfig(methods="grpo", method_args={"tcod-f2b": {"curriculum_k": 1}})
    assert subset.method_list == ["grpo"]  # a preset's args for methods that are not run are ignored
    with pytest.raises(ConfigError, match="unknown preset"):
        parse_args(["--preset", "nope"])
    with pytest.raises(ConfigError, match="cannot be set per env"):
        CompareConfig(env_settings={"E": {"seeds": "1"}})
    with pytest.raises(ConfigError, match="max_turns"):
        CompareConfig(env_settings={"E": {"max_turns": "many"}})


def test_env_settings_override_only_their_env():
    cfg = CompareConfig(max_new_tokens=16, env_settings={"Calc": {"max_new_tokens": 48, "max_turns": 3}})
    calc, other = cfg.for_env("Calc"), cfg.for_env("Household")
    assert (calc.max_new_tokens, calc.max_turns, calc.lr) == (48, 3, cfg.lr)
    assert other is cfg and other.max_new_tokens == 16


def _run(method: str, seed: int, seen: float, unseen: float, episodes: int = 10) -> RunResult:
    return RunResult(env="E", method=method, seed=seed, run_name=f"{method}{seed}",
                     success={"valid_seen": seen, "valid_unseen": unseen}, eval_episodes=episodes)


def test_summary_statistics_by_hand():
    runs = [_run("grpo", s, v, v) for s, v in enumerate((0.2, 0.4, 0.6))]
    runs += [_run("sod", s, v, v) for s, v in enumerate((0.8, 0.8, 0.8))]
    runs.append(RunResult(env="E", method="sod", seed=9, run_name="x", status="failed"))
    grpo, sod = summarize(runs)
    assert grpo.mean["valid_seen"] == pytest.approx(0.4)
    assert grpo.std["valid_seen"] == pytest.approx(0.2)  # sample std of 0.2, 0.4, 0.6
    # seed spread 0.2/sqrt(3) = 0.1155 beats the binomial sqrt(0.24/60) = 0.0632
    assert grpo.se["overall"] == pytest.approx(0.2 / math.sqrt(3))
    # no spread: the binomial term sqrt(0.16/60) decides
    assert sod.n_seeds == 3 and sod.n_failed == 1
    assert sod.se["overall"] == pytest.approx(math.sqrt(0.8 * 0.2 / 60))
    (check,) = check_claims([grpo, sod])
    assert check.delta_pts == pytest.approx(40.0)
    assert check.verdict == "supported"  # 40 >= 2·se and >= 12.9/2


def test_claim_verdicts():
    assert claim_verdict(0.20, 0.05, 3, 14.0) == "supported"
    assert claim_verdict(0.05, 0.02, 3, 14.0) == "direction only"  # real but < half the claim
    assert claim_verdict(-0.20, 0.05, 3, 14.0) == "contradicted"
    assert claim_verdict(0.05, 0.05, 3, 14.0) == "inconclusive"
    assert claim_verdict(0.50, 0.01, 1, 14.0) == "inconclusive"  # one seed never concludes
    assert success_se(0.0, 0.0, 1, 16) == pytest.approx(1 / 16)  # floored at one episode


def test_train_task_pool_reaches_every_method_and_tasks_recur():
    from bench.compare import method_config
    from bench.compare_report import WarmStart
    from trainers.loop import TaskCursor, train_task_ids

    env = "DistillGym/Household-Easy-v0"
    cfg = CompareConfig(train_tasks=2, tasks_per_step=2, env_settings={"Other": {"train_tasks": 8}})
    warm = WarmStart(env=env, student_dir="tiny", teacher_dir="tiny", student_steps=0, teacher_steps=1,
                     student_success={}, teacher_success={}, eval_episodes=1, wall_s=0.0)
    for method in ("grpo", "skill-sd", "tcod-b2f"):
        assert method_config(cfg.for_env(env), env, method, 0, warm, "r").num_train_tasks == 2
    assert cfg.for_env("Other").train_tasks == 8
    pool = train_task_ids(env, "train", 2, {})
    cursor = TaskCursor(pool, seed=0)
    steps = [set(cursor.next(2)) for _ in range(3)]
    assert steps[0] == steps[1] == steps[2] == set(pool)  # Skill-SD's per-task bank gets used
    with pytest.raises(ConfigError, match="train_tasks"):
        CompareConfig(train_tasks=0)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "configs" / "compare").glob("*.yaml")))
def test_every_preset_loads_and_its_env_settings_apply(preset):
    cfg = parse_args(["--preset", preset])
    for env in cfg.env_list:
        assert cfg.for_env(env).train_tasks >= 1


def test_report_merges_separate_comparisons_and_refuses_overlap(tmp_path, capsys):
    from bench.compare_report import WarmStart, main, write_report

    def warm(env):
        return WarmStart(env=env, student_dir="s", teacher_dir="t", student_steps=1, teacher_steps=2,
                         student_success={"valid_seen": 0.1, "valid_unseen": 0.2},
                         teacher_success={"valid_seen": 0.3, "valid_unseen": 0.4}, eval_episodes=10, wall_s=1.0)

    a, b = tmp_path / "a", tmp_path / "b"
    runs_a = [_run("grpo", 0, 0.2, 0.3), _run("opd", 0, 0.4, 0.5)]
    runs_b = [replace(r, env="F") for r in (_run("grpo", 0, 0.6, 0.7), _run("opd", 0, 0.1, 0.1))]
    write_report(a, runs_a, [warm("E")], command="cmd-a", config={"model": "m"})
    write_report(b, runs_b, [warm("F")], command="cmd-b", config={"model": "m"})
    assert main([str(a / "results.json"), str(b / "results.json"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["command"] == "cmd-a ; cmd-b"
    assert sorted((r["env"], r["method"]) for r in merged["runs"]) == [("E", "grpo"), ("E", "opd"), ("F", "grpo"), ("F", "opd")]
    assert {w["env"] for w in merged["warm_start"]} == {"E", "F"}
    report = (tmp_path / "m" / "report.md").read_text()
    assert "| E | opd | 1 | 40.0 | 50.0 | 45.0 [25.8, 65.8] (20) | +20.0 |" in report  # each env's delta is to its own grpo
    assert "| F | opd | 1 | 10.0 | 10.0 | 10.0 [2.8, 30.1] (20) | -55.0 |" in report
    assert (tmp_path / "m" / "curves.png").stat().st_size > 0
    assert main([str(a / "results.json"), str(a / "results.json"), "--out", str(tmp_path / "x")]) == 2
    assert "overlap" in capsys.readouterr().err and not (tmp_path / "x").exists()
    c = tmp_path / "c"  # more seeds from the same warm start: merged, the warm start kept once
    write_report(c, [_run("grpo", 1, 0.0, 0.1)], [warm("E")], command="cmd-c", config={"model": "m"})
    main([str(a / "results.json"), str(c / "results.json"), "--out", str(tmp_path / "s")])
    seeds = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(seeds["warm_start"]) == 1 and len(seeds["runs"]) == 3
    assert "| E | grpo | 2 | 10.0 ± 14.1 | 20.0 ± 14.1 |" in (tmp_path / "s" / "report.md").read_text()
    other_start = replace(warm("E"), student_dir="elsewhere")
    write_report(c, [_run("grpo", 1, 0.0, 0.1)], [other_start], command="cmd-c", config={"model": "m"})
    assert main([str(a / "results.json"), str(c / "results.json"), "--out", str(tmp_path / "y")]) == 2
    assert "warm starts ['E']" in capsys.readouterr().err and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):  # several inputs need --out
        main([str(a / "results.json"), str(b / "results.json")])


def test_report_refuses_unreadable_results_with_one_line(tmp_path, capsys):
    """Not JSON, JSON of another shape, a missing file: exit 2, the file named, nothing written."""
    from bench.compare_report import main

    (tmp_path / "trunc.json").write_text('{"runs": [')
    (tmp_path / "other.json").write_text('{"runs": [{"env": "E"}], "warm_start": []}')
    for name, why in [("trunc.json", "not JSON"), ("other.json", "not a comparison results.json"),
                      ("missing.json", "cannot read")]:
        assert main([str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name}: {why}") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_table_prints_intervals_and_resolvable_gaps():
    """Overall Wilson interval over pooled episodes; the gap vs GRPO from episodes or seed spread."""
    from bench.compare_report import resolvable_pts, summary_table
    from trainers.stats import resolvable_gap, wilson_interval

    runs = [_run("grpo", s, v, v) for s, v in enumerate((0.2, 0.4, 0.6))]
    runs += [_run("sod", s, 0.5, 0.5) for s in range(3)]
    grpo, sod = summarize(runs)
    n = grpo.pooled_n
    assert n == 3 * 2 * grpo.episodes
    assert grpo.overall_ci == wilson_interval(round(0.4 * n), n)
    # grpo's seed spread (std 0.2 over 3 seeds) dominates: 1.96·sqrt(0.04/3 + 0) = 0.2263
    assert resolvable_pts(sod, grpo) == pytest.approx(100 * 1.959964 * math.sqrt(0.04 / 3), abs=1e-3)
    flat = [_run("grpo", s, 0.5, 0.5) for s in range(3)] + [_run("sod", s, 0.5, 0.5) for s in range(3)]
    a, b = summarize(flat)  # no spread: the episode term alone
    assert resolvable_pts(b, a) == pytest.approx(100 * resolvable_gap(a.pooled_n, b.pooled_n))
    table = summary_table([grpo, sod], [])
    lo, hi = grpo.overall_ci
    assert f"40.0 [{100 * lo:.1f}, {100 * hi:.1f}] ({n})" in table and "resolvable gap" in table
