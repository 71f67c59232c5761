"""Sample-parallel workers die with the `layerkit fit` that forked them, however it ends.

A worker that outlives a killed main process keeps the caller's stdout open (so
`layerkit fit ... | tee log` never returns) and waits for ever in a batch-norm barrier.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sample_parallel import convnet

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sample-parallel needs fork (Linux)")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie waiting for a reaper runs nothing and holds no files


def start_fit(tmp_path: Path, name: str) -> subprocess.Popen:
    # batch norm: the workers spend part of each step in the barrier the main process leaves
    model = convnet(norm=True, epochs=200)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(model))
    env = {**os.environ, "LAYERKIT_SAMPLE_PARALLEL": "1", "LAYERKIT_PROCESSES": "2",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("LAYERKIT_DATA_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "layerkit", "fit", str(path), "--quiet",
                             "--out", str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)


def test_workers_die_with_a_killed_fit(tmp_path):
    fits = {sig: start_fit(tmp_path, sig.name) for sig in (signal.SIGKILL, signal.SIGTERM)}
    workers: dict = {}
    try:
        check_kills(fits, workers)
    finally:  # a regression must not leave processes behind on the test machine
        for pid in [p.pid for p in fits.values()] + sum(workers.values(), []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in fits.values():
            proc.communicate()


def check_kills(fits, workers):
    deadline = time.monotonic() + 60
    while not (len(workers) == len(fits) and all(workers.values())) and time.monotonic() < deadline:
        for sig, proc in fits.items():
            assert proc.poll() is None, proc.communicate()[1].decode()
            workers[sig] = workers.get(sig) or children(proc.pid)
        time.sleep(0.05)
    assert all(workers.values()), "the fits never forked their workers"
    time.sleep(0.5)  # into the epoch: steps in flight, workers in the barrier now and then
    for proc in fits.values():
        for pid in [proc.pid] + workers[signal.SIGKILL]:
            # anonymous shared memory and unlinked semaphores only: nothing can stay in /dev/shm
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            assert not [m for m in maps if "/dev/shm/" in m and not m.endswith("(deleted)")]
    for sig, proc in fits.items():
        os.kill(proc.pid, sig)
    for sig, proc in fits.items():
        # the pipes reach end-of-file: no worker holds the caller's stdout or stderr (`fit ... | cat`)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == -sig
        gone_by = time.monotonic() + 3
        while any(alive(w) for w in workers[sig]) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not [w for w in workers[sig] if alive(w)], f"a worker outlived {sig.name} of its fit"
