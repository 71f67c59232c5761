"""The model zoo inside the package: names instead of paths, the listing, editable copies."""

from __future__ import annotations

import json
import re

import jsonschema

from conftest import ROOT
from layerkit.cli import main
from layerkit.modelfile import zoo


def test_zoo_is_inside_the_package_and_the_checkout_path_still_works():
    assert zoo.ZOO_DIR == ROOT / "layerkit" / "models"
    assert sorted(p.stem for p in (ROOT / "models").rglob("*.json")) == zoo.names()
    assert zoo.shipped("lab_cnn2") == ROOT / "layerkit" / "models" / "labs" / "lab_cnn2.json"
    assert "lenet5" in zoo.names()


def test_a_shipped_name_works_wherever_a_model_file_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # far from any models/ folder
    assert main(["validate", "lenet5", "cnn1.json"]) == 0
    assert main(["summary", "lenet5"]) == 0
    assert "model lenet5" in capsys.readouterr().out


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch, capsys, write_model):
    from conftest import tiny_model
    monkeypatch.chdir(tmp_path)
    write_model(tiny_model(), name="lenet5.json")
    assert main(["validate", "lenet5.json"]) == 0
    assert "4 layers" in capsys.readouterr().out


def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "lenet6"]) == 2
    err = capsys.readouterr().err
    assert "lenet6: no such file, nor a shipped model" in err and "lenet5" in err


def test_models_lists_one_line_per_model_with_its_results(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == zoo.names()
    lenet = next(line for line in lines if line.startswith("lenet5 "))
    assert "61,706 params" in lenet and zoo.RESULTS["lenet5"] in lenet and "mnist" in lenet
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["task"] for r in rows}["cnn2_3class"] == "mnist, classes 0, 1, 2"


def test_listed_accuracies_are_the_ones_in_results_md():
    table = (ROOT / "docs" / "results.md").read_text()
    documented = dict(re.findall(r"^\| (\w+) \| \w+ \| \d+ \| [^|]+ \| ([\d.]+%) \|", table, re.M))
    assert documented == zoo.RESULTS


def test_copy_writes_an_editable_model_whose_schema_resolves(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert main(["models", "copy", "lenet5", str(dest)]) == 0
    copy = dest / "lenet5.json"
    data = json.loads(copy.read_text())
    original = json.loads((zoo.ZOO_DIR / "lenet5.json").read_text())
    assert {k: v for k, v in data.items() if k != "$schema"} == {k: v for k, v in original.items() if k != "$schema"}
    schema = json.loads((dest / data["$schema"]).read_text())  # what an editor follows
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    assert main(["validate", str(copy)]) == 0
    capsys.readouterr()
    assert main(["models", "copy", "lenet5", str(dest)]) == 2  # never overwrites silently
    assert "already exists" in capsys.readouterr().err
    assert main(["models", "copy", "lenet5", str(dest), "--force"]) == 0
    assert main(["models", "copy", "nope", str(dest)]) == 2
