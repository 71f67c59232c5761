"""Which kernel path runs (LAYERKIT_KERNELS), where numba's cache goes, the explicit fallback to the
reference, `layerkit info`, and the two paths training the same weights bit for bit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.errors import KernelError
from layerkit.kernels import select
from layerkit.kernels.registry import KERNELS
from layerkit.kernels.windows import window
from conftest import ROOT

needs_numba = pytest.mark.skipif(not select.numba_installed(), reason="needs the fast extra (numba)")


@pytest.mark.parametrize("value, path", [("numpy", "numpy"), (" NumPy ", "numpy"), ("", None), ("auto", None)])
def test_the_variable_chooses_the_path(monkeypatch, value, path):
    monkeypatch.setenv(select.ENV, value)
    # auto (or unset) means numba exactly when it is installed
    want = path or ("numba" if select.numba_installed() else "numpy")
    assert select.decide().path == want


def test_numba_asked_for_but_missing_is_an_error_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(select, "numba_installed", lambda: False)
    with pytest.raises(KernelError, match=r"layerkit\[fast\]"):
        select.decide("numba")
    assert select.decide("auto").path == "numpy"  # auto falls back, and says why
    assert "not installed" in select.decide("auto").reason


def test_an_unknown_path_is_an_error():
    with pytest.raises(KernelError, match="auto, numpy, numba"):
        select.decide("cuda")


def test_float64_always_runs_the_reference():
    # the gradient checks run float64: they never reach numba
    assert select.kernel("max_pool2d", np.dtype(np.float64)) is KERNELS["max_pool2d"].reference


def test_the_cache_goes_where_the_user_can_write(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert select.cache_dir() == tmp_path / "layerkit" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))  # the user's own setting wins
    assert select.cache_dir() == tmp_path / "mine"


@needs_numba
@pytest.mark.parametrize("pool, stride, padding, compiled", [
    (2, 2, 0, True), (2, 2, 1, True), (3, 2, 0, False), (2, 1, 0, False), ((2, 3), 2, 0, False)])
def test_windows_the_compiled_kernel_does_not_cover_run_the_reference(pool, stride, padding, compiled):
    from layerkit.kernels import maxpool_numba

    g = window((7, 7), pool, stride, padding)
    assert maxpool_numba.compiled_for(g) is compiled
    impl = select.compiled("max_pool2d")
    assert (impl.argmax_buffer((1, 1, g.ho, g.wo), g) is not None) is compiled  # None: the reference runs
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((2, 3, g.ho, g.wo)).astype(np.float32)
    spec = KERNELS["max_pool2d"]
    from layerkit.kernels.kernel import KernelExample

    ex = KernelExample("", (x, dy, pool, stride, padding))
    got, want = spec.run(impl, ex), spec.run(spec.reference, ex)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes()


def _train(path, net, steps=4, exact_only=False):
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict
    from layerkit.nn.optimizers import SGD

    raw = json.loads((ROOT / net).read_text())
    raw.pop("$schema", None)
    model = build_model(spec_from_dict(raw, source=net), seed=0)
    keys = [(k, t) for k, d in model.params.items() for t in d]
    opt = SGD([model.params[k][t] for k, t in keys], lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    # exact_only: the compiled kernels that promise the reference's bits, the others' references
    impls = {name: (select.compiled(name) if path == "numba" and (k.tolerance.exact or not exact_only) else k.reference)
             for name, k in KERNELS.items()}
    with select.forced(impls):
        for _ in range(steps):
            x = rng.standard_normal((32, *raw["input"]["shape"])).astype(np.float32)
            x[:, :, ::3] = 0.0  # flat regions: ties in every pool window
            out, caches = model.forward(x, training=True, rng=np.random.default_rng(0))
            grads = model.backward(caches, ((out - out.mean()) / len(x)).astype(np.float32))
            opt.step([grads[k][t] for k, t in keys])
    return {f"{k}/{t}": v.tobytes() for k, d in model.params.items() for t, v in d.items()}


@needs_numba
def test_the_exact_kernels_train_the_same_weights_bit_for_bit():
    net = "bench/nets/lenet_style.json"
    assert _train("numba", net, exact_only=True) == _train("numpy", net, exact_only=True)


@needs_numba
def test_both_paths_train_the_same_weights_within_float32_rounding():
    # the direct convolution sums in another order: four SGD steps move the weights apart by rounding only
    net = "bench/nets/lenet_style.json"
    got, want = _train("numba", net), _train("numpy", net)
    assert got.keys() == want.keys() and got != want
    for key in want:
        a, b = np.frombuffer(got[key], np.float32), np.frombuffer(want[key], np.float32)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), key


def test_info_shows_the_path_and_why(monkeypatch, capsys):
    monkeypatch.setenv(select.ENV, "numpy")
    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernels"]["path"] == "numpy" and out["kernels"]["why"] == "LAYERKIT_KERNELS=numpy"
    assert [k["name"] for k in out["kernels"]["kernels"]] == list(KERNELS)
    assert out["kernels"]["numba_cache_dir"] and out["threads"]["layerkit"] >= 1
    assert main(["info"]) == 0
    assert "kernels: numpy (LAYERKIT_KERNELS=numpy)" in capsys.readouterr().out


def test_info_refuses_a_bad_value_with_exit_2(monkeypatch, capsys):
    monkeypatch.setenv(select.ENV, "fastest")
    assert main(["info"]) == 2
    assert "LAYERKIT_KERNELS='fastest'" in capsys.readouterr().err


@needs_numba
def test_info_check_runs_the_kernel_check(monkeypatch, capsys):
    monkeypatch.setenv(select.ENV, "numba")
    assert main(["info", "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checked"]["max_pool2d"] > 0


@needs_numba
def test_check_grads_never_imports_numba():
    # check-grads must not get slower with the fast extra: it runs float64, so it never even loads
    # numba, whatever LAYERKIT_KERNELS asks for
    code = ("import sys; from layerkit.cli import main; "
            "rc = main(['check-grads', 'models/lenet5.json', '--json']); "
            "print(rc, 'numba' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, select.ENV: "numba"})
    assert out.stderr.split()[-2:] == ["0", "False"], out.stderr


@pytest.fixture
def fresh_choice():
    # the path is decided once per process: decide again for this test, and again after it
    select.reset()
    yield
    select.reset()


@needs_numba
def test_auto_loads_a_compiled_kernel_only_once_it_pays(monkeypatch, fresh_choice):
    # a short run (a 1-epoch fit, a test) never pays numba's load time; the compiled kernel gives the
    # same bits, so switching mid-run changes nothing
    monkeypatch.setenv(select.ENV, "auto")
    monkeypatch.setattr(select, "LOAD_AFTER", 1000)
    f32 = np.dtype(np.float32)
    reference = KERNELS["max_pool2d"].reference
    assert select.kernel("max_pool2d", f32, 600) is reference
    assert select.active_paths() == {}  # nothing loaded yet
    assert select.kernel("max_pool2d", f32, 600).path == "numba"  # 1,200 values seen: loaded
    assert select.active_paths() == {"max_pool2d": "numba"}


@needs_numba
def test_a_kernel_that_pays_sooner_loads_sooner(monkeypatch, fresh_choice):
    import dataclasses

    monkeypatch.setenv(select.ENV, "auto")
    monkeypatch.setattr(select, "LOAD_AFTER", 10**9)
    monkeypatch.setitem(KERNELS, "conv2d_direct", dataclasses.replace(KERNELS["conv2d_direct"], load_after=1000))
    f32 = np.dtype(np.float32)
    assert select.kernel("conv2d_direct", f32, 600).path == "numpy"
    assert select.kernel("conv2d_direct", f32, 600).path == "numba"
    assert select.kernel("max_pool2d", f32, 10**6).path == "numpy"  # the default still holds for the others


@needs_numba
def test_numba_asked_for_loads_at_the_first_call(monkeypatch, fresh_choice):
    monkeypatch.setenv(select.ENV, "numba")
    assert select.kernel("max_pool2d", np.dtype(np.float32), 1).path == "numba"


def test_numpy_asked_for_never_loads_a_compiled_kernel(monkeypatch, fresh_choice):
    monkeypatch.setenv(select.ENV, "numpy")
    monkeypatch.setattr(select, "LOAD_AFTER", 0)
    assert select.kernel("max_pool2d", np.dtype(np.float32), 10**9).path == "numpy"


@needs_numba
def test_info_check_exits_1_on_a_wrong_kernel(monkeypatch, capsys):
    import dataclasses

    wrong = dataclasses.replace(KERNELS["max_pool2d"], compiled_module="test_kernels")  # its IMPL: LastTie
    monkeypatch.setitem(KERNELS, "max_pool2d", wrong)
    assert main(["info", "--check"]) == 1
    assert "check kernel_matches_reference failed" in capsys.readouterr().err
