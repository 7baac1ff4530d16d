"""Benchmark the trajectory store against a JSON-lines baseline; prints one JSON object.

    python bench/store.py [--episodes 500] [--turns 4] [--tokens 512] [--vocab 49152]

Each turn has ``--tokens`` completion tokens with sampler and teacher log-probs and a loss mask,
and a prompt that grows by ``--obs-tokens`` new observation tokens per turn (``Turn.prompt_ids``
holds the full context, as the rollout produces it). Measured in one run:

* ``write_turns_per_s``: ``add_episodes`` for all episodes + ``flush()`` (SQLite, WAL) vs writing
  the same episodes as JSON lines;
* ``read_episodes_per_s``: the run read back as padded tensors (``Store.load_batch``) vs parsing the
  JSON lines and building the same tensors;
* ``bytes_per_turn``: database file size / turns, against the raw arrays of a turn (int32 ids of
  the new prompt tokens and the completion, float32 sampler and teacher log-probs, a uint8 mask).

Targets: >= 5,000 turns/s written, reads >= 3x faster than JSONL, bytes/turn <= 1.2x raw.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.types import Episode, Turn  # noqa: E402
from data import Store  # noqa: E402
from data.export import episode_from_dict, episode_to_dict  # noqa: E402
from data.tensors import episodes_to_batch  # noqa: E402


def make_episodes(
    n: int, turns: int, tokens: int, obs_tokens: int, vocab: int, seed: int = 0
) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        context = rng.integers(0, vocab, 256).tolist()
        ts = []
        for i in range(turns):
            prompt = context + rng.integers(0, vocab, obs_tokens).tolist()
            completion = rng.integers(0, vocab, tokens).tolist()
            ts.append(
                Turn(
                    index=i,
                    prompt_ids=prompt,
                    completion_ids=completion,
                    sampler_logprobs=(-rng.exponential(size=tokens)).astype(np.float32).tolist(),
                    loss_mask=[1] * (tokens - 1) + [0],
                    action_text="go to cabinet 1",
                    action="go to cabinet 1",
                    action_valid=True,
                    observation="You arrive at cabinet 1. On the cabinet 1, you see a mug 2.",
                    teacher_logprobs=(-rng.exponential(size=tokens)).astype(np.float32).tolist(),
                )
            )
            context = prompt + completion
        out.append(
            Episode(
                "DistillGym/Household-v0",
                f"train-{e:06d}",
                e,
                turns=ts,
                task_type="pick_and_place_simple",
            )
        )
    return out


def raw_bytes_per_turn(episodes: list[Episode]) -> tuple[float, float]:
    """(delta-prompt raw bytes, full-prompt raw bytes) per turn."""
    delta = full = 0
    n = 0
    for ep in episodes:
        prev = 0
        for t in ep.turns:
            k = len(t.completion_ids)
            arrays = 4 * k + 4 * k + 4 * k + k  # completion ids, sampler, teacher, mask
            delta += arrays + 4 * (len(t.prompt_ids) - prev)
            full += arrays + 4 * len(t.prompt_ids)
            prev = len(t.prompt_ids) + k
            n += 1
    return delta / n, full / n


def bench_store(episodes: list[Episode], path: Path, batch: int) -> dict[str, float]:
    n_turns = sum(e.num_turns for e in episodes)
    store = Store(path)
    run_id = store.create_run("bench", "opd", {}, 0)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(episodes), batch):
        store.add_episodes(run_id, i // batch, episodes[i : i + batch])
    t_submit = time.perf_counter() - t0
    store.flush()
    t_write, c_write = time.perf_counter() - t0, time.process_time() - c0
    store.close()
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "-*"))
    with Store(path, read_only=True) as reader:
        c0, t0 = time.process_time(), time.perf_counter()
        tb = reader.load_batch(run_id, per_turn=True)
        t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
    assert tb.input_ids_BT.shape[0] == n_turns
    return {
        "write_turns_per_s": n_turns / t_write,
        "submit_turns_per_s": n_turns / t_submit,  # time the training loop is blocked
        "read_episodes_per_s": len(episodes) / t_read,
        "bytes_per_turn": size / n_turns,
        # per CPU-second of this process (all threads): stable on a shared, loaded machine
        "write_turns_per_cpu_s": n_turns / c_write,
        "read_episodes_per_cpu_s": len(episodes) / c_read,
    }


def bench_jsonl(episodes: list[Episode], path: Path) -> dict[str, float]:
    n_turns = sum(e.num_turns for e in episodes)
    c0, t0 = time.process_time(), time.perf_counter()
    with path.open("w") as f:
        for ep in episodes:
            f.write(json.dumps(episode_to_dict(ep)) + "\n")
    t_write, c_write = time.perf_counter() - t0, time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    with path.open() as f:
        back = [episode_from_dict(json.loads(line)) for line in f]
    tb = episodes_to_batch(back, per_turn=True)
    t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
    assert tb.input_ids_BT.shape[0] == n_turns
    return {
        "write_turns_per_s": n_turns / t_write,
        "read_episodes_per_s": len(episodes) / t_read,
        "bytes_per_turn": path.stat().st_size / n_turns,
        "write_turns_per_cpu_s": n_turns / c_write,
        "read_episodes_per_cpu_s": len(episodes) / c_read,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--obs-tokens", type=int, default=64)
    p.add_argument(
        "--vocab", type=int, default=49_152, help="SmolLM2's vocabulary; > 65536 stores int32 ids"
    )
    p.add_argument("--batch", type=int, default=16, help="episodes per add_episodes call")
    args = p.parse_args()
    import torch  # noqa: F401  - imported before timing (load_batch builds tensors)

    episodes = make_episodes(args.episodes, args.turns, args.tokens, args.obs_tokens, args.vocab)
    raw, raw_full = raw_bytes_per_turn(episodes)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = bench_store(episodes, Path(tmp) / "bench.db", args.batch)
        jsonl = bench_jsonl(episodes, Path(tmp) / "bench.jsonl")
    result = {
        "config": vars(args),
        "turns": sum(e.num_turns for e in episodes),
        "sqlite": sqlite,
        "jsonl": jsonl,
        "raw_bytes_per_turn": raw,
        "raw_full_prompt_bytes_per_turn": raw_full,
        "read_speedup_vs_jsonl": sqlite["read_episodes_per_s"] / jsonl["read_episodes_per_s"],
        "read_speedup_vs_jsonl_cpu": sqlite["read_episodes_per_cpu_s"]
        / jsonl["read_episodes_per_cpu_s"],
        "bytes_vs_raw": sqlite["bytes_per_turn"] / raw,
        "targets": {
            "write_turns_per_s>=5000": sqlite["write_turns_per_s"] >= 5000,
            "read_speedup>=3": sqlite["read_episodes_per_s"] >= 3 * jsonl["read_episodes_per_s"],
            "bytes_vs_raw<=1.2": sqlite["bytes_per_turn"] <= 1.2 * raw,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
