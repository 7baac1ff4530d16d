"""Export a run's episodes: JSON lines, Parquet, or a Hugging Face ``datasets`` dataset on disk.

All three hold the same records: one row per episode, with its fields and a ``turns`` list whose
items hold every ``Turn`` field (token ids as int lists, log-probs as floats). JSONL round-trips
through :func:`episode_from_dict`.

Every method exports one schema (:func:`export_schema`, derived from the ``Episode``/``Turn``
dataclasses): method-specific fields (``teacher_logprobs``, ``token_weights``, ``privileged``, the typed
privileged texts)
are nullable columns of a fixed type, never inferred from the data, so the Parquet files and HF
datasets of an SFT run and of an OPD run concatenate (``datasets.concatenate_datasets``).
``info`` dicts are JSON strings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agents.types import Episode, PrivilegedTexts, Turn

__all__ = ["FORMATS", "episode_to_dict", "episode_from_dict", "export_episodes", "export_schema",
           "export_features"]

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
    if kw.get("privileged_span") is not None:
        kw["privileged_span"] = tuple(kw["privileged_span"])
    kw["final_privileged"] = _privileged(kw.get("final_privileged"))
    kw["turns"] = [
        Turn(**{**t, "info": json.loads(t.get("info") or "{}"), "privileged": _privileged(t.get("privileged"))})
        for t in d.get("turns", [])
    ]
    return Episode(**kw)


def _privileged(d: dict[str, Any] | None) -> PrivilegedTexts | None:
    return None if d is None else PrivilegedTexts(**d)


def _rows(episodes: Iterable[tuple[int, Episode]], run: str) -> Iterator[dict[str, Any]]:
    for step, ep in episodes:
        yield episode_to_dict(ep, run, step)


def _arrow_type(hint: Any) -> Any:
    """The Arrow type of one dataclass field's annotation (``X | None`` is nullable ``X``)."""
    import pyarrow as pa

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _arrow_type(inner)
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    if origin is tuple:  # a fixed-size tuple of one type (privileged_span)
        return pa.list_(_arrow_type(args[0]))
    if origin is dict or hint is dict:
        return pa.string()  # JSON text
    simple = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    if hint in simple:
        return simple[hint]
    if hint is Turn:
        return pa.struct(_fields(Turn))
    if hint is PrivilegedTexts:
        return pa.struct(_fields(PrivilegedTexts))
    raise TypeError(f"no export type for annotation {hint!r}")


def _fields(cls: type) -> list[Any]:
    import pyarrow as pa

    hints = typing.get_type_hints(cls)
    return [pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(cls)]


def export_schema() -> Any:
    """The one ``pyarrow.Schema`` of every export: ``run``, ``step`` and the ``Episode`` fields."""
    import pyarrow as pa

    return pa.schema([pa.field("run", pa.string()), pa.field("step", pa.int64()), *_fields(Episode)])


def export_features() -> Any:
    """:func:`export_schema` as ``datasets.Features``."""
    import datasets

    return datasets.Features.from_arrow_schema(export_schema())


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
    if fmt in ("jsonl", "parquet"):
        # A damaged row raises midway: write beside ``out`` and rename, so no partial file is left.
        partial = out.with_name(f".{out.name}.partial")
        try:
            n = _write_file(episodes, run, fmt, partial)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
        return n
    import datasets

    rows = list(_rows(episodes, run))  # every row is read before the folder is written
    datasets.Dataset.from_list(rows, features=export_features()).save_to_disk(str(out))
    return len(rows)


def _write_file(episodes: Iterable[tuple[int, Episode]], run: str, fmt: str, path: Path) -> int:
    if fmt == "jsonl":
        n = 0
        with path.open("w", encoding="utf-8") as f:
            for row in _rows(episodes, run):
                f.write(json.dumps(row) + "\n")
                n += 1
        return n
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(_rows(episodes, run))
    pq.write_table(pa.Table.from_pylist(rows, schema=export_schema()), path)
    return len(rows)
