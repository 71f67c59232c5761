"""A mistyped model file gets one error line naming what it probably meant (issue #19, item 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerkit.cli import main


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_file_beside_it_is_suggested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mycnn.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.chdir(tmp_path)
    line = _error(["fit", "mycnn.jsn"], capsys)
    assert line.endswith("mycnn.jsn: no such file, nor a shipped model of that name; did you mean mycnn.json?")
    assert "lenet5" not in line  # not the list of every shipped model
    line = _error(["validate", str(tmp_path / "mycnn.jsn")], capsys)
    assert line.endswith(f"did you mean {tmp_path / 'mycnn.json'}?")


def test_a_close_shipped_name_is_suggested(capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(["summary", "lenet6"], capsys).endswith("did you mean lenet5?")


def test_nothing_close_points_to_the_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    line = _error(["fit", "zzzz.json"], capsys)
    assert line.endswith("zzzz.json: no such file, nor a shipped model of that name; "
                         "'layerkit models' lists the shipped ones")
