"""Graph wiring checks on layer names and ``inputs`` alone.

Kept apart from shape inference so that :mod:`layerkit.modelfile.spec` can report wiring
mistakes together with schema mistakes (all problems of a file at once),
without importing the graph builder.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from layerkit.errors import Problem
from layerkit.nn.layer import RESERVED_INPUT


class Wired(Protocol):
    """What the wiring checks read of a layer entry (a :class:`~layerkit.modelfile.spec.LayerSpec` has it)."""

    index: int
    name: str
    type: str
    inputs: list[str]

    @property
    def label(self) -> str: ...


def config_arity(cls: Any, config: Any) -> int | None:
    """How many inputs a layer of class ``cls`` with hyper-parameters ``config`` takes: the class's
    ``arity``, or the instance's where ``__init__`` sets it from the config (a recurrent layer with
    ``padding_idx`` reads the token ids as a second input)."""
    arity = getattr(cls, "arity", 1)
    try:
        return getattr(cls(**dict(config)), "arity", arity)
    except Exception:  # a bad config is reported with the shapes
        return arity


def arity_problem(layer: Wired, arity: int | None, source: str) -> Problem | None:
    """``arity`` None means "two or more" (add, concat)."""
    n = len(layer.inputs)
    where = ("layers", layer.index, "inputs")
    if arity is None and n < 2:
        return Problem(f"{layer.label} needs two or more inputs, got {n}", where, source)
    if arity is not None and n != arity:
        plural = "input" if arity == 1 else "inputs"
        return Problem(f"{layer.label} takes {arity} {plural}, got {n}", where, source)
    return None


def wiring_problems(layers: Sequence[Wired], output: str, source: str) -> list[Problem]:
    """Unknown input names, self-loops, cycles, an unknown output, unused branches."""
    by_name = {layer.name: layer for layer in layers}
    problems: list[Problem] = []
    for layer in layers:
        for ref in layer.inputs:
            if ref == layer.name:
                problems.append(Problem(f"{layer.label} reads its own output (a self-loop)",
                                        ("layers", layer.index, "inputs"), source))
            elif ref != RESERVED_INPUT and ref not in by_name:
                problems.append(Problem(f"{layer.label} reads unknown layer {ref!r}"
                                        f"{_did_you_mean(ref, [*by_name, RESERVED_INPUT])}",
                                        ("layers", layer.index, "inputs"), source))
    position = {layer.name: i for i, layer in enumerate(layers)}
    for cycle in _cycles(layers, by_name):
        # start at the layer written first, so the message is the same whatever the DFS did
        start = min(range(len(cycle)), key=lambda i: position[cycle[i]])
        cycle = cycle[start:] + cycle[:start]
        first = by_name[cycle[0]]
        loop = " -> ".join(repr(name) for name in [*cycle, cycle[0]])
        problems.append(Problem(f"the layers {loop} form a cycle", ("layers", first.index, "inputs"), source))
    if output not in by_name:
        problems.append(Problem(f"output {output!r} is not a layer name{_did_you_mean(output, list(by_name))}",
                                ("output",), source))
    if problems:
        # a misspelt input or a cycle cuts layers off the output; "unused" would be noise
        return problems
    needed = ancestors(output, by_name) | {output}
    for layer in layers:
        if layer.name not in needed:
            problems.append(Problem(f"{layer.label} does not contribute to the output {output!r} "
                                    f"(unused branch)", ("layers", layer.index), source))
    return problems


def ancestors(name: str, by_name: Mapping[str, Wired]) -> set[str]:
    """Every layer ``name`` reads from, directly or not (unknown names skipped)."""
    seen: set[str] = set()
    stack = [r for r in by_name[name].inputs if r in by_name]
    while stack:
        ref = stack.pop()
        if ref not in seen:
            seen.add(ref)
            stack.extend(r for r in by_name[ref].inputs if r in by_name)
    return seen


def _cycles(layers: Sequence[Wired], by_name: dict[str, Wired]) -> list[list[str]]:
    """Each cycle once (self-loops excluded: they get their own message)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {layer.name: WHITE for layer in layers}
    found: list[list[str]] = []
    for root in layers:
        if colour[root.name] != WHITE:
            continue
        # iterative DFS: model files can be deep enough to hit the recursion limit
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root.name, 0)]
        while stack:
            name, i = stack.pop()
            if i == 0:
                colour[name] = GREY
                path.append(name)
            refs = [r for r in by_name[name].inputs if r in by_name and r != name]
            if i < len(refs):
                stack.append((name, i + 1))
                ref = refs[i]
                if colour[ref] == WHITE:
                    stack.append((ref, 0))
                elif colour[ref] == GREY:
                    # data flows ref -> ... -> name -> ref; report it in that direction
                    found.append(list(reversed(path[path.index(ref):])))
            else:
                colour[name] = BLACK
                path.pop()
    return found


def topological_order(layers: Sequence[Wired], output: str) -> list:
    """File order among ready layers, output last. Assumes ``wiring_problems`` found none."""
    pending = {layer.name: {r for r in layer.inputs if r != RESERVED_INPUT} for layer in layers}
    done: set[str] = set()
    order = []
    remaining = list(layers)
    while remaining:
        ready = next(layer for layer in remaining if pending[layer.name] <= done)
        remaining.remove(ready)
        order.append(ready)
        done.add(ready.name)
    # every layer is an ancestor of the output, so moving it last keeps the order valid
    out = next(layer for layer in order if layer.name == output)
    order.remove(out)
    order.append(out)
    return order


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f", did you mean {close[0]!r}?" if close else ""
