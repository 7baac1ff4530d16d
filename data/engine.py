"""Database engines for the store: URL resolution, SQLite pragmas and transaction modes.

A plain path means SQLite. SQLite runs in WAL mode with ``synchronous=NORMAL``, a busy timeout and
foreign keys on. Write transactions start with ``BEGIN IMMEDIATE`` (they take the write lock up
front, so two writers queue on the busy timeout instead of failing on a lock upgrade); read
transactions use a plain deferred ``BEGIN``. A read-only store opens SQLite with
``PRAGMA query_only`` (or ``mode=ro`` where the file or the URL is read-only).

SQLite may answer ``SQLITE_BUSY`` at once, without calling the busy handler, where waiting could
deadlock; the switch of a new, empty file to WAL while another process switches it too does so
(about one race in fifty of four openers). :func:`retry_busy` retries such statements until the
same ``BUSY_TIMEOUT_MS`` deadline, so a locked database is never mistaken for a failure to open it.
"""

from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

__all__ = [
    "resolve_url",
    "is_read_only_target",
    "make_engine",
    "sqlite_path",
    "is_busy_error",
    "retry_busy",
    "BUSY_TIMEOUT_MS",
]

BUSY_TIMEOUT_MS = 30_000
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
T = TypeVar("T")


def is_busy_error(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "busy" (the lock is held, nothing is damaged)."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    msg = str(orig).lower()
    return "database is locked" in msg or "database table is locked" in msg


def retry_busy(fn: Callable[[], T], timeout_ms: int | None = None) -> T:
    """``fn()``, retried with short randomized sleeps while it fails with a busy error, until
    ``timeout_ms`` (default ``BUSY_TIMEOUT_MS``) have passed; then the last busy error is raised."""
    wait_ms = BUSY_TIMEOUT_MS if timeout_ms is None else timeout_ms
    deadline = time.monotonic() + wait_ms / 1000
    delay = 0.002
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_busy_error(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.1)


def resolve_url(url_or_path: str | os.PathLike[str]) -> URL:
    """``"runs/x.db"`` -> ``sqlite:////abs/runs/x.db``; anything with ``://`` is parsed as a URL."""
    text = os.fspath(url_or_path)
    if "://" in text:
        return make_url(text)
    return make_url(f"sqlite:///{Path(text).expanduser().resolve()}")


def sqlite_path(url: URL) -> Path | None:
    """The file behind an SQLite URL (``None`` for other backends or ``:memory:``)."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    db = url.database
    if db.startswith("file:"):
        db = db[len("file:") :].split("?", 1)[0]
    return Path(db)


def is_read_only_target(url: URL) -> bool:
    """True when the URL asks for read-only access or the SQLite file has no write permission bits.

    Permission bits are checked directly (not ``os.access``) so a 0444 file counts as read-only even
    for root.
    """
    if url.query.get("mode") == "ro" or url.query.get("immutable") == "1":
        return True
    path = sqlite_path(url)
    if path is not None and path.exists():
        return not (path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return False


def _sqlite_ro_url(url: URL, immutable: bool) -> URL:
    path = sqlite_path(url)
    assert path is not None
    query = "immutable=1" if immutable else "mode=ro"
    return make_url(f"sqlite:///file:{path}?{query}&uri=true")


def make_engine(url: URL, *, read_only: bool, write_mode: bool, immutable: bool = False) -> Engine:
    """An engine for ``url``; ``write_mode`` picks ``BEGIN IMMEDIATE`` for SQLite transactions."""
    if url.get_backend_name() != "sqlite":
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if read_only and url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        return create_engine(url, **kwargs)

    # A read-only store on a file it could write opens it normally with ``query_only``: SQLite
    # then refuses every write, and the last connection to close removes the -wal/-shm files (a
    # ``mode=ro`` connection leaves them behind, even beside a damaged store it only read).
    query_only = read_only and not immutable and not is_read_only_target(url)
    if read_only and not query_only:
        url = _sqlite_ro_url(url, immutable)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if query_only:
            cur.execute("PRAGMA query_only=ON")
        elif not read_only:
            # the switch can be refused with SQLITE_BUSY without waiting: retry it to the deadline
            retry_busy(lambda: cur.execute("PRAGMA journal_mode=WAL").fetchall())
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    begin = "BEGIN IMMEDIATE" if write_mode and not read_only else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine
