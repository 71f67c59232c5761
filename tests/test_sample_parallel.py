"""Sample-parallel training: the shards add up to the whole batch, runs stay reproducible and
resumable, worker failures are errors and no worker outlives its fit."""

from __future__ import annotations

import errno
import json
import multiprocessing
import multiprocessing.context
import os
import sys

import numpy as np
import pytest

from layerkit.parallel import threads as parallel
from layerkit.modelfile.build import build_model
from layerkit.errors import TrainingError
from layerkit.parallel.processes import available
from layerkit.nn.losses import Loss, SoftmaxCrossEntropy
from layerkit.nn.samplerandom import SampleRandom
from layerkit.nn.network import load_npz
from layerkit.training.runs import HISTORY_JSON, WEIGHTS, train
from layerkit.training.sample_parallel import SampleParallel, shard_count
from layerkit.modelfile.spec import read_model_file, spec_from_dict
from layerkit.training.trainer import TrainingInterrupted

from train_support import InterruptAt, hermetic  # noqa: F401 (hermetic is a fixture)

pytestmark = [pytest.mark.usefixtures("hermetic"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sample-parallel needs fork (Linux)")]

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def convnet(norm=False, **training) -> dict:
    train_cfg = {"dataset": "mnist", "epochs": 2, "batch_size": 32, "seed": 5,
                 "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
                 "data": {"train_limit": 320, "test_limit": 64}}
    train_cfg.update(training)
    layers = [{"name": "conv", "type": "conv2d", "filters": 4, "kernel_size": 3},
              {"type": "relu"}, {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
              {"name": "logits", "type": "dense", "units": 10}]
    if norm:  # batch statistics (2-d and 4-d), dropout and shifts: what couples or randomises samples
        train_cfg["data"] = {**train_cfg["data"], "augment": {"shift": 1}}
        layers[1:1] = [{"name": "bn1", "type": "batch_norm"}]
        layers[-1:-1] = [{"name": "fc", "type": "dense", "units": 16}, {"name": "bn2", "type": "batch_norm"},
                         {"type": "relu"}, {"type": "dropout", "rate": 0.3}]
    return {"format": 1, "name": "conv_small", "input": {"shape": [1, 28, 28]}, "layers": layers,
            "loss": {"type": "softmax_cross_entropy"}, "training": train_cfg}


@pytest.fixture
def threads():
    """Run the test as on a machine with ``n`` cores."""
    def use(n):
        parallel.set_num_threads(n)
    yield use
    parallel.set_num_threads(None)


class Shares:
    """The batch sizes the main process computed: halves when a batch was really split."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def split(self, batch_size: int = 32) -> bool:
        return bool(self.sizes) and max(self.sizes) <= -(-batch_size // 2)

    def whole(self, batch_size: int = 32) -> bool:
        return bool(self.sizes) and max(self.sizes) == batch_size


@pytest.fixture
def forced(monkeypatch, threads):
    """Sample-parallel on 2 processes, with a record of what the main process computed."""
    from layerkit.nn.network import Network as Model

    # the tiny test nets are below the cost rule; the rule itself is tested separately
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")
    threads(2)
    shares, parent, inner = Shares(), os.getpid(), Model.loss_and_gradients

    def recorded(self, loss, x, *args, **kwargs):
        if os.getpid() == parent:  # the workers' records would stay in their own memory anyway
            shares.sizes.append(len(x))
        return inner(self, loss, x, *args, **kwargs)

    monkeypatch.setattr(Model, "loss_and_gradients", recorded)
    return shares


@pytest.fixture(autouse=True)
def no_leftover_workers():
    yield
    assert multiprocessing.active_children() == []


def zoo(name):
    raw, source = read_model_file(REPO / "models" / f"{name}.json")
    spec = spec_from_dict(raw, source=source)
    return build_model(spec), SoftmaxCrossEntropy(), spec.training["batch_size"]


def test_cost_rule_picks_convnets_not_mlps(monkeypatch):
    if not available():
        pytest.skip("this system has no process-shared semaphores to take away")
    monkeypatch.delenv("LAYERKIT_SAMPLE_PARALLEL", raising=False)
    lenet, loss, batch = zoo("lenet5")
    assert shard_count(lenet, loss, batch, threads=2) == 2
    assert shard_count(lenet, loss, batch, threads=4) == 4
    assert shard_count(lenet, loss, batch, threads=1) == 1
    assert shard_count(lenet, loss, 8, threads=2) == 1  # shards of 4 samples: not worth a worker
    small, loss, batch = zoo("cnn2_3class")  # just under MIN_BATCH_FLOPS: the break-even case
    assert shard_count(small, loss, batch, threads=2) == 1
    cnn2, loss, batch = zoo("cnn2")
    assert shard_count(cnn2, loss, batch, threads=2) == 2
    softmax, loss, batch = zoo("softmax_regression")  # all the work is in the weights
    assert shard_count(softmax, loss, batch, threads=2) == 1
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")
    assert shard_count(softmax, loss, batch, threads=2) == 2
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "0")
    assert shard_count(lenet, loss, 64, threads=2) == 1


def test_batch_norm_and_dropout_split_unflagged_layers_never(monkeypatch):
    monkeypatch.setenv("LAYERKIT_SAMPLE_PARALLEL", "1")
    for name in ("alexnet_mnist", "mlp", "resnet_mini"):  # batch norm and/or dropout
        model, loss, batch = zoo(name)
        assert shard_count(model, loss, batch, threads=2) == 2, name

    class BatchLoss(Loss):
        type = "batch_coupled"  # sample_coupling left at OTHER: e.g. a loss over pairs in the batch

    lenet, _, batch = zoo("lenet5")
    assert shard_count(lenet, BatchLoss(), batch, threads=2) == 1
    # a layer that says nothing about samples (a third-party one, say) keeps the batch whole
    monkeypatch.setattr(type(lenet.nodes[1].layer), "sample_coupling", "other")
    assert shard_count(lenet, SoftmaxCrossEntropy(), batch, threads=2) == 1


def whole_batch(model, loss, x, y, rng=None):
    out, caches = model.forward(x, training=True, rng=rng)
    value, lcache = loss.forward(out, y)
    grads = model.backward(caches, loss.backward(lcache))
    hits = int(np.count_nonzero(loss.predict(out) == y))
    return value, hits, [grads[n][t] for n in model.params for t in model.params[n]]


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("norm", [False, True], ids=["per-sample", "batch-norm"])
def test_step_adds_up_to_the_whole_batch(shards, norm):
    model = build_model(spec_from_dict(convnet(norm)))  # with norm: dropout too, drawn per sample
    loss = SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    idx = rng.permutation(100)[:45]
    snapshot = lambda: {k: {t: v.copy() for t, v in d.items()} for k, d in model.state.items()}  # noqa: E731
    with SampleParallel(model, loss, x, y, shards) as sp:
        for _ in range(2):
            before = snapshot()
            value, hits, grads = sp.step(idx, np.random.default_rng(1), key=7)
            after_split = snapshot()
            model.state = before
            ref_value, ref_hits, ref_grads = whole_batch(model, loss, x[idx], y[idx], SampleRandom(7, idx))
            assert value == pytest.approx(ref_value, rel=1e-5) and hits == ref_hits
            for g, r in zip(grads, ref_grads, strict=True):
                assert g.dtype == np.float32
                np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
            # running statistics: the whole batch's, kept by the main process
            for name, tensors in model.state.items():
                for t, v in tensors.items():
                    np.testing.assert_allclose(after_split[name][t], v, rtol=1e-5, atol=1e-6)
            for tensors in model.params.values():  # the workers must see the main process's new weights
                for t in tensors.values():
                    t *= 0.5
        # a batch smaller than the shard count still works (the last batch of an epoch can be);
        # batch norm refuses one sample in training, so it gets two (one per shard with 2 shards)
        small = idx[:2 if norm else 1]
        value, hits, grads = sp.step(small, np.random.default_rng(1), key=7)
        assert value == pytest.approx(whole_batch(model, loss, x[small], y[small], SampleRandom(7, small))[0],
                                      rel=1e-5)


def final(run_dir):
    return load_npz(run_dir / WEIGHTS), json.loads((run_dir / HISTORY_JSON).read_text())


@pytest.mark.parametrize("norm", [False, True], ids=["per-sample", "batch-norm"])
def test_fit_is_reproducible_and_matches_one_process(forced, threads, tmp_path, norm):
    runs = []
    for name, n in (("a", 2), ("b", 2), ("one", 1)):
        threads(n)
        forced.sizes.clear()
        train(convnet(norm, **({"optimizer": {"type": "sgd", "lr": 0.05}} if norm else {})), out=tmp_path / name)
        # what is compared must really be two processes against one
        assert forced.split() if n == 2 else forced.whole(), (name, forced.sizes[:4])
        runs.append(final(tmp_path / name))
    (wa, ha), (wb, hb), (w1, h1) = runs
    assert ha == hb and all(np.array_equal(wa[k], wb[k]) for k in wa)
    # another split sums in another order: the same training up to float32 rounding, dropout masks
    # and shifts included (they are drawn per sample, not per process)
    for k in wa:
        np.testing.assert_allclose(wa[k], w1[k], rtol=1e-3, atol=1e-5)
    assert ha[-1]["train_loss"] == pytest.approx(h1[-1]["train_loss"], rel=1e-3)


@pytest.mark.parametrize("norm", [False, True], ids=["per-sample", "batch-norm"])
def test_interrupted_and_resumed_is_bit_identical(forced, tmp_path, norm):
    train(convnet(norm), out=tmp_path / "straight")
    with pytest.raises(TrainingInterrupted):
        train(convnet(norm), out=tmp_path / "cut", callbacks=[InterruptAt(0, 4)])
    assert multiprocessing.active_children() == []
    train(resume=tmp_path / "cut")
    assert forced.split(), forced.sizes[:4]
    (w1, h1), (w2, h2) = final(tmp_path / "straight"), final(tmp_path / "cut")
    assert h1 == h2 and all(np.array_equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("norm", [False, True], ids=["per-sample", "batch-norm"])
def test_worker_exception_is_a_training_error(forced, tmp_path, monkeypatch, norm):
    # in the middle of a step: with batch norm the main process is waiting for this worker
    # at a batch_sum then, and must be released rather than hang
    from layerkit.nn.network import Network as Model

    parent, backward = os.getpid(), Model.backward

    def fails_in_worker(self, caches, dout):
        if os.getpid() != parent:
            raise ValueError("boom in the worker")
        return backward(self, caches, dout)

    monkeypatch.setattr(Model, "backward", fails_in_worker)
    with pytest.raises(TrainingError, match="(?s)worker 1 failed.*boom in the worker"):
        train(convnet(norm), out=tmp_path / "run")
    assert forced.split(), forced.sizes


def test_dead_worker_is_a_training_error():
    model = build_model(spec_from_dict(convnet()))
    x = np.zeros((8, 1, 28, 28), np.float32)
    with SampleParallel(model, SoftmaxCrossEntropy(), x, np.zeros(8, np.int64), 2) as sp:
        sp._procs[0].kill()
        with pytest.raises(TrainingError, match="worker 1 died.*LAYERKIT_SAMPLE_PARALLEL=0"):
            sp.step(np.arange(8))


def test_diverging_sharded_run_stops_cleanly(forced, tmp_path):
    with pytest.raises(TrainingError, match="loss became"):
        train(convnet(optimizer={"type": "sgd", "lr": 1e30}), out=tmp_path / "run")
    assert forced.split(), forced.sizes


def test_no_process_shared_semaphores_means_one_process(monkeypatch):
    if not available():
        pytest.skip("this system has no process-shared semaphores to take away")
    monkeypatch.delenv("LAYERKIT_SAMPLE_PARALLEL", raising=False)
    lenet, loss, batch = zoo("lenet5")
    assert shard_count(lenet, loss, batch, threads=2) == 2

    def no_semaphores(*args, **kwargs):
        # what a container without a writable /dev/shm answers
        raise OSError(errno.ENOSYS, "Function not implemented")

    try:
        with monkeypatch.context() as patch:
            patch.setattr(multiprocessing.context.BaseContext, "Barrier", no_semaphores)
            available.cache_clear()
            assert not available()
            assert shard_count(lenet, loss, batch, threads=2) == 1
    finally:
        available.cache_clear()  # the next caller asks the real system again


def test_processes_setting_and_its_old_name(monkeypatch):
    from layerkit.parallel.processes import processes

    monkeypatch.delenv("LAYERKIT_PROCESSES", raising=False)
    monkeypatch.setenv("LAYERKIT_NUM_THREADS", "3")  # the old name still counts processes
    parallel.set_num_threads(None)
    try:
        assert processes() == 3
        monkeypatch.setenv("LAYERKIT_PROCESSES", "5")
        assert processes() == 5
        lenet, loss, batch = zoo("lenet5")
        assert shard_count(lenet, loss, batch) == 5
    finally:
        parallel.set_num_threads(None)


def test_forked_shards_are_a_collectives_group():
    # the group's members run in forked processes in training; threads share the same buffer
    # and barrier, which is all a member uses
    from concurrent.futures import ThreadPoolExecutor

    model = build_model(spec_from_dict(convnet(norm=True)))
    sp = SampleParallel(model, SoftmaxCrossEntropy(), np.zeros((4, 1, 28, 28), np.float32), np.zeros(4, np.int64), 3)
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(40_000).astype(np.float32) for _ in range(3)]  # more than one exchange

    def member(shard):
        group = sp.group(shard)
        mine = parts[shard].copy()
        group.allreduce_sum(mine)
        group.barrier()
        return group.rank, group.size, mine, group.batch_sum(np.array([shard + 1.0]))

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(member, range(3)))
    expected = (parts[0].astype(np.float64) + parts[1] + parts[2]).astype(np.float32)
    for shard, (rank, size, total, sums) in enumerate(results):
        assert (rank, size) == (shard, 3)
        np.testing.assert_array_equal(total, expected)  # the same bits on every member
        assert sums.tolist() == [6.0]
