"""Per-step metrics: into the store (``training_steps``), a CSV in the run directory, and any
experiment trackers named in ``report_to`` (``tensorboard``, ``wandb``, ``trackio``, ``mlflow``,
``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``), through accelerate's tracker classes.

A requested tracker whose package cannot be imported is a :class:`~trainers.config.ConfigError`
raised by :func:`parse_trackers` when the config is built, before any model is loaded; nothing is
silently skipped. TensorBoard event files go to ``<run_dir>/tensorboard/<project>``.

The CSV is rewritten from the in-memory rows on every log (a run has at most thousands of rows),
so columns that appear later (eval metrics) and resumes (rows after the checkpoint dropped) stay
consistent.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from trainers.config import ConfigError

__all__ = ["MetricsLogger", "TRACKERS", "parse_trackers", "read_csv"]

# accelerate's tracker names, and the package each one needs
TRACKERS: dict[str, str] = {
    "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
    "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive",
    "swanlab": "swanlab",
}


def parse_trackers(report_to: str, *, tensorboard: bool = False, wandb: bool = False) -> list[str]:
    """``"wandb,tensorboard"`` -> ``["wandb", "tensorboard"]``, checked: an unknown name or a
    tracker whose package cannot be imported raises a one-line ``ConfigError``.

    ``tensorboard``/``wandb``: the older ``log_tensorboard``/``log_wandb`` switches, added.
    """

    names = [n.strip().lower() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    names += [n for n, on in (("tensorboard", tensorboard), ("wandb", wandb)) if on]
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; expected some of {sorted(TRACKERS)}")
        import accelerate.utils

        if not getattr(accelerate.utils, f"is_{name}_available")():
            raise ConfigError(f"report_to: tracker {name!r} is requested but its package cannot be "
                              f"imported (pip install {TRACKERS[name]})")
    return names


class MetricsLogger:
    """Logs one dict of floats per step to every configured sink."""

    def __init__(
        self,
        csv_path: Path,
        *,
        store: Any = None,
        run_id: Any = None,
        tensorboard: bool = False,
        wandb: bool = False,
        run_name: str = "",
        config: dict[str, Any] | None = None,
        report_to: str = "",
        project: str = "distillgym",
    ) -> None:
        self.csv_path = csv_path
        self.store, self.run_id = store, run_id
        self.rows: list[dict[str, float]] = read_csv(csv_path) if csv_path.exists() else []
        self.trackers = [_start_tracker(name, project, run_name, csv_path.parent, config or {})
                         for name in parse_trackers(report_to, tensorboard=tensorboard, wandb=wandb)]

    def truncate(self, after_step: int) -> None:
        """Forget rows with ``step > after_step`` (resume from a checkpoint)."""
        self.rows = [r for r in self.rows if r["step"] <= after_step]
        self._write_csv()

    def log(self, step: int, metrics: dict[str, float], policy_version: int = 0) -> None:
        clean = {k: _num(v) for k, v in metrics.items()}
        row = {"step": step, **clean}
        self.rows = [r for r in self.rows if r["step"] != step] + [row]
        self._write_csv()
        if self.store is not None:
            self.store.log_step(self.run_id, step, {k: v for k, v in clean.items() if math.isfinite(v)},
                                policy_version=policy_version)
        for tracker in self.trackers:
            tracker.log({k: v for k, v in clean.items() if math.isfinite(v)}, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.csv_path.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.csv_path)


def read_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as dicts of floats (``step`` as int; empty cells skipped)."""
    with path.open(newline="") as fh:
        rows = []
        for raw in csv.DictReader(fh):
            row: dict[str, float] = {k: float(v) for k, v in raw.items() if v not in ("", None)}
            row["step"] = int(row["step"])
            rows.append(row)
        return rows


def _start_tracker(name: str, project: str, run_name: str, run_dir: Path,
                   config: dict[str, Any]) -> Any:
    """One accelerate tracker, started, with the run's config as its hyper-parameters."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    kwargs: dict[str, Any] = {"name": run_name} if name in ("wandb", "trackio") and run_name else {}
    if cls.requires_logging_directory:
        tracker = cls(project, str(run_dir / name), **kwargs)
    else:
        tracker = cls(project, **kwargs)
    tracker.start()
    # trackers take scalars as hyper-parameters: nested values go as JSON text, None as ""
    tracker.store_init_configuration({
        k: v if isinstance(v, (bool, int, float, str)) else "" if v is None else json.dumps(v, default=str)
        for k, v in config.items()})
    return tracker


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
