"""The report's learning curves: every logged metric, grouped into panels, drawn as one PNG.

Panels are grouped by what a reader asks of a run:

* **Outcome** -- did it get better? success rate, reward, turns (and per-task-type eval success);
* **Learning** -- is the optimisation healthy? loss, KL terms, entropy, clip fraction;
* **Speed** -- where does the time go? tokens/s and the per-step time split;
* **Other** -- every remaining numeric metric (grad norm, learning rate, token counts, ...), one
  panel each, so nothing that was logged is hidden.

Training points (the metrics of the step's own rollouts) are drawn as blue lines with dots;
evaluation points (``eval/...`` metrics, logged every ``eval_every`` steps) as orange squares on
a dashed line, in the same panel as their training counterpart. The step axis has integer ticks.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Panel", "GROUPS", "EVAL_PREFIX", "group_panels", "metric_series", "curves_png",
           "curves_figure"]

EVAL_PREFIX = "eval/"
TIME_SPLIT = ("time_rollout_s", "time_score_s", "time_loss_s", "time_optim_s")

# (group, ((panel title, metric names in the panel), ...)); eval/<name> joins <name>'s panel.
GROUPS: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    ("Outcome", (
        ("success rate", ("success_rate",)),
        ("reward", ("reward",)),
        ("turns", ("turns",)),
    )),
    ("Learning", (
        ("loss", ("loss", "pg_loss", "nll")),
        ("KL", ("kl_teacher", "kl_ref", "kl_old", "abs_l")),
        ("entropy", ("entropy",)),
        ("clip fraction", ("clip_frac",)),
    )),
    ("Speed", (
        ("tokens/s", ("tokens_per_s",)),
        ("time split (s/step)", (*TIME_SPLIT, "time_step_s")),
    )),
)

Series = tuple[list[int], list[float]]


@dataclass
class Panel:
    """One axes of the figure: a title and the metrics it draws (training and eval series)."""

    group: str
    title: str
    train: dict[str, Series] = field(default_factory=dict)
    eval: dict[str, Series] = field(default_factory=dict)
    stacked: bool = False  # the time split: an area per phase, the step total as a line

    @property
    def metrics(self) -> list[str]:
        return [*self.train, *(EVAL_PREFIX + k for k in self.eval)]


def metric_series(steps: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Series]:
    """``{metric: (steps, values)}`` over every finite numeric metric (bools excluded)."""
    series: dict[str, Series] = {}
    for step, metrics in steps:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(int(step))
                ys.append(float(v))
    return series


def group_panels(series: Mapping[str, Series]) -> list[Panel]:
    """Every series placed in exactly one panel, in :data:`GROUPS` order, then "Other"."""
    left = dict(series)
    panels: list[Panel] = []

    def take(panel: Panel, name: str) -> None:
        if name in left:
            panel.train[name] = left.pop(name)
        if EVAL_PREFIX + name in left:
            panel.eval[name] = left.pop(EVAL_PREFIX + name)

    for group, specs in GROUPS:
        for title, names in specs:
            panel = Panel(group, title, stacked=title.startswith("time split"))
            for name in names:
                take(panel, name)
            if panel.train or panel.eval:
                panels.append(panel)
        if group == "Outcome":  # eval success per task type: one panel, a line per type
            by_type = Panel(group, "eval success by task type")
            for name in sorted(k for k in left if k.startswith(EVAL_PREFIX + "success/")):
                by_type.eval[name[len(EVAL_PREFIX):]] = left.pop(name)
            if by_type.eval:
                panels.append(by_type)
    for name in sorted(k for k in left if not k.startswith(EVAL_PREFIX)):
        panel = Panel("Other", name)
        take(panel, name)
        panels.append(panel)
    for name in sorted(left):  # eval metrics without a training counterpart
        panel = Panel("Other", name)
        panel.eval[name[len(EVAL_PREFIX):]] = left.pop(name)
        panels.append(panel)
    return panels


_COLS = 4


def curves_png(panels: Sequence[Panel], dpi: int = 80) -> bytes | None:
    """:func:`curves_figure` as PNG bytes; None without panels."""
    if not panels:
        return None
    import matplotlib.pyplot as plt

    fig = curves_figure(panels)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def curves_figure(panels: Sequence[Panel]) -> Any:
    """A matplotlib figure: a block of rows per group (titled with the group), a panel per axes,
    every x axis spanning the run's steps with integer ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups: dict[str, list[Panel]] = {}
    for p in panels:
        groups.setdefault(p.group, []).append(p)
    every_step = [x for p in panels for xs, _ in (*p.train.values(), *p.eval.values()) for x in xs]
    lo, hi = min(every_step), max(every_step)
    pad = max(0.5, 0.03 * (hi - lo))  # every panel spans the run's steps, so they line up
    rows = [math.ceil(len(ps) / _COLS) for ps in groups.values()]
    heights = [2.6 * r + 0.4 for r in rows]
    fig = plt.figure(figsize=(4 * _COLS, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(groups), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (group, ps), n_rows in zip(subfigs, groups.items(), rows):
        sub.suptitle(group, fontsize=12, fontweight="bold", x=0.01, ha="left")
        axes = list(sub.subplots(n_rows, _COLS, squeeze=False).flat)
        for ax, panel in zip(axes, ps):
            _draw(ax, panel)
            ax.set_xlim(lo - pad, hi + pad)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False)
        for ax in axes[len(ps):]:
            ax.axis("off")
    return fig


def _draw(ax: Any, panel: Panel) -> None:
    if panel.stacked:
        _draw_time_split(ax, panel)
    else:
        one_train = len(panel.train) == 1
        for k, (xs, ys) in panel.train.items():
            ax.plot(xs, ys, marker="." if len(xs) < 60 else None,
                    label="train" if one_train else f"train {k}")
        for k, (xs, ys) in panel.eval.items():
            alone = (one_train and k in panel.train) or (not panel.train and k == panel.title)
            ax.plot(xs, ys, ls="--", marker="s", ms=5, color="tab:orange" if alone else None,
                    label="eval" if alone else f"eval {k.removeprefix('success/')}")
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if len(panel.train) + len(panel.eval) > 1 or panel.eval:
        ax.legend(fontsize=7)


def _draw_time_split(ax: Any, panel: Panel) -> None:
    """The phases stacked (an area each, where they share the steps), the step total as a line."""
    parts = [k for k in TIME_SPLIT if k in panel.train]
    stacked: list[str] = []
    if parts:
        xs = panel.train[parts[0]][0]
        stacked = [k for k in parts if panel.train[k][0] == xs]
        ax.stackplot(xs, *[panel.train[k][1] for k in stacked], alpha=0.8,
                     labels=[k.removeprefix("time_").removesuffix("_s") for k in stacked])
    for k, (xs, ys) in panel.train.items():
        if k not in stacked:
            ax.plot(xs, ys, color="black", lw=1, marker=".",
                    label=k.removeprefix("time_").removesuffix("_s"))
