"""Learning-curve plot of a run: reward, success rate, KL and loss per step (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_learning_curve", "PANELS"]

PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward / success", ("reward", "success_rate", "eval/success_rate")),
    ("KL / |l|", ("kl_teacher", "abs_l", "kl_ref", "kl_old")),
    ("loss", ("loss",)),
    ("entropy", ("entropy",)),
)


def plot_learning_curve(rows: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Write a 2x2 PNG of the metrics in ``PANELS`` that the rows contain; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, (name, keys) in zip(axes.flat, PANELS):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
