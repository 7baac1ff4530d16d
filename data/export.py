"""Export a run's episodes: JSON lines, Parquet, or a Hugging Face ``datasets`` dataset on disk.

All three hold the same records: one row per episode, with its fields and a ``turns`` list whose
items hold every ``Turn`` field (token ids as int lists, log-probs as floats). JSONL round-trips
through :func:`episode_from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agents.types import Episode, Turn

__all__ = ["FORMATS", "episode_to_dict", "episode_from_dict", "export_episodes"]

FORMATS = ("jsonl", "parquet", "hf")


def episode_to_dict(episode: Episode, run: str = "", step: int | None = None) -> dict[str, Any]:
    """An episode as a plain JSON-safe dict (``info`` dicts are serialized to JSON strings
    so that Parquet/Arrow get one fixed schema)."""
    d = dataclasses.asdict(episode)
    d["info"] = json.dumps(d["info"])
    for t in d["turns"]:
        t["info"] = json.dumps(t["info"])
    return {"run": run, "step": step, **d}


def episode_from_dict(d: dict[str, Any]) -> Episode:
    """Inverse of :func:`episode_to_dict`."""
    fields = {f.name for f in dataclasses.fields(Episode)}
    kw = {k: v for k, v in d.items() if k in fields}
    kw["info"] = json.loads(kw.get("info") or "{}")
    kw["turns"] = [
        Turn(**{**t, "info": json.loads(t.get("info") or "{}")}) for t in d.get("turns", [])
    ]
    return Episode(**kw)


def _rows(episodes: Iterable[tuple[int, Episode]], run: str) -> Iterator[dict[str, Any]]:
    for step, ep in episodes:
        yield episode_to_dict(ep, run, step)


def export_episodes(
    episodes: Iterable[tuple[int, Episode]], out: str | Path, fmt: str, run: str = ""
) -> int:
    """Write ``(step, episode)`` pairs to ``out`` in ``fmt``; returns the number of episodes written.

    ``jsonl`` and ``parquet`` write a file; ``hf`` writes a ``datasets.Dataset.save_to_disk`` folder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        n = 0
        with out.open("w", encoding="utf-8") as f:
            for row in _rows(episodes, run):
                f.write(json.dumps(row) + "\n")
                n += 1
        return n
    rows = list(_rows(episodes, run))
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(out))
    return len(rows)
