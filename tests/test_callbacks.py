"""Training callbacks from plugins: the hook, fit --callback, training.callbacks, the TensorBoard logger."""

from __future__ import annotations

import json
import struct
import types

import pytest

from train_support import hermetic, mlp_model  # noqa: F401 (fixture)
from layerkit import hookimpl
from layerkit.cli import main
from layerkit.errors import ModelFileError
from layerkit.modelfile.spec import spec_from_dict
from layerkit.plugins.manager import load_registry, reset_registry
from layerkit.training.trainer import Callback, build_callbacks


class Counter(Callback):
    type = "counter"
    description = "counts epochs"
    params_schema = {"type": "object", "properties": {"every": {"type": "integer", "minimum": 1, "default": 1}},
                     "additionalProperties": False}
    seen: list = []

    def __init__(self, run_dir=None, every=1):
        self.run_dir, self.every = run_dir, every

    def on_epoch_end(self, epoch, record, seconds):
        Counter.seen.append((str(self.run_dir), self.every, record["epoch"]))


@hookimpl
def layerkit_register_callbacks(register):
    register(Counter)


plugin = types.SimpleNamespace(__name__="counter_plugin", layerkit_register_callbacks=layerkit_register_callbacks)


@pytest.fixture
def registry(hermetic):  # noqa: F811
    reg = load_registry([plugin], entry_points=False)
    reset_registry(reg)
    Counter.seen = []
    yield reg
    reset_registry()


def _quick(**training):
    return mlp_model(hidden=8, dropout=0.0, **{"data": {"train_limit": 100, "test_limit": 20}, **training})


def test_a_plugin_callback_runs_from_the_model_file_with_its_parameters(registry, write_model, tmp_path):
    path = write_model(_quick(callbacks=[{"type": "counter", "every": 3}]))
    assert main(["fit", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert Counter.seen == [(str(tmp_path / "run"), 3, 1), (str(tmp_path / "run"), 3, 2)]


def test_fit_callback_adds_it_and_records_it_in_the_run(registry, write_model, tmp_path):
    path = write_model(_quick())
    assert main(["fit", str(path), "--callback", "counter", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert [s[2] for s in Counter.seen] == [1, 2]
    saved = json.loads((tmp_path / "run" / "model.json").read_text())
    assert saved["training"]["callbacks"] == [{"type": "counter"}]  # a resumed run logs the same way


def test_callback_sections_are_validated_like_layers(registry):
    with pytest.raises(ModelFileError) as info:
        spec_from_dict(_quick(callbacks=[{"type": "countr"}, {"type": "counter", "evry": 2}]))
    text = str(info.value)
    assert "training.callbacks[0].type: unknown callback type 'countr', did you mean 'counter'?" in text
    assert "training.callbacks[1]" in text and "evry" in text


def test_unknown_callback_on_the_command_line_exits_2(registry, write_model, capsys, tmp_path):
    path = write_model(_quick())
    assert main(["fit", str(path), "--callback", "nope", "--out", str(tmp_path / "run")]) == 2
    assert "unknown callback type 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Read TensorBoard event files back: TFRecord framing around Event protocol buffers."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            record = data[pos + 12:pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_logger_writes_loss_accuracy_and_lr_per_epoch(hermetic, write_model, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboardX", reason="the tensorboard logger needs the tensorboard extra")
    path = write_model(_quick(callbacks=[{"type": "tensorboard"}],
                              data={"train_limit": 100, "test_limit": 20, "validation_split": 0.2}))
    assert main(["fit", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    for key, tag in (("train_loss", "loss/train"), ("val_accuracy", "accuracy/validation"),
                     ("test_loss", "loss/test"), ("lr", "learning_rate")):
        assert scalars[tag] == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in history], tag


def test_tensorboard_logger_without_its_extra_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name == "tensorboardX":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    import re

    from layerkit.errors import LayerkitError, install_hint
    with pytest.raises(LayerkitError, match=re.escape(install_hint("tensorboard"))):
        build_callbacks([{"type": "tensorboard"}], None)
