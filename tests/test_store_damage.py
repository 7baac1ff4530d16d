"""A logically damaged store: one line naming the damage, exit 2, the file untouched.

Real stores damaged with the sqlite3 module the way a person or a broken tool would (a dropped
table or column at the current schema version, invalid JSON in a row, a turn deleted), then read
by the real ``python -m data`` commands.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from subproc import ROOT, child_env
from test_store import make_episode

from data import CorruptDatabase, Store
from data.cli import main

DAMAGE = {
    "table": ("DROP TABLE checkpoints", "table 'checkpoints' is missing (schema "),
    "column": ("ALTER TABLE episodes DROP COLUMN privileged",
               "column(s) privileged of table 'episodes' missing"),
    "run json": ("UPDATE runs SET config = '{not json'", "runs.config of row 1 is not valid JSON"),
    "turn json": ("UPDATE turns SET info = '[1,' WHERE id = 2", "turns.info of row 2 is not valid JSON"),
    "turn count": ("DELETE FROM turns WHERE id = 2", "records 3 turns but turns [0, 2] are stored"),
}  # fmt: skip


def _damaged(tmp_path: Path, sql: str) -> Path:
    path = tmp_path / "damaged.db"
    with Store(path) as store:
        run_id = store.create_run("r", "grpo", {"lr": 1e-5}, 0)
        store.add_episodes(run_id, 0, [make_episode(np.random.default_rng(0))])
    raw = sqlite3.connect(path)
    raw.execute(sql)
    raw.commit()
    raw.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.db"]
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_one_line_exit_2_and_leaves_the_file_alone(tmp_path, capsys, kind) -> None:
    sql, expected = DAMAGE[kind]
    path = _damaged(tmp_path, sql)
    before = _digest(path)
    for argv in (["show", "r", "--episode", "0"], ["export", "r", "--out", str(tmp_path.parent / f"{tmp_path.name}-x.jsonl")]):
        assert main(["--db", str(path), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path} is damaged: "), err
        assert expected in err[0]
        assert _digest(path) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.db"]  # no -wal, -shm


def test_reading_an_episode_checks_its_turn_count(tmp_path) -> None:
    path = _damaged(tmp_path, "DELETE FROM turns WHERE id = (SELECT max(id) FROM turns)")
    with Store(path, read_only=True) as store:
        run_id = store.get_run("r").run_id
        for read in (lambda: store.episode_at(run_id, 0), lambda: list(store.episodes(run_id)),
                     lambda: store.load_batch(run_id)):
            with pytest.raises(CorruptDatabase, match=r"records 3 turns but turns \[0, 1\] are stored"):
                read()


def test_read_only_commands_leave_no_wal_or_shm_beside_a_healthy_store(tmp_path, capsys) -> None:
    path = _damaged(tmp_path, "SELECT 1")
    before = _digest(path)
    assert main(["--db", str(path), "show", "r", "--episode", "0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.db"] and _digest(path) == before
    with Store(path, read_only=True) as store, store._read_engine.connect() as conn:
        with pytest.raises(Exception, match="readonly|read-only|query_only|attempt to write"):
            conn.exec_driver_sql("DELETE FROM runs")  # SQLite itself refuses: query_only


def test_subprocess_cli_on_a_damaged_store(tmp_path) -> None:
    path = _damaged(tmp_path, DAMAGE["table"][0])
    out = subprocess.run([sys.executable, "-m", "data", "--db", str(path), "runs"], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "table 'checkpoints' is missing" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.db"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_stopped_by_a_damaged_row_leaves_no_file(tmp_path, capsys, fmt) -> None:
    path = tmp_path / "store.db"
    rng = np.random.default_rng(0)
    with Store(path) as store:
        run_id = store.create_run("r", "grpo", {"lr": 1e-5}, 0)
        store.add_episodes(run_id, 0, [make_episode(rng), make_episode(rng)])
    raw = sqlite3.connect(path)
    raw.execute("UPDATE turns SET info = '[1,' WHERE id = (SELECT max(id) FROM turns)")  # 2nd episode
    raw.commit()
    raw.close()
    out = tmp_path / "out" / f"r.{fmt}"
    assert main(["--db", str(path), "export", "r", "--format", fmt, "--out", str(out)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not out.parent.exists() or sorted(out.parent.iterdir()) == []
