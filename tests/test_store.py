"""Trajectory store: round trips, concurrency, crash safety, schema checks, bad input.

Runs against SQLite always and against PostgreSQL when ``DISTILLGYM_TEST_PG_URL`` is set
(``scripts/start_postgres.sh`` starts a server and prints the URL).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from agents.types import EndReason, Episode, Turn
from data import (
    CorruptDatabase,
    EpisodeNotFound,
    ReadOnlyStore,
    RunExistsError,
    RunNotFound,
    RunStatus,
    SchemaTooNew,
    Store,
    StoreError,
    WriterError,
    codec,
)
from data.migrate import head_revision

PG_URL = os.environ.get("DISTILLGYM_TEST_PG_URL")
FORK = mp.get_context("fork")


# ---------------------------------------------------------------------- fixtures and builders
@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database per test (dropped afterwards)."""
    if not PG_URL:
        pytest.skip(
            "DISTILLGYM_TEST_PG_URL is unset: no PostgreSQL server (scripts/start_postgres.sh starts one)"
        )
    name = f"dg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("pg_url")


def f32(values: np.ndarray) -> list[float]:
    """Python floats that are exactly representable in float32 (what the store keeps)."""
    return values.astype(np.float32).tolist()


def make_episode(
    rng: np.random.Generator, n_turns: int = 3, vocab: int = 70_000, task: str = "t0"
) -> Episode:
    """A random episode whose turns follow the token layout of ``agents/types.py``."""
    context = rng.integers(0, vocab, size=int(rng.integers(3, 9))).tolist()
    turns = []
    for i in range(n_turns):
        prompt = context + rng.integers(0, vocab, size=int(rng.integers(1, 7))).tolist()
        n = int(rng.integers(1, 12))
        completion = rng.integers(0, vocab, size=n).tolist()
        mask = [1] * (n - 1) + [0]
        turns.append(
            Turn(
                index=i,
                prompt_ids=prompt,
                completion_ids=completion,
                sampler_logprobs=f32(-rng.exponential(size=n)),
                loss_mask=mask,
                action_text=f"think <b>{i}</b> & go to cabinet {i} ünïcode ✓",
                action=f"go to cabinet {i}",
                action_valid=bool(i % 2 == 0),
                observation=f"You arrive at cabinet {i}.\nOn it you see a mug.",
                reward=float(i == n_turns - 1),
                terminated=i == n_turns - 1,
                truncated=False,
                finish_reason=("stop", "length", "empty")[i % 3],
                policy_version=int(rng.integers(0, 5)),
                teacher_logprobs=None if i == 0 else f32(-rng.exponential(size=n)),
                token_weights=None if i == 1 else f32(rng.uniform(0, 2, size=n)),
                info={"admissible": ["look", "inventory"], "nested": {"x": [1, 2.5, None]}},
            )
        )
        context = prompt + completion
    return Episode(
        env_id="DistillGym/Household-v0",
        task_id=task,
        seed=int(rng.integers(0, 2**40)),
        turns=turns,
        group_id=f"g-{task}",
        task_type="pick_and_place_simple",
        reward=1.0,
        won=bool(rng.integers(0, 2)),
        end_reason=EndReason.TERMINATED,
        policy_version=3,
        privileged="plan",
        info={"skill_id": None, "teacher": "self", "score": 0.25},
        initial_observation="You are in the middle of a room.\n\nYour task is to: put a mug in cabinet.",
    )


# ---------------------------------------------------------------------- codec
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40))
def test_codec_ids_round_trip(ids: list[int]) -> None:
    blob = codec.encode_ids(ids)
    assert blob[:1] in (b"H", b"i")
    assert codec.decode(blob).tolist() == ids


def test_codec_picks_uint16_for_small_vocab_and_packs_masks() -> None:
    assert len(codec.encode_ids(list(range(512)))) == 1 + 2 * 512
    assert len(codec.encode_ids([70_000] * 512)) == 1 + 4 * 512
    mask = [1, 0, 1, 1, 0, 0, 0, 1, 1]
    blob = codec.encode_mask(mask)
    assert len(blob) == 1 + 4 + 2 and codec.decode(blob).tolist() == mask
    with pytest.raises(StoreError):
        codec.encode_mask([0, 2])
    with pytest.raises(StoreError, match="0 or 1"):
        codec.encode_mask([1, "x"])
    with pytest.raises(StoreError, match="integers"):
        codec.encode_ids([1, 2.5])
    with pytest.raises(StoreError, match="int32"):
        codec.encode_ids([2**31])
    with pytest.raises(StoreError, match="float array"):
        codec.encode_floats([0.0, None])
    with pytest.raises(StoreError, match="float array"):
        codec.encode_floats([1e39])  # beyond float32
    assert codec.decode(codec.encode_floats([-1.5, float("-inf")])).tolist() == [-1.5, float("-inf")]
    with pytest.raises(StoreError, match="dtype tag"):
        codec.decode(b"zabc")
    with pytest.raises(StoreError, match="multiple"):
        codec.decode(b"f" + b"\x00" * 5)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 9), max_size=20),
    st.lists(st.integers(0, 9), max_size=20),
    st.integers(0, 20),
)
def test_prompt_delta_round_trips(prev: list[int], new: list[int], keep: int) -> None:
    previous = np.array(prev, dtype=np.int64)
    prompt = np.array(prev[:keep] + new, dtype=np.int64)
    k, suffix = codec.split_prompt(prompt, previous)
    assert k >= min(keep, len(prev))
    assert codec.join_prompt(k, suffix, previous).tolist() == prompt.tolist()


# ---------------------------------------------------------------------- round trips
def test_round_trip_every_field(db_url: str) -> None:
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, n_turns=k % 4, task=f"t{k}") for k in range(6)]
    with Store(db_url) as store:
        run_id = store.create_run("rt", "opd", {"lr": 1e-5, "nested": {"a": [1, 2]}}, seed=7)
        store.add_episodes(run_id, 2, episodes[:3])
        store.add_episodes(run_id, 5, episodes[3:])
        assert all(len(e.episode_id) == 32 for e in episodes)  # filled at once, before the write
        back = list(store.episodes(run_id))
        assert back == episodes  # dataclass equality: every field of every turn
        assert [e.task_id for e in store.episodes(run_id, step=5)] == ["t3", "t4", "t5"]
        assert all(e.won for e in store.episodes(run_id, won=True))
        assert len(list(store.episodes(run_id, limit=4))) == 4
        assert store.get_episode(run_id, episodes[4].episode_id) == episodes[4]
        assert store.episode_at(run_id, 1) == episodes[1]
        with pytest.raises(EpisodeNotFound):
            store.episode_at(run_id, 6)
        run = store.get_run("rt")
        assert (run.run_id, run.method, run.seed, run.status) == (
            run_id,
            "opd",
            7,
            RunStatus.RUNNING,
        )
        assert run.config == {"lr": 1e-5, "nested": {"a": [1, 2]}} and run.code_version
    with Store(db_url, read_only=True) as again:  # persisted, and readable by a fresh store
        assert list(again.episodes(run_id)) == episodes


def test_prompt_that_is_not_an_extension_round_trips(tmp_path: Path) -> None:
    """A context that was cut (e.g. truncated history) is stored as a shorter prefix + suffix."""
    t0 = Turn(0, [1, 2, 3, 4], [5, 6], [-0.5, -0.25], [1, 1], "a", "a", True)
    t1 = Turn(1, [1, 2, 9, 9, 9], [7], [-1.0], [1], "b", "b", True)
    t2 = Turn(2, [42], [8], [-1.0], [1], "c", "c", True)
    ep = Episode("e", "t", 0, turns=[t0, t1, t2])
    with Store(tmp_path / "s.db") as store:
        run_id = store.create_run("r", "grpo", {}, 0)
        store.add_episodes(run_id, 0, [ep])
        assert next(store.episodes(run_id)).turns == [t0, t1, t2]


def test_load_batch_layout(db_url: str) -> None:
    """Per-token tensors align with input_ids; per-turn and per-episode layouts; teacher flags."""
    rng = np.random.default_rng(1)
    ep = make_episode(rng, n_turns=3)
    with Store(db_url) as store:
        run_id = store.create_run("b", "opd", {}, 0)
        store.add_episodes(run_id, 0, [ep])
        batch = store.load_batch(run_id, pad_id=-1)
        assert len(batch) == 3 and batch.has_teacher_B.tolist() == [False, True, True]
        for b, t in enumerate(ep.turns):
            P, n = len(t.prompt_ids), len(t.completion_ids)
            L = P + n
            assert batch.input_ids_BT[b, :L].tolist() == t.prompt_ids + t.completion_ids
            assert (batch.input_ids_BT[b, L:] == -1).all() and batch.attention_mask_BT[b].sum() == L
            assert batch.loss_mask_BT[b].tolist() == [0] * P + t.loss_mask + [0] * (
                batch.input_ids_BT.shape[1] - L
            )
            assert batch.sampler_logprobs_BT[b, P:L].tolist() == t.sampler_logprobs
            if t.teacher_logprobs is not None:
                assert batch.teacher_logprobs_BT[b, P:L].tolist() == t.teacher_logprobs
            expected_w = t.token_weights if t.token_weights is not None else [1.0] * n
            assert batch.token_weights_BT[b, P:L].tolist() == expected_w
        whole = store.load_batch(run_id, per_turn=False)
        assert whole.input_ids_BT[0].tolist() == ep.full_ids
        assert whole.loss_mask_BT[0].tolist() == ep.loss_mask
        assert whole.has_teacher_B.tolist() == [False]
        same = Store.turn_tensors(ep)  # from the record, without the database
        assert same.input_ids_BT.tolist() == store.load_batch(run_id).input_ids_BT.tolist()


def test_sample_episodes_is_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with Store(tmp_path / "s.db") as store:
        run_id = store.create_run("s", "grpo", {}, 0)
        store.add_episodes(run_id, 0, [make_episode(rng, 1, task=f"t{k}") for k in range(20)])
        a = [e.task_id for e in store.sample_episodes(run_id, 5, seed=3)]
        b = [e.task_id for e in store.sample_episodes(run_id, 5, seed=3)]
        c = [e.task_id for e in store.sample_episodes(run_id, 5, seed=4)]
        assert a == b and a != c and len(set(a)) == 5
        assert len(store.sample_episodes(run_id, 50, seed=0)) == 20
        assert len(store.sample_episodes(run_id, 50, seed=0, replace=True)) == 50


# ---------------------------------------------------------------------- runs, steps, skills, checkpoints
def test_runs_steps_skills_checkpoints_and_resume(db_url: str) -> None:
    rng = np.random.default_rng(3)
    with Store(db_url) as store:
        run_id = store.create_run("r", "skill_sd", {"k": 1}, seed=1)
        with pytest.raises(RunExistsError):
            store.create_run("r", "skill_sd", {}, seed=1)
        with pytest.raises(StoreError, match="method"):
            store.create_run("r", "grpo", {}, seed=1, resume=True)
        with pytest.raises(RunNotFound):
            store.get_run("nope")
        with pytest.raises(RunNotFound):
            store.add_episodes(999, 0, [make_episode(rng)])
        with pytest.raises(StoreError, match="status"):
            store.set_status(run_id, "done-ish")
        for step in range(4):
            store.add_episodes(
                run_id, step, [make_episode(rng, 2, task=f"s{step}-{k}") for k in range(3)]
            )
            store.log_step(run_id, step, {"loss": 1.0 / (step + 1)}, policy_version=step)
        store.log_step(
            run_id, 3, {"loss": 0.0}, policy_version=3
        )  # logged twice: the last one wins
        assert store.steps(run_id) == [
            (0, {"loss": 1.0}),
            (1, {"loss": 0.5}),
            (2, {"loss": 1 / 3}),
            (3, {"loss": 0.0}),
        ]

        sid = store.add_skill(run_id, "s0-0", {"text": "open the fridge first"}, step=0)
        late = store.add_skill(run_id, "s0-0", {"text": "added after the checkpoint"}, step=3)
        for r in (1.0, 0.0, 1.0):
            store.record_skill_use(sid, r)
        skill = store.skills(run_id, "s0-0")[0]
        assert (skill.skill_id, skill.usage_count, skill.reward_sum, skill.mean_reward) == (
            sid,
            3,
            2.0,
            2 / 3,
        )
        assert store.skills(run_id, "other") == []
        store.record_skill_use(12345, 1.0)
        with pytest.raises(WriterError, match="no skill"):
            store.flush()

        assert store.latest_checkpoint(run_id) is None
        store.add_checkpoint(
            run_id, 1, {"model": "ckpt/1"}, b"\x00rng1", {"epoch": 0, "index": 6}, 1
        )
        store.add_checkpoint(
            run_id, 2, {"model": "ckpt/2"}, b"\x00rng2\xff", {"epoch": 0, "index": 9}, 2
        )
        ckpt = store.latest_checkpoint(run_id)
        assert ckpt is not None and (ckpt.step, ckpt.rng_state, ckpt.data_cursor) == (
            2,
            b"\x00rng2\xff",
            {"epoch": 0, "index": 9},
        )

        # resume from step 2: what was written after it goes, nothing is duplicated on re-run
        assert store.delete_episodes_after(run_id, ckpt.step) == 3
        assert [s for s, _ in store.steps(run_id)] == [0, 1, 2]
        assert [s.skill_id for s in store.skills(run_id)] == [sid] and late != sid
        assert store.create_run("r", "skill_sd", {"k": 2}, seed=1, resume=True) == run_id
        store.add_episodes(run_id, 3, [make_episode(rng, 2, task=f"s3-{k}") for k in range(3)])
        assert store.count_episodes(run_id) == 12 and store.count_episodes(run_id, step=3) == 3
        store.set_status(run_id, RunStatus.FINISHED)
        (summary,) = store.run_summaries()
        assert (
            summary.name,
            summary.status,
            summary.steps,
            summary.episodes,
            summary.last_step,
        ) == ("r", "finished", 3, 12, 3)
        won = [e.won for e in store.episodes(run_id, step=3)]
        assert summary.last_success_rate == pytest.approx(sum(won) / 3)


def test_run_summary_reports_the_last_logged_evaluation(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        evaluated = store.create_run("sft", "sft", {}, 0)
        for step, metrics in enumerate([{"eval/success_rate": 0.25}, {"nll": 0.3}, {"eval/success_rate": 0.5, "nll": 0.1}]):
            store.log_step(evaluated, step, metrics)
        store.log_step(store.create_run("plain", "grpo", {}, 0), 0, {"loss": 1.0})
        store.flush()
        by_name = {s.name: s for s in store.run_summaries()}
    assert (by_name["sft"].last_eval_step, by_name["sft"].last_eval_success_rate) == (2, 0.5)
    assert (by_name["plain"].last_eval_step, by_name["plain"].last_eval_success_rate) == (None, None)


def test_writer_error_surfaces_and_other_episodes_survive(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with Store(tmp_path / "s.db") as store:
        run_id = store.create_run("w", "grpo", {}, 0)
        a, b = make_episode(rng, 1, task="a"), make_episode(rng, 1, task="b")
        b.episode_id = "dup"
        store.add_episodes(run_id, 0, [b])
        store.flush()
        c = make_episode(rng, 1, task="c")
        c.episode_id = "dup"  # same id in the same run: the database refuses it
        store.add_episodes(run_id, 1, [a])
        store.add_episodes(run_id, 1, [c])
        with pytest.raises(WriterError, match="add_episodes"):
            store.flush()
        store.flush()  # reported once
        assert sorted(e.task_id for e in store.episodes(run_id)) == ["a", "b"]
        with pytest.raises(StoreError, match="len"):
            store.add_episodes(
                run_id,
                0,
                [Episode("e", "t", 0, turns=[Turn(0, [1], [2, 3], [0.0], [1, 1], "", "", True)])],
            )


def test_store_does_not_cross_processes_but_its_url_does(db_url: str) -> None:
    with Store(db_url) as store:
        with pytest.raises(TypeError, match="store.url"):
            pickle.dumps(store)
        with Store(store.url) as other:
            assert other.schema_revision() == head_revision()


# ---------------------------------------------------------------------- concurrency and crashes
def _writer_process(url: str, run: str, tag: str, n: int, ready: object | None = None) -> None:
    """Child process: append ``n`` episodes (``n`` < 0: forever) of 3 turns each."""
    store = Store(url)
    run_id = store.create_run(run, "grpo", {}, 0, resume=True)
    if ready is not None:
        ready.set()  # type: ignore[attr-defined]
    k = 0
    while n < 0 or k < n:
        turns = [
            Turn(
                i,
                list(range(i * 40, i * 40 + 40)),
                [k % 50_000, i] * 64,
                [-0.5] * 128,
                [1] * 128,
                "a",
                "a",
                True,
            )
            for i in range(3)
        ]
        store.add_episodes(run_id, k, [Episode("e", f"{tag}-{k}", k, turns=turns)])
        k += 1
        if k % 8 == 0:
            time.sleep(0.001)
    store.close()
    os._exit(0)


def _check_complete(store: Store, run_id: int) -> int:
    """Every visible episode has all its turns, with intact arrays; returns the count."""
    n = 0
    for ep in store.episodes(run_id):
        k = int(ep.task_id.rsplit("-", 1)[1])
        assert [t.index for t in ep.turns] == [0, 1, 2], ep.task_id
        for i, t in enumerate(ep.turns):
            assert t.completion_ids == [k % 50_000, i] * 64 and t.prompt_ids == list(
                range(i * 40, i * 40 + 40)
            )
        n += 1
    return n


def test_two_writer_processes_lose_nothing(db_url: str) -> None:
    with Store(db_url) as store:  # created (and migrated) before the children start
        store.create_run("cc", "grpo", {}, 0)
    procs = [
        FORK.Process(target=_writer_process, args=(db_url, "cc", tag, 60)) for tag in ("a", "b")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(db_url) as store:
        run_id = store.get_run("cc").run_id
        assert _check_complete(store, run_id) == 120
        names = {e.task_id for e in store.episodes(run_id)}
        assert names == {f"{t}-{k}" for t in "ab" for k in range(60)}


def test_kill_9_while_writing_keeps_the_database_consistent(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    with Store(path) as store:
        store.create_run("crash", "grpo", {}, 0)
    rng = np.random.default_rng(5)
    seen = 0
    for attempt in range(20):
        ready = FORK.Event()
        proc = FORK.Process(
            target=_writer_process, args=(str(path), "crash", f"p{attempt}", -1, ready)
        )
        proc.start()
        assert ready.wait(30)
        time.sleep(float(rng.uniform(0.0, 0.25)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            orphans = raw.execute(
                "SELECT count(*) FROM episodes e WHERE e.num_turns != (SELECT count(*) FROM turns t WHERE t.episode_id = e.id)"
            ).fetchone()
            assert orphans == (0,)
        with Store(path) as store:
            n = _check_complete(store, store.get_run("crash").run_id)
        assert n >= seen
        seen = n
    assert seen > 0


def _opener_process(directory: str, races: int, barrier: object, out: object, what: str) -> None:
    """Child process: in each race, wait at ``barrier`` with the others, then open database
    ``<race>.db`` (new) and write to it: as a ``Store`` (``what="store"``) or through the store's
    engine alone (``"engine"``, cheaper per race, so more races fit). Sends the failures."""
    from data.engine import make_engine, resolve_url

    failures = []
    for race in range(races):
        path = os.path.join(directory, f"{race}.db")
        barrier.wait(60)  # type: ignore[attr-defined]
        try:
            if what == "store":
                with Store(path) as store:
                    store.create_run(f"p{os.getpid()}", "grpo", {}, 0)
            else:
                engine = make_engine(resolve_url(path), read_only=False, write_mode=True)
                with engine.begin() as conn:
                    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (pid INTEGER)")
                    conn.exec_driver_sql(f"INSERT INTO t VALUES ({os.getpid()})")
                engine.dispose()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            failures.append(f"race {race}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    out.send(failures)  # type: ignore[attr-defined]
    out.close()  # type: ignore[attr-defined]
    os._exit(0)


@pytest.mark.parametrize("what, races", [("engine", 200), ("store", 30)])
def test_simultaneous_openers_of_a_new_store_never_fail(
    tmp_path: Path, what: str, races: int
) -> None:
    """Four processes open the same new SQLite file at the same moment, ``races`` times over.

    Before the fix, SQLite refused the WAL switch of one opener with "database is locked" without
    waiting (about one race in fifty at the engine), which the store reported as a corrupt database.
    """
    n = 4
    barrier = FORK.Barrier(n)
    pipes = [FORK.Pipe(duplex=False) for _ in range(n)]
    procs = [
        FORK.Process(target=_opener_process, args=(str(tmp_path), races, barrier, w, what))
        for _, w in pipes
    ]
    for p in procs:
        p.start()
    failures = [f for r, _ in pipes for f in r.recv()]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert failures == [], f"{len(failures)} of {races * n} opens failed: {failures[:5]}"
    for race in range(races):
        with sqlite3.connect(tmp_path / f"{race}.db") as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            table = "runs" if what == "store" else "t"
            assert raw.execute(f"SELECT count(*) FROM {table}").fetchone() == (n,)


def _lock_holder(path: str, hold_s: float, ready: object) -> None:
    """Child process: hold an exclusive lock on the (new, empty) database for ``hold_s`` seconds."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN EXCLUSIVE")
    ready.set()  # type: ignore[attr-defined]
    time.sleep(hold_s)
    raw.execute("ROLLBACK")
    raw.close()
    os._exit(0)


def test_a_locked_new_store_is_waited_for_and_never_called_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The busy timeout covers the WAL switch and the migration; past it the error says "locked"."""
    from data import StoreBusy
    from data import engine as engines

    for hold_s, timeout_ms in ((0.6, engines.BUSY_TIMEOUT_MS), (3.0, 300)):
        monkeypatch.setattr(engines, "BUSY_TIMEOUT_MS", timeout_ms)
        path = tmp_path / f"held-{hold_s}.db"
        ready = FORK.Event()
        holder = FORK.Process(target=_lock_holder, args=(str(path), hold_s, ready))
        holder.start()
        assert ready.wait(30)
        start = time.monotonic()
        try:
            if hold_s * 1000 < timeout_ms:  # released within the timeout: opened after the wait
                with Store(path) as store:
                    store.create_run("after-the-lock", "grpo", {}, 0)
                assert time.monotonic() - start > 0.3
            else:  # held past it: a busy error, not a corrupt database
                with pytest.raises(StoreBusy, match="locked by another process") as err:
                    Store(path)
                assert not isinstance(err.value, CorruptDatabase)
        finally:
            holder.join(30)
        assert holder.exitcode == 0
    with Store(tmp_path / "held-3.0.db") as store:  # the refused opener changed nothing
        assert store.runs() == []


# ---------------------------------------------------------------------- schema and bad input
def test_migrates_empty_database_to_head_matching_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from data.models import Base

    if "://" not in db_url:
        Path(db_url).touch()  # an existing, empty file is an empty SQLite database
    with Store(db_url) as store:
        assert store.schema_revision() == head_revision()
    engine = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_newer_schema_is_refused(db_url: str) -> None:
    Store(db_url).close()
    engine = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    for read_only in (False, True):
        with pytest.raises(SchemaTooNew, match="9999_from_the_future"):
            Store(db_url, read_only=read_only)


def test_corrupted_and_foreign_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("these are not the droids " * 200)
    with pytest.raises(CorruptDatabase, match="not a readable database"):
        Store(text)
    good = tmp_path / "good.db"
    with Store(good) as store:
        store.add_episodes(
            store.create_run("x", "grpo", {}, 0), 0, [make_episode(np.random.default_rng(0))]
        )
    damaged = tmp_path / "damaged.db"
    data = bytearray(good.read_bytes())
    data[:100] = os.urandom(100)  # header gone
    damaged.write_bytes(bytes(data))
    with pytest.raises(CorruptDatabase):
        Store(damaged, read_only=True)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(CorruptDatabase, match="not a DistillGym store"):
        Store(foreign)
    with pytest.raises(StoreError, match="no database"):
        Store(tmp_path / "missing.db", read_only=True)


def test_read_only_database_can_be_inspected(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    ep = make_episode(np.random.default_rng(6))
    with Store(path) as store:
        run_id = store.create_run("ro", "opd", {}, 0)
        store.add_episodes(run_id, 0, [ep])
        store.log_step(run_id, 0, {"loss": 1.0})
    path.chmod(0o444)
    try:
        for target in (path, f"sqlite:///file:{path}?mode=ro&uri=true"):
            with Store(target) as store:
                assert store.read_only
                assert list(store.episodes(run_id)) == [ep] and store.steps(run_id) == [
                    (0, {"loss": 1.0})
                ]
                with pytest.raises(ReadOnlyStore):
                    store.create_run("new", "opd", {}, 0)
                with pytest.raises(ReadOnlyStore):
                    store.add_episodes(run_id, 1, [ep])
        assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    finally:
        path.chmod(0o644)


def test_rollout_ledger_moves_forward_only_and_rewinds_with_a_resume(db_url: str) -> None:
    from data.errors import LedgerError
    from data.types import LedgerStatus as S

    rng = np.random.default_rng(5)
    with Store(db_url) as store:
        run_id = store.create_run("l", "grpo", {}, seed=0)
        for step in range(3):
            rows = store.plan_step(run_id, step, [f"t{step}a", f"t{step}b"])
            assert [(r.task_index, r.status, r.policy_version) for r in rows] == [(0, S.PENDING, None), (1, S.PENDING, None)]
        assert store.plan_step(run_id, 1, ["t1a", "t1b"])[1].task_id == "t1b"  # idempotent
        with pytest.raises(LedgerError, match="planned with tasks"):
            store.plan_step(run_id, 1, ["other", "t1b"])
        with pytest.raises(LedgerError, match="policy_version"):
            store.mark_tasks(run_id, 0, [0, 1], S.SAMPLING)
        for step in range(3):
            store.mark_tasks(run_id, step, [0, 1], S.SAMPLING, policy_version=max(0, step - 1))
            store.mark_tasks(run_id, step, [0, 1], S.SCORED)
        with pytest.raises(LedgerError, match="scored -> scored"):
            store.mark_tasks(run_id, 0, [0], S.SCORED)
        with pytest.raises(LedgerError, match="no planned task"):
            store.mark_tasks(run_id, 0, [7], S.TRAINED)
        for step in range(2):
            store.add_episodes(run_id, step, [make_episode(rng, 1, task=f"t{step}a")])
            store.mark_tasks(run_id, step, [0, 1], S.TRAINED)
        with pytest.raises(LedgerError, match="trained -> trained"):  # nothing is trained twice
            store.mark_tasks(run_id, 1, [1], S.TRAINED)
        assert [(e.step, e.status, e.policy_version) for e in store.ledger(run_id) if e.task_index == 0] == [
            (0, S.TRAINED, 0), (1, S.TRAINED, 0), (2, S.SCORED, 1)]
        store.flush()
        assert store.delete_episodes_after(run_id, 0) == 1  # resume from the checkpoint of step 0
        assert [(e.step, e.status) for e in store.ledger(run_id, status=S.PENDING)] == [
            (1, S.PENDING), (1, S.PENDING), (2, S.PENDING), (2, S.PENDING)]
        assert {e.status for e in store.ledger(run_id, step=0)} == {S.TRAINED}
        store.mark_tasks(run_id, 2, [0, 1], S.SAMPLING, policy_version=1)  # re-issued
        assert store.reissue_untrained(run_id) == 2 and store.ledger(run_id, step=2)[0].status == S.PENDING
        with pytest.raises(LedgerError, match="unknown ledger status"):
            store.ledger(run_id, status="done")
