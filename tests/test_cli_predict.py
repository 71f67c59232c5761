"""layerkit predict and export: every input kind, the same answers as the API, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import layerkit
from layerkit.cli import main
from train_support import mlp_model

SAMPLE = layerkit.__file__.replace("__init__.py", "data/embedded/mnist_sample.npz")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    with np.load(SAMPLE) as data:
        x, y, xt = data["x_train"][:300], data["y_train"][:300], data["x_test"][:6]
    model = layerkit.load(mlp_model(hidden=16, dropout=0.0, epochs=2))
    model.fit(x, y, verbose=0, class_names=[f"digit{i}" for i in range(10)])
    folder = model.save(tmp_path_factory.mktemp("predict") / "saved")
    return folder, model, xt


def _json(capsys, *args) -> list[dict]:
    assert main(["predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_arrays_images_and_csv_give_the_api_answers(saved, tmp_path, capsys):
    folder, model, xt = saved
    Image = pytest.importorskip("PIL.Image", reason="images need the images extra (Pillow)")
    want = model.predict_proba(xt)
    np.save(tmp_path / "x.npy", xt)
    np.savez(tmp_path / "x.npz", x_test=xt[:2])
    Image.fromarray(xt[0]).save(tmp_path / "d0.png")
    Image.fromarray(255 - xt[1]).save(tmp_path / "ink_on_paper.jpg", quality=100)
    header = ",".join(f"pixel{i}" for i in range(784))
    rows = "\r\n".join(",".join(map(str, r)) for r in xt.reshape(6, -1))
    (tmp_path / "test.csv").write_bytes(("\ufeff" + header + "\r\n" + rows + "\r\n").encode())  # BOM, CRLF
    out = _json(capsys, folder, tmp_path / "x.npy", tmp_path / "x.npz", tmp_path / "d0.png", tmp_path / "test.csv")
    assert [r["input"] for r in out[:7]] == [f"x.npy[{i}]" for i in range(6)] + ["x.npz[0]"]
    assert len(out) == 6 + 2 + 1 + 6
    expected = np.concatenate([want, want[:2], want[:1], want])
    for record, row in zip(out, expected, strict=True):
        assert record["class"] == int(row.argmax()) and record["name"] == f"digit{record['class']}"
        assert [t["class"] for t in record["top"]] == list(np.argsort(-row, kind="stable")[:3])
        assert all(abs(t["probability"] - row[t["class"]]) <= 1e-6 for t in record["top"])
    (inverted,) = _json(capsys, folder, tmp_path / "ink_on_paper.jpg", "--invert")
    assert inverted["class"] == int(want[1].argmax())


def test_text_output_names_class_and_probability(saved, capsys):
    folder, model, xt = saved
    path = folder.parent / "one.npy"
    np.save(path, xt[0])  # a single image gains its batch axis
    assert main(["predict", str(folder), str(path), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    c = int(model.predict(xt[:1])[0])
    assert line.startswith(f"one.npy: {c} (digit{c}) ") and "top 2: digit" in line


def test_kaggle_test_csv_becomes_a_submission(saved, tmp_path, capsys):
    folder, model, xt = saved
    rows = "\n".join(",".join(map(str, r)) for r in xt.reshape(6, -1))
    (tmp_path / "test.csv").write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + rows + "\n")
    assert main(["predict", str(folder), str(tmp_path / "test.csv"), "--submission", str(tmp_path / "sub.csv")]) == 0
    assert "6 predictions" in capsys.readouterr().out
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    assert lines[1:] == [f"{i + 1},digit{c}" for i, c in enumerate(model.predict(xt))]


@pytest.mark.parametrize("name, content, fragment", [
    ("wrong.npy", np.zeros((2, 20, 20), np.uint8), "does not fit the model's input"),
    ("rgb.npy", np.zeros((2, 3, 28, 28), np.uint8), "does not fit the model's input"),
    ("broken.png", b"not an image", "not an image Pillow can read"),
    ("broken.npz", b"PK\x03\x04 truncated", "not a readable .npz"),
    ("text.csv", b"a,b\n1,x\n", "malformed CSV"),
    ("notes.txt", b"hello", "unknown kind of input"),
    ("missing.npy", None, "no such file"),
])
def test_bad_inputs_exit_2_naming_the_file(saved, tmp_path, capsys, name, content, fragment):
    folder = saved[0]
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif content is not None:
        path.write_bytes(content)
    if name.endswith(".png"):
        pytest.importorskip("PIL", reason="images need the images extra (Pillow)")
    assert main(["predict", str(folder), str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}" in err and fragment in err and "Traceback" not in err


def test_wrong_image_size_needs_resize(saved, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image", reason="images need the images extra (Pillow)")
    folder, model, xt = saved
    Image.fromarray(xt[0]).resize((56, 56)).save(tmp_path / "big.png")
    assert main(["predict", str(folder), str(tmp_path / "big.png")]) == 2
    assert "big.png: image is 56x56 pixels, the model takes 28x28 (pass --resize" in capsys.readouterr().err
    assert main(["predict", str(folder), str(tmp_path / "big.png"), "--resize"]) == 0


def test_export_writes_an_onnx_file_that_matches_predict_proba(saved, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime", reason="the export check needs the onnx extra")
    folder, model, xt = saved
    assert main(["export", str(folder), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "input 'input' uint8 N x 1 x 28 x 28" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"input": xt[:, None]})
    assert np.max(np.abs(probs - model.predict_proba(xt))) <= 1e-5
    assert main(["export", str(folder), "--format", "tflite"]) == 2
