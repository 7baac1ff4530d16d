"""The trajectory store: every rollout of every run, recorded for inspection, replay and training.

``Store(url_or_path)`` opens (and migrates) a database; a plain path means SQLite. It takes and
returns the records of ``agents/types.py`` (``Episode``/``Turn``) and ``data/types.py``; ORM rows
never leave this package. Writes that training issues often (episodes, step metrics, skill uses)
go through a background writer thread (:mod:`data.writer`) so they never stall training; reads
first wait for this store's own pending writes. Objects crossing processes carry ``store.url``,
never a ``Store`` or a connection::

    store = Store("runs/distillgym.db")
    run_id = store.create_run("opd-household", "opd", config, seed=0)
    store.add_episodes(run_id, step, episodes)        # returns at once, fills episode_id
    store.log_step(run_id, step, {"loss": 0.1}, policy_version=step)
    batch = store.load_batch(run_id, step=step)       # padded tensors for the trainer
    store.close()                                     # commits what is pending
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import logging
import operator
import os
import subprocess
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    case,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

from agents.types import Episode
from data import convert, migrate
from data import engine as engines
from data.engine import (
    is_busy_error,
    is_read_only_target,
    make_engine,
    resolve_url,
    retry_busy,
    sqlite_path,
)
from data.errors import (
    CorruptDatabase,
    EpisodeNotFound,
    LedgerError,
    ReadOnlyStore,
    RunExistsError,
    RunNotFound,
    SchemaOutdated,
    StoreBusy,
    StoreError,
)
from data.models import (
    CheckpointRow,
    EpisodeRow,
    LedgerRow,
    RunRow,
    SkillRow,
    StepRow,
    TurnRow,
)
from data.types import (
    CheckpointRecord,
    LedgerEntry,
    LedgerStatus,
    RunRecord,
    RunStatus,
    RunSummary,
    SkillRecord,
)
from data.writer import BackgroundWriter, WriteJob

__all__ = ["Store", "DEFAULT_DB", "default_db"]

log = logging.getLogger(__name__)

DEFAULT_DB = "runs/distillgym.db"
RUNS: Table = RunRow.__table__  # type: ignore[assignment]
STEPS: Table = StepRow.__table__  # type: ignore[assignment]
EPISODES: Table = EpisodeRow.__table__  # type: ignore[assignment]
TURNS: Table = TurnRow.__table__  # type: ignore[assignment]
SKILLS: Table = SkillRow.__table__  # type: ignore[assignment]
CHECKPOINTS: Table = CheckpointRow.__table__  # type: ignore[assignment]
LEDGER: Table = LedgerRow.__table__  # type: ignore[assignment]
_READ_CHUNK = 256  # episodes fetched per query while iterating
_OPEN_STORES: weakref.WeakSet[Store] = weakref.WeakSet()


def default_db() -> str:
    """``$DISTILLGYM_DB`` or ``runs/distillgym.db``."""
    return os.environ.get("DISTILLGYM_DB", DEFAULT_DB)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the DistillGym checkout (``+dirty`` if modified), else the package version."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("distillgym")
        except PackageNotFoundError:
            return "unknown"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be JSON-serializable: {exc}") from exc


class Store:
    """A trajectory store on any SQLAlchemy URL (a plain path means SQLite).

    ``read_only=None`` opens read-only when the URL says so (``mode=ro``) or the SQLite file has no
    write permission; a read-only store never migrates and refuses writes with
    :class:`~data.errors.ReadOnlyStore`.
    """

    def __init__(
        self,
        url_or_path: str | os.PathLike[str] | None = None,
        *,
        read_only: bool | None = None,
        max_batch: int = 64,
    ):
        self._url = resolve_url(default_db() if url_or_path is None else url_or_path)
        self.read_only = is_read_only_target(self._url) if read_only is None else read_only
        self._path = sqlite_path(self._url)
        self._display = (
            str(self._path) if self._path else self.shown_url
        )
        self._known_runs: set[int] = set()
        self._id_prefix = uuid.uuid4().hex[:20]  # one urandom call per store, not per episode
        self._id_counter = itertools.count()
        self._writer: BackgroundWriter | None = None
        self._write_engine: Engine | None = None
        if self._path is not None:
            if self.read_only and not self._path.exists():
                raise StoreError(f"no database at {self._path}")
            if not self.read_only:
                self._path.parent.mkdir(parents=True, exist_ok=True)
        self._read_engine = make_engine(self._url, read_only=self.read_only, write_mode=False)
        try:
            self._open_schema()
        except BaseException:
            self._read_engine.dispose()
            raise
        if not self.read_only:
            self._write_engine = make_engine(self._url, read_only=False, write_mode=True)
            self._writer = BackgroundWriter(
                make_engine(self._url, read_only=False, write_mode=True), max_batch=max_batch
            )
        _OPEN_STORES.add(self)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The database URL (with password) to hand to another process."""
        return self._url.render_as_string(hide_password=False)

    @property
    def shown_url(self) -> str:
        """The database URL with its password hidden (for logs and run records)."""
        return self._url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self._display!r}{', read_only=True' if self.read_only else ''})"

    def __reduce__(self) -> Any:
        raise TypeError("a Store does not cross processes: pass store.url and open a Store there")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Wait until every pending write is committed; raise a background write error if any."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Commit pending writes, stop the writer and release connections (idempotent)."""
        _OPEN_STORES.discard(self)
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            if self._write_engine is not None:
                if self._path is not None:
                    self._checkpoint_wal()
                self._write_engine.dispose()
                self._write_engine = None
            self._read_engine.dispose()

    def _checkpoint_wal(self) -> None:
        assert self._write_engine is not None
        try:
            with self._write_engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except OperationalError as exc:  # another process holds the database: it checkpoints later
            log.debug("wal checkpoint skipped: %s", exc)

    # ------------------------------------------------------------------ schema
    def _read_schema(self) -> tuple[str | None, set[str]]:
        with self._read_engine.connect() as conn:
            return migrate.current_revision(conn), set(inspect(conn).get_table_names())

    def _open_schema(self) -> None:
        try:
            revision, tables = retry_busy(self._read_schema)
        except DatabaseError as exc:
            if is_busy_error(exc):
                raise self._busy(exc) from exc
            if self.read_only and self._path is not None and "unable to open" in str(exc):
                # e.g. a WAL database in a read-only directory: read it as an immutable file
                self._read_engine.dispose()
                self._read_engine = make_engine(
                    self._url, read_only=True, write_mode=False, immutable=True
                )
                return self._open_schema()
            if self._path is None and isinstance(exc, OperationalError):  # a server, not a file
                raise StoreError(f"cannot reach {self._display}: {_reason(exc)}") from exc
            raise CorruptDatabase(
                f"{self._display} is not a readable database: {_reason(exc)}"
            ) from exc
        migrate.check_revision(revision)
        if revision == migrate.head_revision():
            retry_busy(self._check_shape)
            return
        if revision is None and tables - {"alembic_version"}:
            raise CorruptDatabase(
                f"{self._display} has tables but no schema version: not a DistillGym store"
            )
        if self.read_only:
            what = (
                "is empty"
                if revision is None
                else f"has schema {revision!r}, not {migrate.head_revision()!r}"
            )
            raise SchemaOutdated(f"{self._display} {what}; open it writable once to migrate")
        self._migrate()

    def _check_shape(self) -> None:
        """At the head revision every table and column of ``data.models`` must exist: a store
        damaged by hand (a dropped table or column) is named here, not by a failing query."""
        from data.models import Base

        with self._read_engine.connect() as conn:
            insp = inspect(conn)
            present = set(insp.get_table_names())
            for table in Base.metadata.sorted_tables:
                if table.name not in present:
                    raise CorruptDatabase(
                        f"{self._display} is damaged: table {table.name!r} is missing "
                        f"(schema {migrate.head_revision()!r})"
                    )
                columns = {c["name"] for c in insp.get_columns(table.name)}
                missing = [c.name for c in table.columns if c.name not in columns]
                if missing:
                    raise CorruptDatabase(
                        f"{self._display} is damaged: column(s) {', '.join(missing)} of table "
                        f"{table.name!r} missing (schema {migrate.head_revision()!r})"
                    )

    def _migrate(self) -> None:
        engine = make_engine(self._url, read_only=False, write_mode=True)

        def upgrade() -> None:
            with engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite: one migrator at a time
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(770077)"))
                revision = migrate.current_revision(conn)
                migrate.check_revision(revision)
                if revision != migrate.head_revision():
                    log.info(
                        "migrating %s from %s to %s",
                        self._display,
                        revision,
                        migrate.head_revision(),
                    )
                    migrate.upgrade(conn)

        try:
            retry_busy(upgrade)  # the transaction rolled back: the next try starts afresh
        except DatabaseError as exc:
            if is_busy_error(exc):
                raise self._busy(exc) from exc
            raise CorruptDatabase(f"cannot migrate {self._display}: {_reason(exc)}") from exc
        finally:
            engine.dispose()

    def _busy(self, exc: DatabaseError) -> StoreBusy:
        return StoreBusy(
            f"{self._display} is locked by another process (waited "
            f"{engines.BUSY_TIMEOUT_MS / 1000:g} s): "
            f"{_reason(exc)}"
        )

    def schema_revision(self) -> str | None:
        with self._reading() as conn:
            return migrate.current_revision(conn)

    def integrity_check(self) -> list[str]:
        """SQLite ``PRAGMA integrity_check`` problems ([] when ok; other backends: [])."""
        if self._path is None:
            return []
        with self._reading() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
        return [] if rows == ["ok"] else rows

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _reading(self, flush: bool = True) -> Iterator[Connection]:
        if flush:
            self.flush()
        try:
            with self._read_engine.connect() as conn:
                yield conn
        except ValueError as exc:  # a JSON column that does not decode (json.JSONDecodeError)
            if not isinstance(exc, json.JSONDecodeError):
                raise
            raise CorruptDatabase(f"{self._display} is damaged: {self._bad_json(exc)}") from exc
        except DatabaseError as exc:
            if _is_corruption(exc):
                raise CorruptDatabase(f"{self._display} is damaged: {_reason(exc)}") from exc
            if is_busy_error(exc):
                raise self._busy(exc) from exc
            raise

    def _bad_json(self, exc: json.JSONDecodeError) -> str:
        """Which row holds invalid JSON (SQLite's ``json_valid`` over every JSON column)."""
        from sqlalchemy import JSON

        try:
            with self._read_engine.connect() as conn:
                for table in (RUNS, STEPS, EPISODES, TURNS, SKILLS, CHECKPOINTS, LEDGER):
                    for col in table.columns:
                        if not isinstance(col.type, JSON) or conn.dialect.name != "sqlite":
                            continue
                        row = conn.exec_driver_sql(
                            f'SELECT id FROM "{table.name}" WHERE "{col.name}" IS NOT NULL '
                            f'AND json_valid("{col.name}") = 0 LIMIT 1'
                        ).first()
                        if row is not None:
                            return f"{table.name}.{col.name} of row {row.id} is not valid JSON"
        except DatabaseError:
            pass
        return f"a row holds invalid JSON ({exc})"

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        if self._write_engine is None:
            raise ReadOnlyStore(f"{self._display} is open read-only")
        if self._writer is not None:
            self._writer.flush()
        with self._write_engine.begin() as conn:
            yield conn

    def _submit(self, what: str, apply: Callable[[Connection], None]) -> None:
        if self._writer is None:
            raise ReadOnlyStore(f"{self._display} is open read-only")
        self._writer.submit(WriteJob(apply=apply, what=what))

    def _require_run(self, run_id: int) -> None:
        if run_id in self._known_runs:
            return
        with self._reading(flush=False) as conn:
            if conn.execute(select(RUNS.c.id).where(RUNS.c.id == run_id)).first() is None:
                raise RunNotFound(f"no run with id {run_id} in {self._display}")
        self._known_runs.add(run_id)

    # ------------------------------------------------------------------ runs
    def create_run(
        self, name: str, method: str, config: dict[str, Any], seed: int, resume: bool = False
    ) -> int:
        """Create a run and return its id; with ``resume=True`` return the existing run's id.

        Raises :class:`RunExistsError` if ``name`` exists and ``resume`` is False, and
        :class:`StoreError` when resuming a run recorded with another method.
        """
        _check_json("config", config)
        with self._writing() as conn:
            row = conn.execute(select(RUNS.c.id, RUNS.c.method).where(RUNS.c.name == name)).first()
            if row is not None:
                if not resume:
                    raise RunExistsError(
                        f"run {name!r} already exists (id {row.id}); pass resume=True or pick another name"
                    )
                if row.method != method:
                    raise StoreError(
                        f"run {name!r} was recorded with method {row.method!r}, not {method!r}"
                    )
                conn.execute(
                    update(RUNS)
                    .where(RUNS.c.id == row.id)
                    .values(status=RunStatus.RUNNING, updated_at=_utcnow())
                )
                run_id = int(row.id)
            else:
                now = _utcnow()
                try:
                    run_id = conn.execute(
                        insert(RUNS).returning(RUNS.c.id),
                        {
                            "name": name,
                            "method": method,
                            "config": config,
                            "seed": int(seed),
                            "code_version": code_version(),
                            "status": RunStatus.RUNNING,
                            "created_at": now,
                            "updated_at": now,
                        },
                    ).scalar_one()
                except (
                    IntegrityError
                ) as exc:  # another process created it between our check and insert
                    raise RunExistsError(f"run {name!r} already exists") from exc
        self._known_runs.add(run_id)
        return run_id

    def get_run(self, name_or_id: str | int) -> RunRecord:
        """The run with that name (or integer id); :class:`RunNotFound` otherwise."""
        col = RUNS.c.id if isinstance(name_or_id, int) else RUNS.c.name
        with self._reading() as conn:
            row = conn.execute(select(RUNS).where(col == name_or_id)).mappings().first()
        if row is None:
            raise RunNotFound(f"no run {name_or_id!r} in {self._display}")
        return _run_record(row)

    def runs(self) -> list[RunRecord]:
        with self._reading() as conn:
            return [
                _run_record(r) for r in conn.execute(select(RUNS).order_by(RUNS.c.id)).mappings()
            ]

    def set_status(self, run_id: int, status: str) -> None:
        """Set a run's status (one of :class:`RunStatus`)."""
        if status not in RunStatus.ALL:
            raise StoreError(f"unknown run status {status!r}; expected one of {RunStatus.ALL}")
        self._require_run(run_id)
        with self._writing() as conn:
            conn.execute(
                update(RUNS).where(RUNS.c.id == run_id).values(status=status, updated_at=_utcnow())
            )

    def run_summaries(self) -> list[RunSummary]:
        """Per run: status, number of steps and episodes, success rate of the last step with
        episodes (training rollouts, or an SFT run's demonstrations) and the last logged evaluation."""
        with self._reading() as conn:
            n_steps: dict[int, int] = dict(
                conn.execute(select(STEPS.c.run_id, func.count()).group_by(STEPS.c.run_id)).all()
            )
            n_eps: dict[int, int] = dict(
                conn.execute(
                    select(EPISODES.c.run_id, func.count()).group_by(EPISODES.c.run_id)
                ).all()
            )
            last = dict(
                conn.execute(
                    select(EPISODES.c.run_id, func.max(EPISODES.c.step)).group_by(EPISODES.c.run_id)
                ).all()
            )
            evals: dict[int, tuple[int, float]] = {}  # run -> (step, eval success) of its last eval
            for run_id, step, metrics in conn.execute(
                select(STEPS.c.run_id, STEPS.c.step, STEPS.c.metrics).order_by(STEPS.c.step)
            ):
                value = (metrics or {}).get("eval/success_rate")
                if isinstance(value, (int, float)):
                    evals[run_id] = (int(step), float(value))
            out = []
            for r in conn.execute(select(RUNS).order_by(RUNS.c.id)).mappings():
                rate = None
                if r["id"] in last:
                    rate = conn.execute(
                        select(func.avg(case((EPISODES.c.won, 1.0), else_=0.0))).where(
                            EPISODES.c.run_id == r["id"], EPISODES.c.step == last[r["id"]]
                        )
                    ).scalar_one()
                out.append(
                    RunSummary(
                        run_id=r["id"],
                        name=r["name"],
                        method=r["method"],
                        status=r["status"],
                        steps=int(n_steps.get(r["id"], 0)),
                        episodes=int(n_eps.get(r["id"], 0)),
                        last_step=last.get(r["id"]),
                        last_success_rate=None if rate is None else float(rate),
                        last_eval_step=evals[r["id"]][0] if r["id"] in evals else None,
                        last_eval_success_rate=evals[r["id"]][1] if r["id"] in evals else None,
                    )
                )
        return out

    # ------------------------------------------------------------------ steps
    def log_step(
        self, run_id: int, step: int, metrics: dict[str, Any], policy_version: int = 0
    ) -> None:
        """Record a training step's metrics (async; a step logged twice keeps the last metrics)."""
        _check_json("metrics", metrics)
        self._require_run(run_id)
        row = {
            "run_id": run_id,
            "step": int(step),
            "metrics": dict(metrics),
            "policy_version": int(policy_version),
            "created_at": _utcnow(),
        }

        def apply(conn: Connection) -> None:
            conn.execute(delete(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.step == row["step"]))
            conn.execute(insert(STEPS), row)
            conn.execute(
                update(RUNS).where(RUNS.c.id == run_id).values(updated_at=row["created_at"])
            )

        self._submit(f"log_step(run={run_id}, step={step})", apply)

    def steps(self, run_id: int) -> list[tuple[int, dict[str, Any]]]:
        """``[(step, metrics), ...]`` in step order."""
        with self._reading() as conn:
            rows = conn.execute(
                select(STEPS.c.step, STEPS.c.metrics)
                .where(STEPS.c.run_id == run_id)
                .order_by(STEPS.c.step)
            )
            return [(int(s), dict(m)) for s, m in rows]

    # ------------------------------------------------------------------ episodes: write
    def add_episodes(self, run_id: int, step: int, episodes: Sequence[Episode]) -> None:
        """Queue episodes for writing and return at once.

        Fills ``episode.episode_id`` where empty (32 hex chars: a random per-store prefix and a
        counter, unique across processes). Token arrays are encoded here,
        so later changes to the records are not seen; each episode becomes visible with all its turns.
        """
        self._require_run(run_id)
        rows = []
        for ep in episodes:
            if not ep.episode_id:
                ep.episode_id = f"{self._id_prefix}{next(self._id_counter):012x}"
            _check_json(f"episode {ep.episode_id} info", ep.info)
            rows.append(convert.episode_to_rows(run_id, int(step), ep))
        if rows:
            self._submit(
                f"add_episodes(run={run_id}, step={step}, n={len(rows)})",
                functools.partial(_insert_episodes, rows),
            )

    def delete_episodes_after(self, run_id: int, step: int) -> int:
        """Delete what a killed run wrote after ``step`` (episodes, steps, skills, checkpoints)
        and send the ledger rows of those steps back to ``pending``.

        Call it on resume with the checkpoint's step so nothing is duplicated. Skill usage counts
        updated after ``step`` are not rolled back. Returns the number of episodes deleted.
        """
        self._require_run(run_id)
        with self._writing() as conn:
            later = select(EPISODES.c.id).where(EPISODES.c.run_id == run_id, EPISODES.c.step > step)
            conn.execute(delete(TURNS).where(TURNS.c.episode_id.in_(later)))
            n = conn.execute(
                delete(EPISODES).where(EPISODES.c.run_id == run_id, EPISODES.c.step > step)
            ).rowcount
            conn.execute(delete(STEPS).where(STEPS.c.run_id == run_id, STEPS.c.step > step))
            conn.execute(
                delete(SKILLS).where(SKILLS.c.run_id == run_id, SKILLS.c.created_step > step)
            )
            conn.execute(
                delete(CHECKPOINTS).where(CHECKPOINTS.c.run_id == run_id, CHECKPOINTS.c.step > step)
            )
            conn.execute(  # the ledger rewinds with them: those steps are trained again
                update(LEDGER)
                .where(LEDGER.c.run_id == run_id, LEDGER.c.step > step)
                .values(status=LedgerStatus.PENDING, policy_version=None, updated_at=_utcnow())
            )
        return int(n)

    # ------------------------------------------------------------------ episodes: read
    def _episode_query(self, run_id: int, step: int | None, won: bool | None) -> Any:
        q = select(EPISODES).where(EPISODES.c.run_id == run_id)
        if step is not None:
            q = q.where(EPISODES.c.step == step)
        if won is not None:
            q = q.where(EPISODES.c.won == won)
        return q

    def _iter_rows(
        self, query: Any, limit: int | None
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """(episode row, turn rows) pairs in id order, fetched in chunks by keyset paging."""
        last_id, left = 0, limit
        while left is None or left > 0:
            n = _READ_CHUNK if left is None else min(_READ_CHUNK, left)
            with self._reading(flush=False) as conn:
                eps = [
                    dict(r)
                    for r in conn.execute(
                        query.where(EPISODES.c.id > last_id).order_by(EPISODES.c.id).limit(n)
                    ).mappings()
                ]
                if not eps:
                    return
                turns = _turns_of(conn, [e["id"] for e in eps])
            for e in eps:
                yield e, self._checked_turns(e, turns.get(e["id"], []))
            last_id = eps[-1]["id"]
            left = None if left is None else left - len(eps)
            if len(eps) < n:
                return

    def episodes(
        self,
        run_id: int,
        step: int | None = None,
        won: bool | None = None,
        limit: int | None = None,
    ) -> Iterator[Episode]:
        """Episodes of a run (optionally one step / only won or lost), in the order they were written."""
        for _, episode in self.episodes_with_steps(run_id, step, won, limit):
            yield episode

    def episodes_with_steps(
        self,
        run_id: int,
        step: int | None = None,
        won: bool | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[int, Episode]]:
        """Like :meth:`episodes`, as ``(step, episode)`` pairs."""
        self.flush()
        for ep_row, turn_rows in self._iter_rows(self._episode_query(run_id, step, won), limit):
            yield int(ep_row["step"]), convert.rows_to_episode(ep_row, turn_rows)

    def count_episodes(self, run_id: int, step: int | None = None, won: bool | None = None) -> int:
        q = self._episode_query(run_id, step, won).with_only_columns(func.count())
        with self._reading() as conn:
            return int(conn.execute(q).scalar_one())

    def episode_at(self, run_id: int, index: int) -> Episode:
        """The ``index``-th episode of a run (0-based, in writing order; what ``show --episode N`` uses)."""
        return self.episode_at_with_step(run_id, index)[1]

    def episode_at_with_step(self, run_id: int, index: int) -> tuple[int, Episode]:
        """Like :meth:`episode_at`, as ``(step, episode)``."""
        q = (
            select(EPISODES.c.id, EPISODES.c.step)
            .where(EPISODES.c.run_id == run_id)
            .order_by(EPISODES.c.id)
            .offset(index)
            .limit(1)
        )
        with self._reading() as conn:
            row = conn.execute(q).first() if index >= 0 else None
        if row is None:
            raise EpisodeNotFound(
                f"run {run_id} has no episode {index} ({self.count_episodes(run_id)} episodes)"
            )
        return int(row.step), self._episodes_by_db_ids([row.id])[0]

    def get_episode(self, run_id: int, episode_id: str) -> Episode:
        """The episode whose ``Episode.episode_id`` is ``episode_id``."""
        with self._reading() as conn:
            db_id = conn.execute(
                select(EPISODES.c.id).where(
                    EPISODES.c.run_id == run_id, EPISODES.c.uid == episode_id
                )
            ).scalar()
        if db_id is None:
            raise EpisodeNotFound(f"run {run_id} has no episode {episode_id!r}")
        return self._episodes_by_db_ids([db_id])[0]

    def _episodes_by_db_ids(self, ids: Sequence[int]) -> list[Episode]:
        with self._reading(flush=False) as conn:
            eps = {
                r["id"]: dict(r)
                for r in conn.execute(
                    select(EPISODES).where(EPISODES.c.id.in_(list(ids)))
                ).mappings()
            }
            turns = _turns_of(conn, list(ids))
        return [
            convert.rows_to_episode(eps[i], self._checked_turns(eps[i], turns.get(i, [])))
            for i in ids
        ]

    def _checked_turns(
        self, ep_row: dict[str, Any], turn_rows: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The turn rows of an episode, after checking they are the ones its row counts."""
        indices = [t["index"] for t in turn_rows]
        if ep_row["num_turns"] != len(turn_rows) or indices != list(range(len(turn_rows))):
            raise CorruptDatabase(
                f"{self._display} is damaged: episode {ep_row['uid']!r} (run {ep_row['run_id']}) "
                f"records {ep_row['num_turns']} turns but turns {indices} are stored"
            )
        return turn_rows

    def sample_episodes(
        self,
        run_id: int,
        n: int,
        seed: int,
        step: int | None = None,
        won: bool | None = None,
        replace: bool = False,
    ) -> list[Episode]:
        """``n`` episodes drawn uniformly with ``numpy.random.default_rng(seed)`` (fewer if the run has fewer
        and ``replace`` is False); the same seed on the same data gives the same episodes."""
        q = (
            self._episode_query(run_id, step, won)
            .with_only_columns(EPISODES.c.id)
            .order_by(EPISODES.c.id)
        )
        with self._reading() as conn:
            ids = [int(i) for i in conn.execute(q).scalars()]
        if not ids:
            return []
        size = n if replace else min(n, len(ids))
        picks = np.random.default_rng(seed).choice(len(ids), size=size, replace=replace)
        chosen = [ids[i] for i in picks]
        unique = list(dict.fromkeys(chosen))
        by_id = dict(zip(unique, self._episodes_by_db_ids(unique)))
        return [by_id[i] for i in chosen]

    # ------------------------------------------------------------------ tensors
    @staticmethod
    def turn_tensors(episode: Episode, per_turn: bool = True, pad_id: int = 0) -> Any:
        """One episode as a padded :class:`data.tensors.TokenBatch` (see that module for the layout)."""
        from data.tensors import episodes_to_batch

        return episodes_to_batch([episode], per_turn=per_turn, pad_id=pad_id)

    def load_batch(
        self,
        run_id: int,
        step: int | None = None,
        won: bool | None = None,
        limit: int | None = None,
        per_turn: bool = True,
        pad_id: int = 0,
    ) -> Any:
        """Stored episodes straight to a padded :class:`data.tensors.TokenBatch` (no Python lists).

        Offline distillation reuses the stored teacher log-probs from here.
        """
        from data.tensors import pad_rows, rows_from_arrays

        self.flush()
        rows = []
        for ep_row, turn_rows in self._iter_rows(self._episode_query(run_id, step, won), limit):
            rows.extend(
                rows_from_arrays(convert.decode_turn_arrays(turn_rows), ep_row["uid"], per_turn)
            )
        return pad_rows(rows, pad_id)

    # ------------------------------------------------------------------ skills
    def add_skill(self, run_id: int, task_id: str, skill: dict[str, Any], step: int) -> int:
        """Store a skill (any JSON dict, e.g. ``{"text": ...}``) and return its id."""
        _check_json("skill", skill)
        self._require_run(run_id)
        with self._writing() as conn:
            return int(
                conn.execute(
                    insert(SKILLS).returning(SKILLS.c.id),
                    {
                        "run_id": run_id,
                        "task_id": task_id,
                        "skill": skill,
                        "usage_count": 0,
                        "reward_sum": 0.0,
                        "created_step": int(step),
                        "created_at": _utcnow(),
                    },
                ).scalar_one()
            )

    def skills(self, run_id: int, task_id: str | None = None) -> list[SkillRecord]:
        """Skills of a run (of one task if given), oldest first."""
        q = select(SKILLS).where(SKILLS.c.run_id == run_id).order_by(SKILLS.c.id)
        if task_id is not None:
            q = q.where(SKILLS.c.task_id == task_id)
        with self._reading() as conn:
            return [
                SkillRecord(
                    skill_id=r["id"],
                    run_id=r["run_id"],
                    task_id=r["task_id"],
                    skill=dict(r["skill"]),
                    usage_count=r["usage_count"],
                    reward_sum=r["reward_sum"],
                    created_step=r["created_step"],
                )
                for r in conn.execute(q).mappings()
            ]

    def record_skill_use(self, skill_id: int, reward: float) -> None:
        """Count one use of a skill and add its reward (async; atomic increment in SQL)."""
        stmt = (
            update(SKILLS)
            .where(SKILLS.c.id == skill_id)
            .values(
                usage_count=SKILLS.c.usage_count + 1, reward_sum=SKILLS.c.reward_sum + float(reward)
            )
        )

        def apply(conn: Connection) -> None:
            if conn.execute(stmt).rowcount != 1:
                raise StoreError(f"no skill with id {skill_id}")

        self._submit(f"record_skill_use(skill={skill_id})", apply)

    # ------------------------------------------------------------------ checkpoints
    def add_checkpoint(
        self,
        run_id: int,
        step: int,
        paths: dict[str, Any],
        rng_state: bytes,
        data_cursor: dict[str, Any],
        policy_version: int = 0,
    ) -> int:
        """Record a checkpoint after every pending write of this store is committed; returns its id."""
        _check_json("paths", paths)
        _check_json("data_cursor", data_cursor)
        self._require_run(run_id)
        with self._writing() as conn:
            return int(
                conn.execute(
                    insert(CHECKPOINTS).returning(CHECKPOINTS.c.id),
                    {
                        "run_id": run_id,
                        "step": int(step),
                        "paths": paths,
                        "rng_state": bytes(rng_state),
                        "data_cursor": data_cursor,
                        "policy_version": int(policy_version),
                        "created_at": _utcnow(),
                    },
                ).scalar_one()
            )

    def latest_checkpoint(self, run_id: int) -> CheckpointRecord | None:
        """The checkpoint with the highest step (latest written on ties), or None."""
        q = (
            select(CHECKPOINTS)
            .where(CHECKPOINTS.c.run_id == run_id)
            .order_by(CHECKPOINTS.c.step.desc(), CHECKPOINTS.c.id.desc())
            .limit(1)
        )
        with self._reading() as conn:
            r = conn.execute(q).mappings().first()
        if r is None:
            return None
        return CheckpointRecord(
            checkpoint_id=r["id"],
            run_id=r["run_id"],
            step=r["step"],
            paths=dict(r["paths"]),
            rng_state=bytes(r["rng_state"]),
            data_cursor=dict(r["data_cursor"]),
            policy_version=r["policy_version"],
            created_at=r["created_at"],
        )


    # ------------------------------------------------------------------ rollout ledger
    def plan_step(self, run_id: int, step: int, task_ids: Sequence[str]) -> list[LedgerEntry]:
        """Record the tasks of ``step`` as ``pending`` (one row per task index); idempotent.

        Planning a step that is already planned with the same ``task_ids`` changes nothing and
        returns its rows as they stand (a resume re-plans its steps). Other tasks than the recorded
        ones raise :class:`LedgerError`: the task stream of a run must not change under it.
        """
        self._require_run(run_id)
        task_ids = [str(t) for t in task_ids]
        with self._writing() as conn:
            have = self._ledger_rows(conn, run_id, step)
            if have:
                recorded = [e.task_id for e in have]
                if recorded != task_ids:
                    raise LedgerError(
                        f"step {step} of run {run_id} was planned with tasks {recorded}, "
                        f"not {task_ids}"
                    )
                return have
            now = _utcnow()
            if task_ids:
                conn.execute(
                    insert(LEDGER),
                    [
                        {
                            "run_id": run_id,
                            "step": int(step),
                            "task_index": i,
                            "task_id": t,
                            "status": LedgerStatus.PENDING,
                            "policy_version": None,
                            "updated_at": now,
                        }
                        for i, t in enumerate(task_ids)
                    ],
                )
            return self._ledger_rows(conn, run_id, step)

    def mark_tasks(
        self,
        run_id: int,
        step: int,
        task_indices: Sequence[int],
        status: str,
        policy_version: int | None = None,
    ) -> None:
        """Move rows of ``step`` one status forward (``pending -> sampling -> scored -> trained``).

        Any other transition (a skipped status, a repeated one, a row trained twice, an unplanned
        task) raises :class:`LedgerError` and changes no row. ``policy_version`` is recorded when
        sampling starts (it must be given then) and kept afterwards.
        """
        if status not in LedgerStatus.NEXT.values():
            raise LedgerError(f"cannot mark tasks {status!r}: one of {LedgerStatus.ORDER[1:]}")
        if status == LedgerStatus.SAMPLING and policy_version is None:
            raise LedgerError("sampling starts at a policy version: pass policy_version")
        self._require_run(run_id)
        wanted = sorted({int(i) for i in task_indices})
        with self._writing() as conn:
            rows = {
                e.task_index: e
                for e in self._ledger_rows(conn, run_id, step)
                if e.task_index in wanted
            }
            missing = [i for i in wanted if i not in rows]
            if missing:
                raise LedgerError(f"step {step} of run {run_id} has no planned task(s) {missing}")
            bad = [
                f"{i}: {rows[i].status} -> {status}"
                for i in wanted
                if LedgerStatus.NEXT.get(rows[i].status) != status
            ]
            if bad:
                raise LedgerError(
                    f"illegal ledger transition(s) at step {step} of run {run_id}: {', '.join(bad)}"
                )
            values: dict[str, Any] = {"status": status, "updated_at": _utcnow()}
            if status == LedgerStatus.SAMPLING:
                values["policy_version"] = int(policy_version)  # type: ignore[arg-type]
            conn.execute(
                update(LEDGER)
                .where(
                    LEDGER.c.run_id == run_id,
                    LEDGER.c.step == step,
                    LEDGER.c.task_index.in_(wanted),
                )
                .values(**values)
            )

    def reissue_untrained(self, run_id: int) -> int:
        """Send every ``sampling``/``scored`` row of the run back to ``pending`` (on resume: their
        episodes were never trained, so their groups are sampled again); returns how many."""
        self._require_run(run_id)
        with self._writing() as conn:
            return int(
                conn.execute(
                    update(LEDGER)
                    .where(
                        LEDGER.c.run_id == run_id,
                        LEDGER.c.status.in_([LedgerStatus.SAMPLING, LedgerStatus.SCORED]),
                    )
                    .values(status=LedgerStatus.PENDING, policy_version=None, updated_at=_utcnow())
                ).rowcount
            )

    def ledger(
        self, run_id: int, step: int | None = None, status: str | None = None
    ) -> list[LedgerEntry]:
        """The ledger rows of a run (optionally one step's, or one status's) by (step, task index)."""
        if status is not None and status not in LedgerStatus.ORDER:
            raise LedgerError(f"unknown ledger status {status!r}: one of {LedgerStatus.ORDER}")
        with self._reading() as conn:
            return self._ledger_rows(conn, run_id, step, status)

    @staticmethod
    def _ledger_rows(
        conn: Connection, run_id: int, step: int | None = None, status: str | None = None
    ) -> list[LedgerEntry]:
        q = select(LEDGER).where(LEDGER.c.run_id == run_id)
        if step is not None:
            q = q.where(LEDGER.c.step == int(step))
        if status is not None:
            q = q.where(LEDGER.c.status == status)
        q = q.order_by(LEDGER.c.step, LEDGER.c.task_index)
        return [
            LedgerEntry(
                run_id=r["run_id"],
                step=r["step"],
                task_index=r["task_index"],
                task_id=r["task_id"],
                status=r["status"],
                policy_version=r["policy_version"],
                updated_at=r["updated_at"],
            )
            for r in conn.execute(q).mappings()
        ]


# ---------------------------------------------------------------------- helpers
def _insert_episodes(
    rows: list[tuple[dict[str, Any], list[dict[str, Any]]]], conn: Connection
) -> None:
    """Insert episodes (ids come back in parameter order) and then all their turns."""
    ids = (
        conn.execute(
            insert(EPISODES).returning(EPISODES.c.id, sort_by_parameter_order=True),
            [ep for ep, _ in rows],
        )
        .scalars()
        .all()
    )
    turn_rows = [{**t, "episode_id": db_id} for (_, turns), db_id in zip(rows, ids) for t in turns]
    if not turn_rows:
        return
    if conn.dialect.name != "sqlite":
        conn.execute(insert(TURNS), turn_rows)
        return
    # SQLite: one driver-level executemany. SQLAlchemy's per-row bind processing costs as much CPU
    # as SQLite's own insert; turn values are already plain (bytes, str, int, float, bool) except
    # ``info``, which is serialized here as the JSON column type would.
    sql, values_of = _sqlite_turn_insert()
    conn.exec_driver_sql(sql, [values_of(t) + (json.dumps(t["info"]),) for t in turn_rows])


@functools.cache
def _sqlite_turn_insert() -> tuple[str, Callable[..., tuple[Any, ...]]]:
    """The turns INSERT in SQLite's qmark style and a getter of its values (all but ``info``)."""
    from sqlalchemy.dialects import sqlite

    quote = sqlite.dialect().identifier_preparer.quote
    columns = [c.name for c in TURNS.columns if c.name not in ("id", "info")]
    sql = (f"INSERT INTO {quote(TURNS.name)} ({', '.join(quote(c) for c in [*columns, 'info'])}) "
           f"VALUES ({', '.join('?' * (len(columns) + 1))})")
    return sql, operator.itemgetter(*columns)


def _turns_of(conn: Connection, episode_db_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    q = (
        select(TURNS)
        .where(TURNS.c.episode_id.in_(episode_db_ids))
        .order_by(TURNS.c.episode_id, TURNS.c.index)
    )
    for r in conn.execute(q).mappings():
        out.setdefault(r["episode_id"], []).append(dict(r))
    return out


def _run_record(r: Any) -> RunRecord:
    return RunRecord(
        run_id=r["id"],
        name=r["name"],
        method=r["method"],
        config=dict(r["config"]),
        seed=r["seed"],
        code_version=r["code_version"],
        status=r["status"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _reason(exc: DatabaseError) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _is_corruption(exc: DatabaseError) -> bool:
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg or "corrupt" in msg


def _forget_stores_in_child() -> None:
    """A forked child must not touch its parent's connections or writer: it opens its own Store."""
    _OPEN_STORES.clear()


os.register_at_fork(after_in_child=_forget_stores_in_child)


@atexit.register
def _close_open_stores() -> None:
    """Commit what live stores still hold when the interpreter exits (the writer is a daemon thread)."""
    for store in list(_OPEN_STORES):
        try:
            store.close()
        except StoreError as exc:
            log.error("closing %r at exit: %s", store, exc)
