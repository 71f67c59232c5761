"""docs/python-api.md runs as written: its python cells, in order, in one namespace."""

from __future__ import annotations

import re

from conftest import ROOT
from train_support import hermetic  # noqa: F401 (fixture)

DOC = ROOT / "docs" / "python-api.md"


def cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_python_api_page_runs_as_written(hermetic, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # the page saves a folder in the working directory
    found = cells()
    assert len(found) >= 6
    namespace: dict = {}
    for i, cell in enumerate(found):
        exec(compile(cell, f"{DOC.name} cell {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "val loss" in out  # verbose=1 printed a summary line per epoch
    assert (tmp_path / "lenet5-trained" / "preprocessing.json").is_file()
    assert namespace["report"].ok and namespace["tracker"].best[0] == 1
    assert namespace["history"].history["val_accuracy"][-1] > 0.5
