"""Hostile and broken inputs end in one clear line and exit 2: never a traceback, a hang or a silent change.

The memory cases run in a child process under a capped address space (``resource.setrlimit``), so a
regression that allocates what the guards should refuse fails the test instead of taking the machine.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.training.runs import CHECKPOINT, train

from train_support import hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")
RNG = np.random.default_rng(5)
CAP_MIB = 768  # the child's address space: the guards must refuse before anything near this


def one_line_error(rc, err, *words):
    """Exit 2 and exactly one error line, the last (notes such as the sample counts may come before)."""
    assert rc == 2, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    for word in words:
        assert word in errors[0], err


def small_npz(path, n=30, shape=(28, 28), **override):
    arrays = {"x_train": RNG.integers(0, 256, (n, *shape), dtype=np.uint8), "y_train": np.arange(n) % 10,
              "x_test": RNG.integers(0, 256, (10, *shape), dtype=np.uint8), "y_test": np.arange(10) % 10}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def model_file(tmp_path, name="m.json", **training):
    path = tmp_path / name
    path.write_text(json.dumps(mlp_model(**{"epochs": 1, "batch_size": 10, "data": {}, **training})))
    return path


# -- memory: refused before it is allocated ----------------------------------------------

CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({cap} << 20, {cap} << 20))
    import contextlib, io
    from layerkit.cli import main
    out = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except BaseException as exc:  # what main let through: the test reports it
                rc, _ = repr(exc), err.write("Traceback " + repr(exc) + "\\n")
        out.append([rc, err.getvalue()])
    print(json.dumps(out))
""")


def run_capped(cases, tmp_path):
    """Run several CLI invocations in one child process with the address space capped."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "LAYERKIT_NUM_THREADS": "1",
           "LAYERKIT_SAMPLE_PARALLEL": "0", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("LAYERKIT_MAX_DATA_BYTES", None)
    done = subprocess.run([sys.executable, "-c", CHILD.format(cap=CAP_MIB), json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def gzip_bomb(path, mib):
    """A small gzip file that inflates to ``mib`` MiB of zeros, written without holding them."""
    zeros = bytes(1 << 20)
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as gz:
        for _ in range(mib):
            gz.write(zeros)


class HugeArray:
    """Pickles as numpy's array constructor asked for 10^12 bytes."""

    def __reduce__(self):
        try:  # numpy 2 renamed numpy.core to numpy._core
            from numpy._core.multiarray import _reconstruct
        except ImportError:
            from numpy.core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (10**6, 10**6), b"b"))


def test_memory_bombs_are_refused_before_allocation(tmp_path):
    # a convolution whose im2col columns alone need ~10 GB per sample, though its outputs are small
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"format": 1, "name": "cols", "input": {"shape": [128, 128, 128]},
                                "layers": [{"type": "conv2d", "filters": 1, "kernel_size": 31, "padding": 15},
                                           {"type": "flatten"}, {"type": "dense", "units": 10}],
                                "loss": {"type": "softmax_cross_entropy"}, "training": {"batch_size": 2}}))
    # a class id of 10^9: a lookup table indexed by label would take 8 GB
    (tmp_path / "npz").mkdir()
    small_npz(tmp_path / "npz" / "data.npz")
    model = model_file(tmp_path)
    # an IDX header whose byte count, 2^31 * 2^31 * 4 = 2^64, wraps to 0 in 64-bit arithmetic
    (tmp_path / "idx").mkdir()
    header = bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big")
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / "idx" / stem).write_bytes(header)
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "idx" / stem).write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes(3))
    # a gzip bomb: ~1 MB on disk, 200 MiB inflated (the cap allows 192 MiB per data file)
    (tmp_path / "bomb").mkdir()
    gzip_bomb(tmp_path / "bomb" / "mnist.pkl.gz", 200)
    # a pickle asking numpy for a 10^12-byte array
    (tmp_path / "pkl").mkdir()
    (tmp_path / "pkl" / "mnist.pkl").write_bytes(pickle.dumps(HugeArray(), protocol=2))

    results = run_capped([
        ["validate", str(conv)],
        ["check-grads", str(conv)],
        ["fit", str(model), "--dataset", "npz", "--data-dir", str(tmp_path / "npz"), "--classes", "0,1000000000",
         "--out", str(tmp_path / "r1")],
        ["fit", str(model), "--data-dir", str(tmp_path / "idx"), "--out", str(tmp_path / "r2")],
        ["fit", str(model), "--dataset", "mnist_pkl", "--data-dir", str(tmp_path / "bomb"),
         "--out", str(tmp_path / "r3")],
        ["fit", str(model), "--dataset", "mnist_pkl", "--data-dir", str(tmp_path / "pkl"),
         "--out", str(tmp_path / "r4")],
        ["validate", "/dev/zero"],
    ], tmp_path)
    one_line_error(*results[0], "conv.json", "scratch (im2col columns)", "--max-memory")
    one_line_error(*results[1], "conv.json", "scratch (im2col columns)")
    one_line_error(*results[2], "data.npz", "[1000000000]", "which no training sample has")
    one_line_error(*results[3], "train-images-idx3-ubyte",
                   "the header promises (2147483648, 2147483648, 4) = 18,446,744,073,709,551,616 bytes",
                   "LAYERKIT_MAX_DATA_BYTES")
    one_line_error(*results[4], "mnist.pkl.gz", "unpacks to more than", "LAYERKIT_MAX_DATA_BYTES")
    one_line_error(*results[5], "mnist.pkl", "refusing numpy _reconstruct other than an empty ndarray")
    one_line_error(*results[6], "/dev/zero", "larger than 16 MiB")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3", "r4"))


# -- deep structures ---------------------------------------------------------------------------

def test_deeply_nested_model_file(tmp_path, capsys):
    deep: dict = {"x": 1}
    for _ in range(500):
        deep = {"x": deep}
    path = tmp_path / "deep.json"
    path.write_text(json.dumps({**mlp_model(), "notes": deep}))
    for argv in (["fit", str(path)], ["evaluate", str(path), "--weights", str(path)], ["validate", str(path)]):
        rc = main(argv)
        one_line_error(rc, capsys.readouterr().err, "deep.json: notes.x.x", "nested more than 32 levels")


# -- malformed data -----------------------------------------------------------------------

@pytest.mark.parametrize("override, words", [
    ({"x_train": np.array([["a"] * 784] * 30).reshape(30, 28, 28)}, ["training images hold <U1 values"]),
    ({"y_train": np.array(["cat"] * 30)}, ["training labels hold <U3 values"]),
    ({"x_train": np.ones((30, 28, 28), np.complex64)}, ["training images are complex numbers"]),
    ({"y_test": np.full(10, np.nan)}, ["test labels are not whole numbers"]),
])
def test_malformed_npz_arrays(tmp_path, capsys, override, words):
    small_npz(tmp_path / "data.npz", **override)
    rc = main(["fit", str(model_file(tmp_path)), "--dataset", "npz", "--data-dir", str(tmp_path)])
    one_line_error(rc, capsys.readouterr().err, "data.npz", *words)


def kaggle_csv(rows=20, bom=False, newline="\n"):
    x = RNG.integers(0, 256, (rows, 784))
    lines = ["label," + ",".join(f"pixel{i}" for i in range(784))]
    lines += [",".join(map(str, [i % 10, *px])) for i, px in enumerate(x)]
    return ("\ufeff" if bom else "") + newline.join(lines) + newline, x


def test_csv_with_bom_and_crlf_loads(tmp_path):
    from layerkit.data import load_data

    text, x = kaggle_csv(bom=True, newline="\r\n")
    (tmp_path / "train.csv").write_bytes(text.encode("utf-8"))
    test_text, x_test = kaggle_csv(10, bom=True, newline="\r\n")
    (tmp_path / "test.csv").write_bytes(test_text.encode("utf-8"))
    data = load_data("kaggle_digits", data_dir=tmp_path)
    assert len(data.x_train) == 20 and len(data.x_test) == 10  # the labelled test.csv was recognised
    np.testing.assert_allclose(data.x_train.reshape(20, 784), x / 255, rtol=1e-6)


def labelled_csv_with_latin1_row() -> bytes:
    """A labelled test.csv whose header is plain ASCII (so it is read as a test split) and whose
    third data row holds a Latin-1 byte, well past the header the label sniffing reads."""
    text, _ = kaggle_csv(5)
    lines = text.encode("ascii").split(b"\n")
    lines[3] = lines[3].replace(b",", b",\xe9", 1)
    return b"\n".join(lines)


@pytest.mark.parametrize("test_csv, offset", [
    (b"\xef\xbb\xbfl\xe9bel,pixel0\n1,2\n", "offset 4"),  # the header (after a BOM) is Latin-1
    (labelled_csv_with_latin1_row(), None),  # a data row is Latin-1: found when the rows are read
], ids=["header", "data-row"])
def test_non_utf8_csv_is_refused_naming_the_file(tmp_path, capsys, test_csv, offset):
    text, _ = kaggle_csv()
    (tmp_path / "train.csv").write_text(text)
    (tmp_path / "test.csv").write_bytes(test_csv)
    rc = main(["fit", str(model_file(tmp_path)), "--dataset", "kaggle_digits", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    one_line_error(rc, err, "test.csv: not UTF-8", "byte 0xe9", "save it as UTF-8")
    if offset is None:  # the row's byte, not one the 64-byte header sniffing saw
        offset = f"offset {test_csv.index(bytes([0xE9]))}"
        assert test_csv.index(bytes([0xE9])) > 64
    assert offset in err, err


def test_channels_last_images_are_transposed_not_reshaped(tmp_path):
    from layerkit.data import load_data

    x = RNG.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    small_npz(tmp_path / "data.npz", x_train=x, y_train=np.arange(12) % 10, x_test=x[:4], y_test=np.arange(4))
    data = load_data("npz", {"normalize": "none"}, data_dir=tmp_path, input_shape=(3, 32, 32), num_outputs=10)
    np.testing.assert_array_equal(data.x_train, x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_of_plain_arrays_loads(tmp_path, protocol):
    from layerkit.data import load_data

    parts = tuple((RNG.random((k, 784)).astype(np.float32), np.arange(k) % 10) for k in (12, 4, 6))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(parts, f, protocol=protocol)
    data = load_data("mnist_pkl", data_dir=tmp_path)
    np.testing.assert_array_equal(data.x_test.reshape(6, 784), parts[2][0])


def test_pickled_object_arrays_are_refused(tmp_path):
    from layerkit.data.formats import safe_unpickle
    from layerkit.errors import DataError

    (tmp_path / "x.pkl").write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=5))
    with pytest.raises(DataError, match="object array"):
        safe_unpickle(tmp_path / "x.pkl")


# -- environment ---------------------------------------------------------------------------------

def test_unreadable_data_folder_is_reported_not_skipped(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "cache" / "layerkit"
    locked.mkdir(parents=True)
    if os.geteuid() == 0:  # root reads everything: make the folder look unreadable instead
        real = type(locked).exists

        def exists(self):
            if str(self).startswith(str(locked)):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(type(locked), "exists", exists)
    else:
        locked.chmod(0)
    try:
        rc = main(["fit", str(model_file(tmp_path))])
    finally:
        locked.chmod(0o755)
    one_line_error(rc, capsys.readouterr().err, str(locked), "permission denied", "--data-dir")


def test_read_only_out_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: not (mode & os.W_OK) if str(p) == str(out)
                            else real(p, mode))
    else:
        out.chmod(0o555)
    rc = main(["fit", str(model_file(tmp_path)), "--train-limit", "20", "--out", str(out)])
    out.chmod(0o755)
    one_line_error(rc, capsys.readouterr().err, str(out), "not writable", "--out")
    assert not any(out.iterdir())


def test_full_disk_during_a_checkpoint_is_clean_and_resumable(tmp_path, monkeypatch, capsys):
    model = model_file(tmp_path, epochs=2, data={"train_limit": 40, "test_limit": 10})
    real, calls = np.savez, []

    def savez(file, **arrays):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's checkpoint
            file.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, **arrays)
    monkeypatch.setattr(np, "savez", savez)
    out = tmp_path / "run"
    rc = main(["fit", str(model), "--out", str(out), "--quiet"])
    one_line_error(rc, capsys.readouterr().err, "checkpoint.npz", "no space left", f"--resume {out}")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary left
    monkeypatch.setattr(np, "savez", real)
    assert main(["fit", "--resume", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_run_files_are_readable_like_other_files(tmp_path):
    old = os.umask(0o022)
    try:
        train(mlp_model(epochs=1, data={"train_limit": 20, "test_limit": 10}), out=tmp_path / "run")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes


# -- tampered checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tamper") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(out.parent / "cache"))
        train(mlp_model(epochs=1, data={"train_limit": 20, "test_limit": 10}), out=out)
    return out


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(surprise=1), "meta.surprise: unknown field"),
    (lambda m: m.pop("rng"), "meta.rng: missing"),
    (lambda m: m["state"].pop("history"), "meta.state.history: missing"),
    (lambda m: m["state"].update(epoch="one"), "meta.state.epoch: str"),
    (lambda m: m["state"].update(step=-4), "meta.state.step: -4 is negative"),
    (lambda m: m["rng"].update(state={"state": "x"}), "meta.rng: not a PCG64 state"),
    (lambda m: m["state"].update(epoch=7), "meta.state: epoch 7"),
])
def test_tampered_checkpoint_metadata_is_refused_naming_the_file(finished_run, tmp_path, capsys, change, field):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    with np.load(copy / CHECKPOINT, allow_pickle=False) as ckpt:
        arrays = {k: ckpt[k] for k in ckpt.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(copy / CHECKPOINT, **arrays)
    rc = main(["fit", "--resume", str(copy)])
    one_line_error(rc, capsys.readouterr().err, f"{copy / CHECKPOINT}: {field}")


def test_gzip_data_is_read_in_bounded_pieces(tmp_path, monkeypatch):
    """The data limit applies to what comes out of gzip, not to the file size on disk."""
    from layerkit.data.idx import read_bytes
    from layerkit.errors import DataError

    gzip_bomb(tmp_path / "b.gz", 3)
    monkeypatch.setenv("LAYERKIT_MAX_DATA_BYTES", str(2 << 20))
    with pytest.raises(DataError, match="unpacks to more than"):
        read_bytes(tmp_path / "b.gz")
    monkeypatch.setenv("LAYERKIT_MAX_DATA_BYTES", str(4 << 20))
    assert len(read_bytes(tmp_path / "b.gz")) == 3 << 20
