"""The shipped model zoo: the model files inside the package, usable by name.

Every command and API call that takes a model file also takes the name of a
shipped model (``layerkit fit lenet5``): a path that exists wins, otherwise a
bare name (``lenet5`` or ``lenet5.json``) is looked up here. The files live
in ``layerkit/models`` next to the schema they name (``layerkit/schemas``),
so their ``"$schema": "../schemas/model.schema.json"`` resolves inside an
installed package as in a checkout.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ZOO_DIR = PACKAGE_DIR / "models"
SCHEMA_FILE = PACKAGE_DIR / "schemas" / "model.schema.json"

#: final test accuracy on the full test set, seed 0, from docs/results.md (a test keeps them equal)
RESULTS = {
    "softmax_regression": "92.67%",
    "mlp_784_15_10": "95.34%",
    "cnn1": "98.23%",
    "cnn2_3class": "99.62%",
    "lenet5": "99.11%",
    "cnn2": "97.91%",
    "mlp": "98.45%",
    "lenet5_fashion": "90.66%",
    "resnet_mini": "98.82%",
    "alexnet_mnist": "99.58%",
    "reverse_transformer": "100.00%",
    "lab_cnn2_3class": "99.59%",
    "lab_cnn2": "97.60%",
    "lab_mlp_784_15_10_sigmoid": "93.57%",
    "lab_conv8_pool_softmax": "97.01%",
    "lab_alexnet_kaggle": "99.10%",
}

#: the language models' result instead of an accuracy: test bits per character (bpc = the mean
#: cross-entropy in nats over ln 2), seed 0, measured at commit 150c456, from docs/results.md (a test keeps
#: them equal)
BITS_PER_CHARACTER = {
    "char_lstm": 2.32,
    "tiny_transformer": 2.35,
}


def listed_result(name: str) -> str | None:
    """What ``layerkit models`` shows for a shipped model: its test accuracy, or a language model's bits
    per character (``2.32 bpc``); None where none is recorded."""
    if name in BITS_PER_CHARACTER:
        return f"{BITS_PER_CHARACTER[name]:.2f} bpc"
    return RESULTS.get(name)


def files() -> dict[str, Path]:
    """Name -> file of every shipped model: the zoo and, in ``labs/``, the lab reports' nets as they
    were (their names start with ``lab_``, so no name is in both)."""
    return {p.stem: p for p in sorted(ZOO_DIR.rglob("*.json"))}


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(files())


def shipped(source: str | Path) -> Path | None:
    """The shipped file a bare name (``lenet5``, ``lenet5.json``) stands for, or None."""
    text = str(source)
    if not text or "/" in text or "\\" in text:
        return None
    return files().get(text[:-5] if text.endswith(".json") else text)


def resolve(source: str | Path) -> Path:
    """An existing path as given; else the shipped model of that name; else the path (the
    caller reports it missing)."""
    path = Path(source)
    if path.exists():
        return path
    return shipped(source) or path


#: how many entries of a folder are compared with a mistyped name (a huge folder is not read whole)
SUGGEST_SCAN = 2000


def close_matches(source: str | Path) -> list[str]:
    """What a missing model file ``source`` may have meant: files beside it with a similar name
    (``mycnn.jsn`` -> ``mycnn.json``), then shipped models with a similar name; at most three."""
    import difflib
    from itertools import islice

    path = Path(source)
    found: list[str] = []
    try:
        folder = path.parent
        neighbours = [p.name for p in islice(folder.iterdir(), SUGGEST_SCAN) if p.is_file()]
    except OSError:
        folder, neighbours = path.parent, []
    for name in difflib.get_close_matches(path.name, neighbours, n=3, cutoff=0.75):
        found.append(name if str(folder) in ("", ".") else str(folder / name))
    if "/" not in str(source) and "\\" not in str(source):
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        found += difflib.get_close_matches(stem, names(), n=3, cutoff=0.75)
    return found[:3]
