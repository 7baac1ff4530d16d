"""``python -m data``: CLI smoke runs of every command, replay of household episodes, the HTML
report's escaping, and one-line errors on bad input.

Stored episodes are played by the household env's expert (no model); their token arrays are
synthetic (the bytes of the action text), so the CLI is run with ``--tokenizer none``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from subproc import child_env

from agents.types import EndReason, Episode, Turn
from data import Store
from data.cli import main
from data.export import episode_from_dict
from data.replay import replay_episode

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "DistillGym/Household-v0"
EVIL = '<script>alert("x")</script><img src=x onerror="alert(1)"> & </pre><b>'


def play_expert(task_id: str, seed: int, rng: np.random.Generator) -> Episode:
    """One expert episode in the household env, recorded as the rollout would record it."""
    import envs

    env = envs.make(ENV_ID)
    obs0, info = env.reset(seed=seed, options={"task_id": task_id})
    turns: list[Turn] = []
    context = [1, 2, 3] + list(obs0.encode()[:20])
    done = False
    while not done:
        action = env.unwrapped.expert_action()
        obs, reward, terminated, truncated, step_info = env.step(action)
        completion = list(action.encode())
        n = len(completion)
        turns.append(
            Turn(
                index=len(turns),
                prompt_ids=context,
                completion_ids=completion,
                sampler_logprobs=(-rng.exponential(size=n)).astype(np.float32).tolist(),
                loss_mask=[1] * n,
                action_text=action,
                action=action,
                action_valid=bool(step_info["action_valid"]),
                observation=obs,
                reward=float(reward),
                terminated=terminated,
                truncated=truncated,
                teacher_logprobs=(-rng.exponential(size=n)).astype(np.float32).tolist(),
            )
        )
        context = context + completion + list(obs.encode()[:10])
        done = terminated or truncated
    env.close()
    return Episode(
        env_id=ENV_ID,
        task_id=task_id,
        seed=seed,
        turns=turns,
        task_type=info["task_type"],
        reward=sum(t.reward for t in turns),
        won=bool(step_info["won"]),
        end_reason=EndReason.TERMINATED if turns[-1].terminated else EndReason.TRUNCATED,
        initial_observation=obs0,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import envs

    path = tmp_path_factory.mktemp("cli") / "runs.db"
    rng = np.random.default_rng(0)
    task_ids = envs.make(ENV_ID).unwrapped.task_ids("train", 3)
    with Store(path) as store:
        run_id = store.create_run("hh", "opd", {"model": "none"}, seed=0)
        skill = store.add_skill(run_id, task_ids[0], {"text": "look in the fridge first"}, step=0)
        for step, tid in enumerate(task_ids):
            ep = play_expert(tid, seed=step, rng=rng)
            if step == 0:
                ep.info["skill_id"] = skill
            store.add_episodes(run_id, step, [ep])
            store.log_step(
                run_id, step, {"loss": 1.0 / (step + 1), "kl": 0.1 * step}, policy_version=step
            )
        evil_id = store.create_run("evil" + EVIL, "grpo", {"note": EVIL}, seed=1)
        t = Turn(
            0,
            [1, 2],
            [60, 115, 99],
            [-0.1, -0.2, -0.3],
            [1, 1, 1],
            EVIL,
            EVIL,
            False,
            observation=EVIL,
            teacher_logprobs=[-2.0, -0.2, 0.0],
            info={"x": EVIL},
        )
        store.add_episodes(
            evil_id,
            0,
            [Episode(ENV_ID, EVIL, 0, turns=[t], task_type=EVIL, initial_observation=EVIL)],
        )
        store.log_step(evil_id, 0, {"loss": 0.5})
    return path


def run_cli(db: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "data", "--db", str(db), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


# ---------------------------------------------------------------------- replay
def test_stored_household_episodes_replay_exactly(db: Path) -> None:
    with Store(db, read_only=True) as store:
        episodes = list(store.episodes(store.get_run("hh").run_id))
    assert len(episodes) == 3 and all(ep.won and ep.num_turns >= 2 for ep in episodes)
    for ep in episodes:
        result = replay_episode(ep)
        assert result.ok and result.turns_checked == ep.num_turns
    ep = episodes[1]
    ep.turns[1].observation += " (edited)"
    result = replay_episode(ep)
    assert not result.ok and result.turns_checked == 1
    assert (result.divergence.turn, result.divergence.field) == (1, "observation")
    ep.initial_observation = "another room"
    assert replay_episode(ep).divergence.turn == -1


def test_cli_replay_reports_first_divergence(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = run_cli(db, "replay", "hh", "--episode", "2")
    assert ok.returncode == 0 and "replay ok" in ok.stdout, ok.stderr
    tampered = tmp_path / "tampered.db"
    tampered.write_bytes(db.read_bytes())
    with sqlite3.connect(tampered) as raw:
        raw.execute(
            "UPDATE turns SET observation = 'Nothing happens.' WHERE \"index\" = 1 AND episode_id = "
            "(SELECT id FROM episodes WHERE run_id = (SELECT id FROM runs WHERE name = 'hh') ORDER BY id LIMIT 1 OFFSET 2)"
        )
    assert main(["--db", str(tampered), "replay", "hh", "--episode", "2"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "turn 1: observation differs" in out and "Nothing happens." in out


# ---------------------------------------------------------------------- inspection
def test_cli_runs_and_show(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = run_cli(db, "runs")
    assert runs.returncode == 0, runs.stderr
    assert "hh" in runs.stdout and "opd" in runs.stdout and "100.0% (step 2)" in runs.stdout
    listing = run_cli(db, "show", "hh")
    assert listing.returncode == 0 and "pick" in listing.stdout or "put" in listing.stdout, (
        listing.stdout
    )
    with Store(db, read_only=True) as store:
        ep = store.episode_at(store.get_run("hh").run_id, 0)
    show = run_cli(db, "show", "hh", "--episode", "0", "--logratio", "--tokenizer", "none")
    assert show.returncode == 0, show.stderr
    assert ep.initial_observation.splitlines()[0] in show.stdout
    assert all(
        t.action_text in show.stdout and t.observation.splitlines()[0] in show.stdout
        for t in ep.turns
    )
    assert "log-ratio" in show.stdout and "look in the fridge first" in show.stdout
    t0 = ep.turns[0]
    assert f"{t0.teacher_logprobs[0] - t0.sampler_logprobs[0]:+.3f}" in show.stdout


def test_cli_export_formats_round_trip(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "hh.jsonl"
    res = run_cli(db, "export", "hh", "--format", "jsonl", "--out", str(out))
    assert res.returncode == 0 and "exported 3 episodes" in res.stdout, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with Store(db, read_only=True) as store:
        stored = list(store.episodes(store.get_run("hh").run_id))
    assert [episode_from_dict(r) for r in rows] == stored and [r["step"] for r in rows] == [0, 1, 2]

    import datasets
    import pyarrow.parquet as pq

    assert (
        main(
            [
                "--db",
                str(db),
                "export",
                "hh",
                "--format",
                "parquet",
                "--out",
                str(tmp_path / "hh.parquet"),
            ]
        )
        == 0
    )
    table = pq.read_table(tmp_path / "hh.parquet")
    assert table.num_rows == 3 and table.column("task_id").to_pylist() == [
        e.task_id for e in stored
    ]
    assert (
        main(
            [
                "--db",
                str(db),
                "export",
                "hh",
                "--format",
                "hf",
                "--out",
                str(tmp_path / "hh-hf"),
                "--step",
                "1",
            ]
        )
        == 0
    )
    ds = datasets.load_from_disk(str(tmp_path / "hh-hf"))
    assert len(ds) == 1 and ds[0]["turns"][0]["completion_ids"] == stored[1].turns[0].completion_ids


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_cli_report_is_inert_with_hostile_text(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "evil.html"
    res = run_cli(db, "report", "evil" + EVIL, "--out", str(out), "--tokenizer", "none")
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    parser = _Tags()
    parser.feed(page)
    tags = {t for t, _ in parser.tags}
    assert tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "h3",
        "p",
        "details",
        "summary",
        "pre",
        "img",
        "table",
        "tr",
        "th",
        "td",
        "div",
        "span",
        "sub",
        "a",  # the section links and the transcript index
    }
    for tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "a":
            assert attrs["href"].startswith("#"), attrs  # links stay inside the page
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    assert sum(t == "img" for t, _ in parser.tags) == 1  # the learning curves
    assert (
        page.count('class="tok"') == 3 and "rgba(220,50,47" in page
    )  # heatmap: red where teacher < student

    hh = tmp_path / "hh.html"
    assert main(["--db", str(db), "report", "hh", "--out", str(hh), "--tokenizer", "none"]) == 0
    assert "pick_" in hh.read_text() and "100.0%" in hh.read_text()


# ---------------------------------------------------------------------- bad input
def test_cli_errors_are_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = run_cli(db, "show", "no-such-run")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "no run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    res = run_cli(junk, "runs")
    assert (
        res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    )
    assert main(["--db", str(tmp_path / "nothing.db"), "runs"]) == 2
    assert main(["--db", str(db), "show", "hh", "--episode", "99"]) == 2


def test_cli_inspects_a_read_only_database(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = tmp_path / "ro.db"
    ro.write_bytes(db.read_bytes())
    ro.chmod(0o444)
    try:
        assert main(["--db", str(ro), "runs"]) == 0
        assert "hh" in capsys.readouterr().out
        assert (
            main(["--db", f"sqlite:///file:{ro}?mode=ro&uri=true", "show", "hh", "--episode", "1"])
            == 0
        )
    finally:
        ro.chmod(0o644)
