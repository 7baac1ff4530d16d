"""Database engines for the store: URL resolution, SQLite pragmas and transaction modes.

A plain path means SQLite. SQLite runs in WAL mode with ``synchronous=NORMAL``, a busy timeout and
foreign keys on. Write transactions start with ``BEGIN IMMEDIATE`` (they take the write lock up
front, so two writers queue on the busy timeout instead of failing on a lock upgrade); read
transactions use a plain deferred ``BEGIN``. A read-only store opens SQLite with ``mode=ro``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

__all__ = ["resolve_url", "is_read_only_target", "make_engine", "sqlite_path"]

BUSY_TIMEOUT_MS = 30_000


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

    if read_only:
        url = _sqlite_ro_url(url, immutable)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        if not read_only:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    begin = "BEGIN IMMEDIATE" if write_mode and not read_only else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine
