"""Data-parallel FSDP2 training on CPU with gloo (``torchrun``, one thread per rank).

Parity: a step at world size 2 plays exactly the world-size-1 episodes (token ids equal: each
episode samples from its own seeded stream), and its loss and gradient norm agree to fp32
round-off (rel 1e-5: the ranks' partial sums are added in another order). The weights after the
step agree within ``0.2·lr``: AdamW's first update is ``lr·g/(|g|+ε)``, which turns a last-bit
difference of a near-zero gradient entry into up to ``2·lr``; we measured 8.7e-5 at lr 1e-3.

Resume: a checkpoint written at world size 1 resumes at 2 and one written at 2 resumes at 1; both
end with the uninterrupted run's metrics and weights, and the store holds each episode once.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file
from subproc import child_env

from data import Store
from trainers.distributed import share_bounds

ROOT = Path(__file__).resolve().parents[1]
LR = 1e-3
TINY = ["model=tiny", "teacher=tiny:1", "tasks_per_step=3", "group_size=2", "max_turns=2",
        "max_new_tokens=8", "max_context_tokens=512", "token_budget=600", f"lr={LR}", "seed=1",
        "checkpoint_every=1", "progress=false"]
COMPARED = ("loss", "kl_teacher", "grad_norm", "entropy", "sampled_tokens", "reward")


def _train(out: Path, *args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainers", "opd", *TINY, f"output_dir={out}", *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _weights(model_dir: Path) -> dict:
    name = "adapter_model.safetensors" if (model_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(model_dir / name)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _actions(out: Path, run: str) -> list[tuple]:
    store = Store(f"sqlite:///{out / 'distillgym.db'}")
    run_id = store.get_run(run).run_id
    return [(e.task_id, e.info.get("group_index"), tuple(tuple(t.completion_ids) for t in e.turns))
            for e in store.episodes(run_id)]


def test_share_bounds_cover_the_tasks_once_in_order():
    for n in range(0, 9):
        for world in range(1, 5):
            spans = [share_bounds(n, r, world) for r in range(world)]
            assert [i for a, b in spans for i in range(a, b)] == list(range(n))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted world-size-1 run: 2 steps, a checkpoint after each."""
    out = tmp_path_factory.mktemp("straight")
    _train(out, "steps=2", "run_name=a")
    return out


@pytest.mark.slow
def test_world_size_2_step_equals_world_size_1_lora(straight, tmp_path):
    _train(tmp_path, "steps=1", "run_name=a", nproc=2)
    one, two = _metrics(straight / "a")[0], _metrics(tmp_path / "a")[0]
    for key in COMPARED:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    assert _actions(tmp_path, "a") == _actions(straight, "a")[:6]  # the same episodes, same order
    after_one = _weights(straight / "a" / "checkpoints" / "step-000001" / "model")
    # LoRA's B starts at 0, so |B| after one step is the step's size: the bound below is tighter
    assert max(float(v.abs().max()) for k, v in after_one.items() if "lora_B" in k) >= 0.5 * LR
    assert _max_diff(_weights(tmp_path / "a" / "final"), after_one) <= 0.2 * LR


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_two_rank_step(straight, tmp_path):
    """``accelerate launch --multi_gpu`` starts the ranks through torchrun (gloo here, no GPU)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "trainers", "opd", *TINY, f"output_dir={tmp_path}", "steps=1", "run_name=a"]
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "a" / "checkpoints" / "step-000001" / "optimizer").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one optimizer shard per rank: two ranks ran
    one, two = _metrics(straight / "a")[0], _metrics(tmp_path / "a")[0]
    for key in COMPARED:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    assert _actions(tmp_path, "a") == _actions(straight, "a")[:6]


@pytest.mark.slow
def test_world_size_2_step_equals_world_size_1_full_finetune(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    sampled_eval = ("eval_every=1", "eval_episodes=5", "eval_greedy=false")  # sharded over the ranks
    _train(one, "steps=1", "run_name=f", "finetune=full", *sampled_eval)
    _train(two, "steps=1", "run_name=f", "finetune=full", *sampled_eval, nproc=2)
    m1, m2 = _metrics(one / "f")[0], _metrics(two / "f")[0]
    for key in COMPARED:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key
    assert m2["eval/episodes"] == m1["eval/episodes"] == 5
    for key in ("eval/reward", "eval/turns", "eval/success_rate"):  # the same sampled eval episodes
        assert m2[key] == pytest.approx(m1[key], rel=1e-6), key
    assert _actions(two, "f") == _actions(one, "f")
    assert _max_diff(_weights(two / "f" / "final"), _weights(one / "f" / "final")) <= 0.2 * LR


@pytest.mark.slow
def test_bfloat16_mixed_precision_trains_close_to_float32(straight, tmp_path):
    """FSDP2's MixedPrecisionPolicy computes in bf16 (the fp32 replica sampled, so the trainer's
    recomputed log-probs now differ from the sampler's: kl_old > 0) and the step stays close."""
    _train(tmp_path, "steps=1", "run_name=a", "fsdp_mixed_precision=bfloat16", nproc=2)
    one, mp = _metrics(straight / "a")[0], _metrics(tmp_path / "a")[0]
    assert abs(one["kl_old"]) < 1e-8 < mp["kl_old"]
    for key in ("loss", "kl_teacher", "entropy"):
        assert mp[key] == pytest.approx(one[key], rel=0.05), key
    assert _actions(tmp_path, "a") == _actions(straight, "a")[:6]  # sampling stays fp32


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [(1, 2), (2, 1)])
def test_resume_at_another_world_size_matches_the_uninterrupted_run(straight, tmp_path, first, then):
    _train(tmp_path, "steps=1", "run_name=a", nproc=first)
    _train(tmp_path, "steps=2", "run_name=a", "resume=true", nproc=then)
    resumed, ref = _metrics(tmp_path / "a"), _metrics(straight / "a")
    assert [r["step"] for r in resumed] == [0.0, 1.0]
    for key in COMPARED:
        assert resumed[1][key] == pytest.approx(ref[1][key], rel=1e-5, abs=1e-7), key
    assert _max_diff(_weights(tmp_path / "a" / "final"), _weights(straight / "a" / "final")) <= 0.2 * LR
    store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
    run_id = store.get_run("a").run_id
    ids = [e.episode_id for e in store.episodes(run_id)]
    assert len(ids) == len(set(ids)) == 12
    assert [store.count_episodes(run_id, step=s) for s in (0, 1)] == [6, 6]
    assert _actions(tmp_path, "a") == _actions(straight, "a")


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_the_run(tmp_path):
    cmd = [sys.executable, "-m", "trainers", "opd", *TINY, f"output_dir={tmp_path}", "run_name=k",
           "steps=200", "checkpoint_every=0", "dist_timeout_s=20", "--nproc", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    csv_path = tmp_path / "k" / "metrics.csv"
    deadline = time.time() + 240
    while not (csv_path.exists() and len(csv_path.read_text().splitlines()) >= 3):  # 2 steps logged
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no step logged within 240 s"
        time.sleep(0.2)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if p.environ().get("RANK") == "1"]
    assert len(workers) == 1
    t_kill = time.time()
    workers[0].send_signal(signal.SIGKILL)
    rc = proc.wait(timeout=120)
    assert rc != 0
    assert time.time() - t_kill < 90  # torchrun tears the job down; collectives time out at 20 s
    store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
    run = store.get_run("k")
    assert run.status == "failed"
    logged = [s for s, _ in store.steps(run.run_id)]
    assert logged == list(range(len(logged)))  # whole steps only, in order
    assert store.count_episodes(run.run_id) == 6 * len(logged)  # no partial step's episodes


@pytest.mark.slow
def test_two_ranks_train_the_bundled_model_and_store_each_episode_once(tmp_path):
    cmd = [sys.executable, "-m", "trainers", "grpo", "model=smollm2-135m-instruct", "steps=2",
           "tasks_per_step=2", "group_size=2", "max_turns=2", "max_new_tokens=16",
           "max_context_tokens=1024", "token_budget=2048", "checkpoint_every=1", "progress=false",
           f"output_dir={tmp_path}", "run_name=real", "--nproc", "2"]
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
    run = store.get_run("real")
    assert run.status == "finished"
    episodes = list(store.episodes(run.run_id))
    keys = [(e.task_id, e.info.get("group_index"), e.group_id) for e in episodes]
    assert len(episodes) == 8 and len(set(keys)) == 8
    assert [store.count_episodes(run.run_id, step=s) for s in (0, 1)] == [4, 4]
    assert all(t.completion_ids for e in episodes for t in e.turns)
    assert (tmp_path / "real" / "final" / "adapter_model.safetensors").exists()
    assert done.stdout.count("final policy in") == 1  # rank 0 alone reports


@pytest.mark.slow
@pytest.mark.parametrize("method", [
    ["pi-distill"],  # an extra sharded forward inside the loss
    ["tt-opd"],  # an EMA self-teacher built from the replica
    ["opsd", "opsd_mode=divergence", "self_teacher=frozen"],  # fused divergence, adapter-off teacher
])
def test_methods_with_their_own_forwards_and_teachers_run_at_world_size_2(tmp_path, method):
    cmd = [sys.executable, "-m", "trainers", *method, "model=tiny", "tasks_per_step=3", "group_size=2",
           "max_turns=2", "max_new_tokens=8", "max_context_tokens=1024", "token_budget=2048", "steps=2",
           "progress=false", "checkpoint_every=0", f"output_dir={tmp_path}", "run_name=m", "--nproc", "2"]
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    store = Store(f"sqlite:///{tmp_path / 'distillgym.db'}")
    run = store.get_run("m")
    assert run.status == "finished"
    assert [store.count_episodes(run.run_id, step=s) for s in (0, 1)] == [6, 6]


@pytest.mark.slow
def test_async_rollouts_at_world_size_2_equal_world_size_1(tmp_path):
    """``async_steps=1`` at world size 2: each rank's producer samples its share of step t with
    P_{t-1} gathered into its sampler copy; the episodes equal world size 1's and the weights agree."""
    a, b = tmp_path / "one", tmp_path / "two"
    _train(a, "steps=2", "run_name=x", "async_steps=1", "checkpoint_every=0")
    _train(b, "steps=2", "run_name=x", "async_steps=1", "checkpoint_every=0", nproc=2)
    assert _actions(b, "x") == _actions(a, "x")
    one, two = _metrics(a / "x"), _metrics(b / "x")
    assert [r["async/staleness"] for r in two] == [r["async/staleness"] for r in one] == [0.0, 1.0]
    for key in ("loss", "kl_teacher", "reward"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4, abs=1e-6), key
    assert _max_diff(_weights(b / "x" / "final"), _weights(a / "x" / "final")) <= 0.2 * LR


def test_skill_sd_at_world_size_2_is_refused_before_launch(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trainers", "skill-sd", "model=tiny", f"output_dir={tmp_path}",
                           "--nproc", "2"], cwd=ROOT, env=child_env(HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: skill-sd keeps its skill bank")
    assert "torch.distributed" not in done.stderr  # refused here, no job started
