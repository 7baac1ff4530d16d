"""Learning-curve PNG of a run, written when training ends: the same grouped panels as the report
(``data.curves``: outcome, learning, speed, then every other metric; eval points apart)."""

from __future__ import annotations

from pathlib import Path

from data.curves import curves_figure, group_panels, metric_series

__all__ = ["plot_learning_curve"]


def plot_learning_curve(rows: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Write the run's metric rows (one per step, with ``step``) as a PNG at ``path``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [(int(r["step"]), {k: v for k, v in r.items() if k != "step"}) for r in rows]
    panels = group_panels(metric_series(steps))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not panels:
        return path
    fig = curves_figure(panels)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
