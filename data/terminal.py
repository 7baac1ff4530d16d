"""Terminal views of the per-token teacher-student log-ratio (``python -m data show --logratio``).

The colours are the HTML report's (:func:`data.report.heat_color`): red where the teacher finds
the sampled token less likely than the student did, green where more, stronger with ``|r|``,
saturating at ``|r| = 4``. Only trained tokens (``loss_mask == 1``) are coloured and averaged;
tokens the renderer appended (a closing end-of-turn) are dimmed and marked "not trained".
Imports rich lazily, like the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data.report import LEGEND_STOPS, log_ratios, trained_log_ratios

__all__ = ["heat_style", "logratio_legend", "logratio_view"]

_WHITE, _RED, _GREEN = (255, 255, 255), (220, 50, 47), (64, 160, 43)


def heat_style(r: float, scale: float = 4.0) -> str:
    """A rich style: black text on white blended towards red (r < 0) or green (r > 0) by |r|/scale."""
    if r != r:  # NaN
        return "black on grey50"
    a = min(abs(r) / scale, 1.0) * 0.85
    target = _RED if r < 0 else _GREEN
    rgb = ",".join(str(round(w + (t - w) * a)) for w, t in zip(_WHITE, target))
    return f"black on rgb({rgb})"


def logratio_legend() -> Any:
    """One line: the colour scale, and how untrained tokens look."""
    from rich.text import Text

    line = Text("log-ratio colour scale: ")
    for r in LEGEND_STOPS:
        line.append(f" {r:+g} ", style=heat_style(r))
        line.append(" ")
    line.append(" (saturates at ±4)  ")
    line.append("[eot]", style="dim")
    line.append(" not trained")
    return line


def logratio_view(turn: Any, texts: Sequence[str]) -> list[Any]:
    """Renderables for one turn: the coloured token line, a per-token table and the trained mean."""
    from rich.table import Table
    from rich.text import Text

    ratios = log_ratios(turn.sampler_logprobs, turn.teacher_logprobs)
    if ratios is None:
        return [Text("  (no teacher log-probs for this turn)", style="dim")]
    line = Text("  ")
    table = Table("token", "student logp", "teacher logp", "log-ratio", box=None, padding=(0, 1))
    for tok, s, te, r, m in zip(texts, turn.sampler_logprobs, turn.teacher_logprobs or [],
                                ratios, turn.loss_mask):
        if m:
            line.append(tok, style=heat_style(r))
            table.add_row(Text(repr(tok)), f"{s:.3f}", f"{te:.3f}",
                          Text(f"{r:+.3f}", style=heat_style(r)))
        else:
            line.append(tok, style="dim")
            table.add_row(Text(repr(tok), style="dim"), "-", "-", Text("not trained", style="dim"))
    trained = trained_log_ratios(turn) or []
    mean = Text(
        f"  mean log-ratio {sum(trained) / len(trained):+.3f} over {len(trained)} trained tokens"
        if trained else "  no trained tokens",
        style="bold",
    )
    return [line, table, mean]
