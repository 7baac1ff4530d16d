"""Background writer: training hands over rows and goes on; a thread commits them in batches.

Each job is a function of an open connection. The writer takes every job waiting in its queue (up
to ``max_batch``) and runs them in one transaction, so a job's rows (an episode and all its turns)
become visible atomically, and many small jobs share one commit. If a batch fails, its jobs are
retried one per transaction so a single bad job loses only its own rows; the error is kept and
raised by the next :meth:`BackgroundWriter.submit`, :meth:`~BackgroundWriter.flush` or
:meth:`~BackgroundWriter.close` in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from data.errors import StoreError, WriterError

__all__ = ["BackgroundWriter", "WriteJob"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteJob:
    """One unit of work: ``apply(conn)`` inserts its rows; ``what`` names it in error messages."""

    apply: Callable[[Connection], None]
    what: str


_STOP = object()


class BackgroundWriter:
    """A daemon thread that owns the write connection and commits queued jobs in batches."""

    def __init__(
        self, engine: Engine, *, max_batch: int = 64, name: str = "distillgym-store-writer"
    ):
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.Queue[object] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._errors: list[BaseException] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- caller side
    def submit(self, job: WriteJob) -> None:
        """Queue ``job``; raises a pending writer error first."""
        self._raise_pending()
        if self._closed:
            raise StoreError("the store's writer is closed")
        with self._cond:
            self._pending += 1
        self._queue.put(job)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every submitted job is committed (or failed); then raise any writer error."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._pending == 0 or not self._thread.is_alive(), timeout
            ):
                raise WriterError(
                    f"flush timed out after {timeout}s with {self._pending} jobs pending"
                )
        self._raise_pending()

    def close(self) -> None:
        """Commit what is queued, stop the thread, then raise any writer error."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_pending()

    @property
    def pending(self) -> int:
        return self._pending

    def _raise_pending(self) -> None:
        with self._cond:
            if not self._errors:
                return
            errors, self._errors = self._errors, []
        first = errors[0]
        more = f" (and {len(errors) - 1} more failed jobs)" if len(errors) > 1 else ""
        raise WriterError(f"background write failed: {first}{more}") from first.__cause__

    # ----------------------------------------------------------------- writer thread
    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[WriteJob] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                else:
                    assert isinstance(item, WriteJob)
                    batch.append(item)
                if stop or len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
        self._engine.dispose()

    def _commit(self, batch: list[WriteJob]) -> None:
        try:
            self._transaction(batch)
        except Exception as exc:  # noqa: BLE001 - retried one by one below, each error is kept
            if len(batch) == 1:
                self._fail(batch[0], exc)
            else:
                for job in batch:
                    try:
                        self._transaction([job])
                    except Exception as exc:  # noqa: BLE001 - surfaced in the caller's thread
                        self._fail(job, exc)
        finally:
            with self._cond:
                self._pending -= len(batch)
                self._cond.notify_all()

    def _transaction(self, batch: list[WriteJob]) -> None:
        with self._engine.begin() as conn:
            for job in batch:
                job.apply(conn)

    def _fail(self, job: WriteJob, exc: BaseException) -> None:
        log.error("store writer: %s failed: %s", job.what, exc)
        error = WriterError(f"{job.what}: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        with self._cond:
            self._errors.append(error)
