"""Data-parallel training over MPI ranks (`mpiexec -n 2`): the same training as one process and
as forked processes, dropout and shifts included, resumable bit for bit, and no rank left
hanging when another one fails.

Needs the `mpi` extra (mpi4py and an MPI with `mpiexec`); starting MPI ranks dominates these
tests' time, so each test launches once and checks several things."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layerkit.nn.network import load_npz
from layerkit.parallel import threads as parallel
from layerkit.parallel.processes import set_processes
from layerkit.training.runs import HISTORY_JSON, WEIGHTS, train

from test_sample_parallel import convnet
from train_support import hermetic  # noqa: F401 (a fixture)

HERE = Path(__file__).resolve().parent


def find_mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # a venv's bin, not necessarily on PATH
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def mpi_missing() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install '.[mpi]')"
    if find_mpiexec() is None:
        return "no mpiexec (pip install '.[mpi]' brings MPICH's)"
    return None


pytestmark = [pytest.mark.skipif(mpi_missing() is not None, reason=mpi_missing() or ""),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MPI tests run on Linux")]


def mpiexec(tmp_path: Path, *commands: list[str], timeout: float = 120, cache: str = "cache"
            ) -> subprocess.CompletedProcess:
    """``mpiexec -n 1 CMD1 : -n 1 CMD2 ...``: one rank per command (MPMD), so ranks can differ."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / cache), "LAYERKIT_SAMPLE_PARALLEL": "0",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("LAYERKIT_DATA_DIR", None)
    argv = [find_mpiexec()]
    for i, command in enumerate(commands):
        argv += ([":"] if i else []) + ["-n", "1"] + command
    # a session of its own: one launcher cleaning up after a killed rank must not touch another's
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
                          start_new_session=True)


def driver(tmp_path: Path, job: dict, name: str) -> list[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job))
    return [sys.executable, str(HERE / "mpi_driver.py"), str(path)]


def final(run_dir: Path):
    return load_npz(run_dir / WEIGHTS), json.loads((run_dir / HISTORY_JSON).read_text())


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest difference between two sets of tensors, relative to each tensor's largest value."""
    return max(float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-12)) for k in a)


@pytest.mark.usefixtures("hermetic")
def test_one_process_forked_processes_and_mpi_ranks_train_the_same_model(tmp_path, monkeypatch):
    # batch norm, dropout and shifts: every way samples are coupled or randomised; the masks and
    # shifts are drawn per sample, so every split trains the same model up to float32 rounding
    noisy = convnet(norm=True, epochs=2, data={"train_limit": 160, "test_limit": 40, "augment": {"shift": 1}})
    for layer in noisy["layers"]:
        if layer.get("name") in ("conv", "fc"):  # batch norm cancels their bias: its gradient is rounding noise
            layer["use_bias"] = False
    job = {"kind": "train", "runs": [
        {"model": noisy, "out": str(tmp_path / "mpi")},
        {"model": noisy, "out": str(tmp_path / "mpi_cut"), "interrupt": [0, 2]},
        {"model": noisy, "out": str(tmp_path / "mpi_left"), "interrupt": [0, 2], "resume": False},
        {"model": noisy, "out": str(tmp_path / "mpi_x2"), "processes": 2}]}
    cmd = driver(tmp_path, job, "job")
    done = mpiexec(tmp_path, cmd, cmd)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # the Python API prints nothing, on any rank

    # the same shares in forked processes of one machine
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")
    try:
        set_processes(2)
        train(noisy, out=tmp_path / "forked")
        set_processes(4)
        train(noisy, out=tmp_path / "forked4")
    finally:
        set_processes(None)
    # and the whole batch in one process
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "0")
    parallel.set_num_threads(1)
    try:
        train(noisy, out=tmp_path / "one")
        # a 2-rank run resumed by one process: the same training, so nothing to warn about
        notes: list[str] = []
        train(resume=tmp_path / "mpi_left", log=notes.append)
        assert not any("processes before" in n for n in notes), notes
    finally:
        parallel.set_num_threads(None)

    (w_mpi, h_mpi), (w_cut, h_cut) = final(tmp_path / "mpi"), final(tmp_path / "mpi_cut")
    (w_forked, h_forked), (w_one, h_one) = final(tmp_path / "forked"), final(tmp_path / "one")
    assert h_cut == h_mpi and all(np.array_equal(w_cut[k], w_mpi[k]) for k in w_mpi)  # resumed = uninterrupted
    # two ranks and two forked shards sum the same shares in the same order
    assert all(np.array_equal(w_forked[k], w_mpi[k]) for k in w_mpi)
    assert [r["train_loss"] for r in h_forked] == [r["train_loss"] for r in h_mpi]
    # 2 ranks of 2 forked processes each against 4 forked processes: the sums grouped by rank
    (w_x2, h_x2), (w_forked4, h_forked4) = final(tmp_path / "mpi_x2"), final(tmp_path / "forked4")
    print(f"max relative difference, 2 ranks x 2 processes vs 4 processes: {max_rel_diff(w_x2, w_forked4):.2e}")
    assert max_rel_diff(w_x2, w_forked4) < 1e-4
    # the logged losses too: every epoch, summed over all 4 shares (a rank's workers left out would halve them)
    assert [r["epoch"] for r in h_x2] == [r["epoch"] for r in h_forked4] == [1, 2]
    assert [r["train_loss"] for r in h_x2] == pytest.approx([r["train_loss"] for r in h_forked4], rel=1e-5)
    # against one process, dropout and shifts included: float32 rounding of another summation
    # order stays far below the bound (docs/distributed.md has the measured values); masks drawn
    # per share, a missing share or an unsynchronised batch norm are off by 1e-2 and more
    (w_left, h_left) = final(tmp_path / "mpi_left")
    for name, (w, h) in {"2 ranks": (w_mpi, h_mpi), "4 forked": (w_forked4, h_forked4),
                         "2 ranks, resumed by one process": (w_left, h_left)}.items():
        print(f"max relative difference, {name} vs one process: {max_rel_diff(w, w_one):.2e}")
        assert max_rel_diff(w, w_one) < 1e-4, name
        assert [r["train_loss"] for r in h] == pytest.approx([r["train_loss"] for r in h_one], rel=1e-5), name
        assert h[-1]["test_accuracy"] == h_one[-1]["test_accuracy"], name


def test_a_failing_rank_ends_the_job(tmp_path):
    model = tmp_path / "m.json"
    model.write_text(json.dumps(convnet(norm=True, epochs=50)))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(convnet(norm=True, epochs=50, seed=6)))
    def fit(name, path=model):
        return ["fit", str(path), "--out", str(tmp_path / name), "--quiet"]

    def failing(kind):
        return [driver(tmp_path, {"kind": "cli", "argv": fit(kind), "fault": kind, "fault_rank": 1}, kind)] * 2

    layerkit = [sys.executable, "-m", "layerkit"]
    jobs = {"raise": failing("raise"), "sigkill": failing("sigkill"),
            "mismatch": [layerkit + fit("mismatch"), layerkit + fit("mismatch", other)]}
    # the three jobs at once: most of each is start-up
    started = time.monotonic()
    with __import__("concurrent.futures").futures.ThreadPoolExecutor(3) as pool:
        # (each job its own cache: nothing shared but the machine)
        results = dict(zip(jobs, pool.map(lambda job: mpiexec(tmp_path, *jobs[job], timeout=60, cache=job), jobs),
                           strict=True))
    # 50 epochs would take minutes: every job ended at its fault, within seconds
    assert time.monotonic() - started < 50
    failed = results["raise"]
    assert failed.returncode != 0, failed.stderr
    assert "[rank 1]" in failed.stderr and "injected failure on rank 1" in failed.stderr, (
        failed.returncode, failed.stdout, failed.stderr)
    assert results["sigkill"].returncode != 0, results["sigkill"].stderr
    mismatch = results["mismatch"]
    assert mismatch.returncode == 2, mismatch.stderr
    assert "MPI rank 1 was started with another model file than rank 0" in mismatch.stderr
    assert "[rank 1]" not in mismatch.stderr  # every rank finds it; rank 0 alone says it


@pytest.mark.usefixtures("hermetic")
def test_with_fixed_shares_ranks_train_bit_for_bit_what_one_process_trains(tmp_path, monkeypatch):
    # training.virtual_shares: 2 ranks, 2 ranks of 2 forked processes each, and a 2-rank run
    # resumed by one process all train the one-process model exactly (tests/test_virtual_shares.py
    # has the forked processes and the check failing on an unsynchronised batch norm)
    from test_virtual_shares import assert_same_training, noisy

    model = noisy()
    job = {"kind": "train", "runs": [
        {"model": model, "out": str(tmp_path / "mpi")},
        {"model": model, "out": str(tmp_path / "mpi_x2"), "processes": 2},
        {"model": model, "out": str(tmp_path / "mpi_left"), "interrupt": [0, 2], "resume": False}]}
    cmd = driver(tmp_path, job, "job")
    done = mpiexec(tmp_path, cmd, cmd)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "0")
    parallel.set_num_threads(1)
    try:
        train(model, out=tmp_path / "one")
        train(resume=tmp_path / "mpi_left")
    finally:
        parallel.set_num_threads(None)
    for name in ("mpi", "mpi_x2", "mpi_left"):
        assert_same_training(tmp_path / name, tmp_path / "one")
