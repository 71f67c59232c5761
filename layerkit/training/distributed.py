"""Starting a run on several MPI ranks: one command everywhere, rank 0 reads and writes.

Under ``mpiexec -n K layerkit fit ...`` every rank runs :func:`layerkit.training.runs.train`.
Rank 0 does everything a single process does (reads the model file or the run
directory, loads the data, writes the run directory, prints); at four points it hands
what it has to the other ranks, which run :func:`follow` and make the same collective
calls in the same order:

1. :meth:`Launch.start`: every rank's command line and model file must be the same
   (compared by digest, so a host with another copy of the file is caught), then rank 0's
   model dict goes to all;
2. :meth:`Launch.share_data`: the prepared arrays (only rank 0 needs to read the data);
3. the checkpoint when resuming, and whether the run is already complete;
4. then training itself, whose every step is collective (``layerkit.training.steps``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from layerkit import __version__
from layerkit.errors import LayerkitError
from layerkit.parallel.collectives import SINGLE, Collectives
from layerkit.errors import everywhere
from layerkit.training.trainer import Trainer

DATA_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")

_agreed = False  # this process's ranks have passed the start handshake


def agreed() -> bool:
    """Whether every rank was found started the same way: from then on an error on one rank is
    that rank's own (before, all ranks may be failing alike, and rank 0 reports for them)."""
    return _agreed


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Launch:
    """This process's part in starting a run: alone (``comm`` of size 1: every method is a no-op)
    or one of several MPI ranks."""

    def __init__(self, comm: Collectives = SINGLE) -> None:
        self.comm = comm

    @property
    def distributed(self) -> bool:
        return self.comm.size > 1

    def start(self, raw: dict | None, flags: dict, compare_model: bool = True) -> dict | None:
        """Check that every rank was started the same way, then return rank 0's model dict.

        ``raw`` is this rank's model file with the command line's overrides (when resuming,
        rank 0's copy from the run directory, which the other ranks need not see, and
        ``compare_model`` is false); ``flags`` the rest of the command line."""
        if not self.distributed:
            return raw
        mine = {"version": __version__, "model": digest(raw) if compare_model else None, "flags": digest(flags)}
        ranks = self.comm.gather(mine)
        for rank, theirs in enumerate(ranks[1:], 1):
            for key, what in (("version", "layerkit version"), ("model", "model file"), ("flags", "options")):
                if theirs[key] != ranks[0][key]:
                    raise everywhere(LayerkitError(
                        f"MPI rank {rank} was started with another {what} than rank 0; every rank must run the same "
                        f"command on the same model file (copy it to every host, or use a shared file system)"))
        raw = self.comm.broadcast(raw)
        global _agreed
        _agreed = True
        return raw

    def share_data(self, data):
        """Rank 0's prepared data on every rank (MNIST-sized: the whole set goes to each rank's memory)."""
        if not self.distributed:
            return data
        arrays = None if data is None else {k: getattr(data, k) for k in DATA_ARRAYS if getattr(data, k) is not None}
        rest = None if data is None else dataclasses.replace(data, **{k: None for k in DATA_ARRAYS})
        rest = self.comm.broadcast(rest)
        arrays = self.comm.broadcast_arrays(arrays)
        return dataclasses.replace(rest, **{k: arrays.get(k) for k in DATA_ARRAYS})

    def share_arrays(self, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        return arrays if not self.distributed else self.comm.broadcast_arrays(arrays)

    def share(self, value):
        return value if not self.distributed else self.comm.broadcast(value)


def follow(launch: Launch, raw: dict | None, flags: dict, *, resuming: bool, check_grads: Callable | None,
           callbacks: Sequence = (), registry=None):
    """What a rank other than 0 does in ``train``: the same collective calls as rank 0, no files.

    ``check_grads``: the gradient check rank 0 runs too, or None. Returns ``(None, result)``:
    the run directory is rank 0's."""
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict
    from layerkit.training.trainer import build_loss

    raw = launch.start(raw, flags, compare_model=not resuming)
    spec = spec_from_dict(raw, source=Path(flags.get("model") or "model.json").name, registry=registry)
    model = build_model(spec, registry=registry)
    if not resuming:  # the weights rank 0 starts from, read from the same files
        from layerkit.training.weights import init_from
        init_from(spec, model)
    loss = build_loss(spec, registry)
    data = launch.share_data(None)
    trainer = Trainer(model, loss, data, spec.training, callbacks=callbacks, registry=registry,
                      collectives=launch.comm)
    if resuming:
        trainer.restore(launch.share_arrays(None), source="rank 0's checkpoint")
        if launch.share(None):
            return None, trainer.result()
    if check_grads is not None:
        check_grads(trainer)
    return None, trainer.fit()
