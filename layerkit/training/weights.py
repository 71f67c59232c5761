"""Starting from another run's weights: every tensor whose layer name and shape match.

What ``training.init_from`` (``layerkit fit --init-from``) and ``Model.load_weights`` do: read the
tensors of a run directory, a saved model folder or a weights ``.npz``, load those that fit a
network by layer name and shape, and report which were loaded, skipped (and why) and new.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerkit.errors import CheckpointError
from layerkit.modelfile.spec import ModelSpec
from layerkit.nn.network import Network, load_npz

#: the files of a run directory (or saved model folder) read, in this order
WEIGHTS, CHECKPOINT = "weights.npz", "checkpoint.npz"


@dataclass
class LoadReport:
    """What loading weights by layer name did (``training.init_from``, ``Model.load_weights``): per
    tensor of the model (``LAYER/TENSOR``), whether it was ``loaded``, ``skipped`` (with why: the
    shapes differ) or ``new`` (not in the source); the source's tensors this model has no place for
    are ``unused``. Skipped and new tensors keep their initial values. ``sha256``: of ``weights_file``."""

    source: str
    weights_file: str
    sha256: str
    loaded: list[str]
    skipped: list[tuple[str, str]]
    new: list[str]
    unused: list[str]

    def lines(self) -> list[str]:
        """The report as the lines ``layerkit fit`` prints."""
        out = [f"init from {self.source} ({Path(self.weights_file).name}): {len(self.loaded)} tensors loaded, "
               f"{len(self.skipped)} skipped, {len(self.new)} new"]
        out.append(f"  loaded: {', '.join(self.loaded)}")
        if self.skipped:
            out.append(f"  skipped (initialized): {', '.join(f'{k} ({why})' for k, why in self.skipped)}")
        if self.new:
            out.append(f"  new, not in the source (initialized): {', '.join(self.new)}")
        if self.unused:
            out.append(f"  in the source, not in this model: {', '.join(self.unused)}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def record(self) -> dict[str, Any]:
        """What a run keeps of it (``init.json``)."""
        return {"path": str(Path(self.source).resolve()), "weights_file": str(Path(self.weights_file).resolve()),
                "sha256": self.sha256,
                "loaded": self.loaded, "skipped": [{"tensor": k, "why": why} for k, why in self.skipped],
                "new": self.new, "unused": self.unused}


def read_weights_source(path: str | Path) -> tuple[dict[str, np.ndarray], Path]:
    """The tensors of a run directory or saved model folder (its ``weights.npz``, else its last
    checkpoint's weights), or of a weights or checkpoint ``.npz``, by ``params|state/LAYER/TENSOR``;
    and the file they were read from."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in (WEIGHTS, CHECKPOINT) if (path / name).is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: no {WEIGHTS} or {CHECKPOINT}: not a run directory or a saved model")
    elif path.is_file():
        found = path
    else:
        raise CheckpointError(f"{path}: no such run directory or weights file")
    arrays = load_npz(found)
    if "meta" in arrays:  # a checkpoint: its model's weights
        arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return arrays, found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _label(key: str) -> str:
    return key.split("/", 1)[1]  # params/conv1/weight -> conv1/weight


def load_by_name(model: Network, source: str | Path, by_name: bool = True) -> LoadReport:
    """Load into ``model`` (a :class:`~layerkit.nn.network.Network`) the tensors of ``source`` (see
    :func:`read_weights_source`) whose layer name and shape match; the others keep their values.
    Raises :class:`CheckpointError` when no tensor matches. ``by_name=False``: the source's tensors
    are taken in order, and every one must match the model's in number, order and shape."""
    arrays, found = read_weights_source(source)
    expected = model.weights_dict()
    what = f"model {model.graph.spec.name!r}"
    if not by_name:
        theirs, ours = list(arrays.items()), list(expected.items())
        if len(theirs) != len(ours):
            raise CheckpointError(f"{source}: {len(theirs)} tensors, {what} has {len(ours)}; by_name=True loads "
                                  f"those whose layer name and shape match")
        for (key, value), (mine, target) in zip(theirs, ours, strict=True):
            if value.shape != target.shape:
                raise CheckpointError(f"{source}: tensor {key} has shape {value.shape} where {what} has "
                                      f"{_label(mine)} of shape {target.shape}; by_name=True loads those whose "
                                      f"layer name and shape match")
        arrays = {mine: value for (_, value), mine in zip(theirs, expected, strict=True)}
    loaded, skipped, new = [], [], []
    for key, target in expected.items():
        if key not in arrays:
            new.append(_label(key))
        elif not np.issubdtype(arrays[key].dtype, np.number) or np.issubdtype(arrays[key].dtype, np.complexfloating):
            skipped.append((_label(key), f"holds {arrays[key].dtype} values"))
        elif arrays[key].shape != target.shape:
            skipped.append((_label(key), f"shape {arrays[key].shape} in the source, {target.shape} here"))
        else:
            loaded.append(key)
    if not loaded:
        raise CheckpointError(f"{source}: no tensor matches {what} by layer name and shape "
                              f"({len(arrays)} tensors in the source, {len(expected)} in the model)")
    for key in loaded:
        expected[key][...] = arrays[key].astype(model.dtype, copy=False)
    return LoadReport(source=str(source), weights_file=str(found), sha256=_sha256(found),
                      loaded=[_label(k) for k in loaded], skipped=skipped, new=new,
                      unused=[_label(k) if k.count("/") >= 2 else k for k in arrays if k not in expected])


def init_from(spec: ModelSpec, model: Network) -> LoadReport | None:
    """Apply the model file's ``training.init_from`` (if any) to ``model``: a new run's start."""
    source = spec.training.get("init_from")
    return None if not source else load_by_name(model, source)
