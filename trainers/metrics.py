"""Per-step metrics: into the store (``training_steps``), a CSV in the run directory, and
optionally TensorBoard / Weights & Biases when those packages are installed and enabled.

The CSV is rewritten from the in-memory rows on every log (a run has at most thousands of rows),
so columns that appear later (eval metrics) and resumes (rows after the checkpoint dropped) stay
consistent.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_csv"]


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
    ) -> None:
        self.csv_path = csv_path
        self.store, self.run_id = store, run_id
        self.rows: list[dict[str, float]] = read_csv(csv_path) if csv_path.exists() else []
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(csv_path.parent / "tensorboard"))
            except ImportError:
                self._tb = None
        if wandb:
            try:
                import wandb as _wandb

                self._wandb = _wandb.init(project="distillgym", name=run_name, config=config or {},
                                          resume="allow")
            except ImportError:
                self._wandb = None

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
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

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


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
