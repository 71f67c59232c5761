"""Fixed shares (``training.virtual_shares``): one process, forked processes and a resume under
another process count train bit-identical models (the MPI ranks: tests/test_mpi.py)."""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from layerkit.errors import LayerkitError, TrainingError
from layerkit.nn.network import load_npz
from layerkit.parallel import lockstep
from layerkit.parallel import threads as parallel
from layerkit.parallel.collectives import Collectives
from layerkit.parallel.processes import available, set_processes
from layerkit.training.runs import HISTORY_JSON, WEIGHTS, train
from layerkit.training.trainer import TrainingInterrupted

from test_sample_parallel import convnet, zoo
from train_support import InterruptAt, hermetic  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked processes need Linux")

#: the issue's bound on the training loss; the weights must be bit-identical
LOSS_BOUND = 1e-5


def noisy(shares: int = 4, **training) -> dict:
    # batch norm (2-d and 4-d), dropout and shifts: every way samples are coupled or randomised.
    # 162 samples in batches of 32: the last batch (2 samples) has fewer samples than shares
    return convnet(norm=True, epochs=1, virtual_shares=shares,
                   data={"train_limit": 162, "test_limit": 40, "augment": {"shift": 1}}, **training)


def fit(tmp_path: Path, name: str, model: dict, processes: int, monkeypatch, **kwargs):
    # LAYERKIT_SAMPLE_PARALLEL=1: the tiny net is below the cost rule that would keep it in one process
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1" if processes > 1 else "0")
    set_processes(processes)
    try:
        return train(model, out=tmp_path / name, **kwargs)
    finally:
        set_processes(None)


def final(run_dir: Path) -> tuple[dict, list]:
    return load_npz(run_dir / WEIGHTS), json.loads((run_dir / HISTORY_JSON).read_text())


def assert_same_training(a: Path, b: Path) -> None:
    """The check every setup must pass against one process: the loss within the bound, every weight
    bit for bit."""
    (wa, ha), (wb, hb) = final(a), final(b)
    for ra, rb in zip(ha, hb, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) <= LOSS_BOUND * abs(rb["train_loss"]), (a.name, b.name)
    different = [k for k in wb if not np.array_equal(wa[k], wb[k])]
    assert not different, f"{a.name} and {b.name} differ in {different}"


@pytest.fixture(autouse=True)
def no_leftover_workers():
    yield
    assert multiprocessing.active_children() == []


@pytest.fixture
def forked():
    if not available():
        pytest.skip("no process-shared semaphores for forked processes here")


@pytest.fixture
def one_thread():
    parallel.set_num_threads(1)
    yield
    parallel.set_num_threads(None)


@pytest.mark.usefixtures("hermetic", "one_thread", "forked")
def test_one_two_and_four_processes_and_a_resume_train_the_same_model(tmp_path, monkeypatch):
    model = noisy()
    fit(tmp_path, "one", model, 1, monkeypatch)
    fit(tmp_path, "two", model, 2, monkeypatch)
    fit(tmp_path, "four", model, 4, monkeypatch)
    # interrupted on 2 processes after the third batch, resumed by one: no note about the count
    with pytest.raises(TrainingInterrupted):
        fit(tmp_path, "resumed", model, 2, monkeypatch, callbacks=[InterruptAt(0, 2)])
    notes: list[str] = []
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "0")
    train(resume=tmp_path / "resumed", log=notes.append)
    assert not any("processes before" in n for n in notes), notes
    for name in ("two", "four", "resumed"):
        assert_same_training(tmp_path / name, tmp_path / "one")
    # without batch norm one process computes its shares one after the other, not in threads
    plain = convnet(epochs=1, virtual_shares=4, data={"train_limit": 162, "test_limit": 40})
    fit(tmp_path, "plain_one", plain, 1, monkeypatch)
    fit(tmp_path, "plain_two", plain, 2, monkeypatch)
    assert_same_training(tmp_path / "plain_two", tmp_path / "plain_one")


@pytest.mark.usefixtures("hermetic", "one_thread", "forked")
def test_the_comparison_fails_when_batch_norm_is_not_synchronised_across_processes(tmp_path, monkeypatch):
    model = noisy()
    fit(tmp_path, "one", model, 1, monkeypatch)
    # each process normalises with its own shares' statistics: one process still sees the whole
    # batch, each of two processes half of it
    inner = lockstep.Lockstep.batch_sum

    def unsynchronised(self, values):
        self.outer = Collectives()
        return inner(self, values)

    monkeypatch.setattr(lockstep.Lockstep, "batch_sum", unsynchronised)
    fit(tmp_path, "two", model, 2, monkeypatch)
    with pytest.raises(AssertionError):
        assert_same_training(tmp_path / "two", tmp_path / "one")


def test_lockstep_sums_are_the_same_whatever_the_grouping():
    # four shares' partials added in share order, by one process of four threads or by "processes"
    # of two threads each whose outer group adds their zero-padded rows
    rng = np.random.default_rng(0)
    partials = [rng.standard_normal(7) * 10.0 ** rng.integers(-8, 8, 7) for _ in range(4)]
    expected = partials[0] + partials[1] + partials[2] + partials[3]

    def sums(group, shares):
        return lockstep.run(group, lambda s: group.batch_sum(partials[shares[s]]))

    whole = sums(lockstep.Lockstep(4, 4, 0), [0, 1, 2, 3])
    assert all(np.array_equal(w, expected) for w in whole)

    class Other(Collectives):  # the other process of two, holding shares 2 and 3
        size = 2

        def batch_sum(self, values):
            rows = values.reshape(4, -1).copy()
            rows[2], rows[3] = partials[2], partials[3]
            return rows.ravel()

    halves = sums(lockstep.Lockstep(2, 4, 0, Other()), [0, 1])
    assert all(np.array_equal(h, expected) for h in halves)


def test_a_failing_share_stops_the_others_instead_of_hanging():
    group = lockstep.Lockstep(3, 3, 0)

    def share(s):
        if s == 1:
            raise ValueError("share 1 failed")
        return group.batch_sum(np.ones(2))

    with pytest.raises(ValueError, match="share 1 failed"):
        lockstep.run(group, share)
    assert threading.active_count() < 10


@pytest.mark.usefixtures("forked")
def test_process_counts_must_divide_the_shares(monkeypatch):
    from layerkit.training import virtual

    model, loss, _ = zoo("alexnet_mnist")

    class Ranks(Collectives):
        size = 3

    # one line naming the file and the JSON path, as every model-file problem
    with pytest.raises(LayerkitError, match=r"mnist\.json: training\.virtual_shares: 4 shares .* over 3 MPI ranks"):
        virtual.forked_processes(model, loss, 128, 4, Ranks())
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")
    set_processes(4)
    try:
        # 4 processes would be used, but 6 shares only go into 1, 2, 3 or 6: 3, and the run says so
        assert virtual.forked_processes(model, loss, 128, 6, Collectives()) == (3, 4)
        assert virtual.forked_processes(model, loss, 128, 8, Collectives()) == (4, 4)
    finally:
        set_processes(None)


def test_a_model_whose_batch_cannot_be_split_is_refused(monkeypatch):
    from layerkit.training import virtual

    model, loss, _ = zoo("lenet5")
    monkeypatch.setattr(type(model.nodes[1].layer), "sample_coupling", "other")
    with pytest.raises(LayerkitError, match=r"lenet5\.json: training\.virtual_shares: needs a batch that can be split"):
        virtual.forked_processes(model, loss, 64, 2, Collectives())


@pytest.mark.usefixtures("hermetic", "one_thread", "forked")
def test_a_share_failing_in_a_worker_stops_the_run_with_its_traceback(tmp_path, monkeypatch):
    import os

    from layerkit.nn.network import Network

    parent, backward = os.getpid(), Network.backward

    def failing(self, caches, dout):
        if os.getpid() != parent:  # in the worker, while the main process waits at batch norm's sums
            raise ValueError("injected failure in a worker")
        return backward(self, caches, dout)

    monkeypatch.setattr(Network, "backward", failing)
    with pytest.raises(TrainingError, match="injected failure in a worker"):
        fit(tmp_path, "two", noisy(), 2, monkeypatch)
