"""``python -m trainers``: every user error is one ``error:`` line, before any model loads.

The student model in these commands is a directory whose ``config.json`` is not a model: it passes
the path check, but loading it would fail with another error. So an error about anything else
proves the check ran before the model was loaded. The store, the env and the runs are real.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from subproc import ROOT, child_env

from data import Store
from trainers.cli import main
from trainers.config import ConfigError, config_to_dict, dump_yaml, parse_config
from trainers.methods import get_method
from trainers.validate import validate_before_load


@pytest.fixture
def base(tmp_path: Path) -> list[str]:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not a model config")
    return [f"model={broken}", f"output_dir={tmp_path / 'runs'}", "progress=false"]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one ``error:`` line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["env_kwargs={colour: red}"], "does not take 'colour'; it takes difficulty"),
        (["env=DistillGym/Calculator-v0", "env_kwargs={difficulty: 7}"], "difficulty must be 1, 2 or 3"),
        (["train_split=test"], "train_split: unknown split 'test'"),
        (["eval_every=1", "eval_split=test"], "eval_split: 'test' is not allowed"),
        (["teacher=/no/such/teacher"], "teacher: '/no/such/teacher' is neither a bundled model"),
        (["lr=nan"], "lr: must be a finite number, got nan"),
        (["temperature=inf"], "temperature: must be a finite number, got inf"),
        (["group_size=-2"], "group_size: must be >= 0, got -2"),
        (["seed=-1"], "seed: must be >= 0, got -1"),
        (["weight_decay=-0.5"], "weight_decay: must be >= 0, got -0.5"),
        (["lora_dropout=1.5"], "lora_dropout=1.5 must be in [0, 1)"),
        (["store=postgresql://user:secret@127.0.0.1:1/db"], "store: cannot reach postgresql://user:***@"),
        (["store=nosuchdb://host/x"], "store: cannot open nosuchdb://host/x"),
    ],
)
def test_bad_settings_are_one_line(capsys, base, args, expected) -> None:
    line = _error(capsys, ["grpo", *base, *args])
    assert expected in line and "secret" not in line


def test_a_store_that_is_not_a_database(capsys, base, tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database " * 100)
    assert "is not a readable database" in _error(capsys, ["grpo", *base, f"store={text}"])
    assert text.read_text() == "not a database " * 100


def test_malformed_yaml_is_one_line_with_file_line_and_column(capsys, base, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nlr: [1, 2\nfoo: bar\n")
    line = _error(capsys, ["grpo", "--config", str(bad), *base])
    assert f"config file {bad}, line 3, column 4: not valid YAML" in line
    assert "nan" in _error(capsys, ["grpo", "--config", _yaml(tmp_path, "lr: .nan\n"), *base])


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def _stored_run(tmp_path: Path, base: list[str], name: str, *extra: str) -> Path:
    """A run as the trainer records it: its row in the store and its config.yaml."""
    cfg = parse_config(get_method("grpo").config_cls, [*base, f"run_name={name}", "method=grpo", *extra])
    with Store(tmp_path / "runs" / "distillgym.db") as store:
        store.create_run(name, "grpo", {**config_to_dict(cfg), "store_url": store.url}, seed=0)
    path = tmp_path / "runs" / name / "config.yaml"
    dump_yaml(cfg, path)
    return path


def test_resume_of_a_missing_run_names_the_runs_that_exist(capsys, base, tmp_path: Path) -> None:
    _stored_run(tmp_path, base, "first")
    _stored_run(tmp_path, base, "second")
    line = _error(capsys, ["grpo", *base, "run_name=ghost", "resume=true"])
    assert "resume: no run 'ghost'" in line and "runs there: first, second" in line


def test_an_existing_run_is_refused_and_left_unchanged(capsys, base, tmp_path: Path) -> None:
    config_yaml = _stored_run(tmp_path, base, "done", "group_size=4")
    before = config_yaml.read_bytes()
    line = _error(capsys, ["grpo", *base, "run_name=done", "group_size=16"])
    assert "run 'done' already exists" in line and "resume=true" in line
    assert config_yaml.read_bytes() == before
    with sqlite3.connect(tmp_path / "runs" / "distillgym.db") as raw:
        assert raw.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_resume_with_other_settings_names_the_fields(capsys, base, tmp_path: Path) -> None:
    config_yaml = _stored_run(tmp_path, base, "r", "group_size=4", "lr=1e-5")
    before = config_yaml.read_bytes()
    line = _error(capsys, ["grpo", *base, "run_name=r", "resume=true", "group_size=16", "lr=3e-5"])
    assert "resume: run 'r' was started with other settings" in line
    assert "group_size (4 -> 16)" in line and "lr (1e-05 -> 3e-05)" in line
    assert config_yaml.read_bytes() == before
    # steps and logging may change on resume: those pass the checks
    cfg = parse_config(get_method("grpo").config_cls,
                       [*base, "run_name=r", "resume=true", "group_size=4", "lr=1e-5", "method=grpo",
                        "steps=40", "progress=true", "log_tensorboard=true"])
    validate_before_load(cfg)
    with pytest.raises(ConfigError, match=r"other settings: seed \(0 -> 3\); only .*progress.*steps"):
        validate_before_load(parse_config(get_method("grpo").config_cls,
                                          [*base, "run_name=r", "resume=true", "method=grpo", "seed=3"]))


def test_subprocess_prints_one_line_and_exits_2(base) -> None:
    out = subprocess.run([sys.executable, "-m", "trainers", "grpo", *base, "env_kwargs={colour: red}"],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "'colour'" in out.stderr
