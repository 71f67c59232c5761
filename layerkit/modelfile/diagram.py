"""Graph pictures as text: Graphviz DOT and Mermaid, every edge labelled with the
shape it carries. Plain strings, so no graphviz install is needed to produce them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from layerkit.modelfile.shapes import Graph
from layerkit.modelfile.topology import RESERVED_INPUT

FORMATS = ("dot", "mermaid")


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _ids(graph: Graph) -> dict[str, str]:
    # synthetic ids: layer names may contain '.' and '-', which neither format takes bare
    ids = {RESERVED_INPUT: "n0"}
    ids.update({node.name: f"n{i}" for i, node in enumerate(graph.nodes, start=1)})
    return ids


def _edges(graph: Graph) -> Iterator[tuple[str, str, Any]]:
    shapes = {RESERVED_INPUT: graph.input_shape, **{n.name: n.output_shape for n in graph.nodes}}
    for node in graph.nodes:
        for ref in node.inputs:
            yield ref, node.name, shapes[ref]


def _dot_quote(*lines: str) -> str:
    """A DOT string; several lines are joined with DOT's own \\n escape."""
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(escaped) + '"'


def to_dot(graph: Graph) -> str:
    ids = _ids(graph)
    lines = [f"digraph {_dot_quote(graph.spec.name)} {{",
             "  rankdir=TB;",
             '  node [shape=box, style=rounded, fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];',
             f"  n0 [label={_dot_quote('input ' + _shape(graph.input_shape))}, shape=oval];"]
    for node in graph.nodes:
        lines.append(f"  {ids[node.name]} [label={_dot_quote(node.name, node.spec.type)}];")
    for src, dst, shape in _edges(graph):
        lines.append(f"  {ids[src]} -> {ids[dst]} [label={_dot_quote(_shape(shape))}];")
    out = graph.output
    lines.append(f"  out [label={_dot_quote('output ' + _shape(out.output_shape))}, shape=oval];")
    lines.append(f"  {ids[out.name]} -> out [label={_dot_quote(_shape(out.output_shape))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    # Mermaid labels are HTML-ish: quotes end the label, so use the entity
    return text.replace('"', "#quot;")


def to_mermaid(graph: Graph) -> str:
    ids = _ids(graph)
    lines = ["flowchart TD",
             f'  n0(["input {_shape(graph.input_shape)}"])']
    for node in graph.nodes:
        lines.append(f'  {ids[node.name]}["{_mermaid_text(node.name)}<br/>{node.spec.type}"]')
    for src, dst, shape in _edges(graph):
        lines.append(f'  {ids[src]} -->|"{_shape(shape)}"| {ids[dst]}')
    out = graph.output
    lines.append(f'  out(["output {_shape(out.output_shape)}"])')
    lines.append(f'  {ids[out.name]} -->|"{_shape(out.output_shape)}"| out')
    return "\n".join(lines) + "\n"


def export(graph: Graph, fmt: str) -> str:
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "mermaid":
        return to_mermaid(graph)
    raise ValueError(f"unknown graph format {fmt!r} (choose from {', '.join(FORMATS)})")
