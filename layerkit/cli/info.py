"""layerkit CLI command: info (versions, the kernel path and why, numba's cache, threads)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import Any

import typer

from layerkit import __version__
from layerkit.cli import app


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def gather() -> dict[str, Any]:
    """What ``layerkit info --json`` prints; imports no numba."""
    import numpy as np

    from layerkit.kernels.select import ENV, KERNELS, cache_dir, decide
    from layerkit.parallel import blas, threads

    choice = decide()
    return {
        "layerkit": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "kernels": {
            "path": choice.path,
            "why": choice.reason,
            ENV: choice.requested,
            "numba_cache_dir": str(cache_dir()),
            "kernels": [{"name": k.name, "compiled": k.compiled_module is not None and choice.path == "numba",
                         "covers": k.covers, "tolerance": str(k.tolerance), "description": k.description}
                        for k in KERNELS.values()],
        },
        "threads": {"layerkit": threads.num_threads(), "blas": blas.num_threads()},
    }


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object: versions, kernels (path, why, "
                                                              "numba_cache_dir, kernels), threads."),
         check: bool = typer.Option(False, "--check", help="Also run each compiled kernel against its numpy "
                                                           "reference (check kernel_matches_reference; needs numba, "
                                                           "compiles them if the cache is empty). Exit 1 if one "
                                                           "differs."),
         ) -> None:
    """Versions, which kernels run (numpy or compiled with numba) and why, numba's cache, threads."""
    out = gather()
    if check:
        from layerkit.kernels.select import KERNELS
        from layerkit.testing.engine import check_kernel

        # ContractError (exit 1) at the first kernel that differs; the CLI prints its one line
        # whatever the path: the compiled kernels are checked wherever numba is installed
        out["checked"] = {name: check_kernel(k) for name, k in KERNELS.items()}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    k = out["kernels"]
    lines = [f"layerkit {out['layerkit']} (python {out['python']}, numpy {out['numpy']}, "
             f"numba {out['numba'] or 'not installed'})",
             f"kernels: {k['path']} ({k['why']})",
             f"numba cache: {k['numba_cache_dir']}",
             f"threads: {out['threads']['layerkit']} (BLAS {out['threads']['blas']})"]
    for kern in k["kernels"]:
        same = "bit for bit" if kern["tolerance"] == "bit for bit" else f"within {kern['tolerance']}"
        how = f"compiled for {kern['covers']}; matches numpy {same}" if kern["compiled"] else "numpy"
        lines.append(f"  {kern['name']}: {how}")
    tolerances = {kern["name"]: kern["tolerance"] for kern in k["kernels"]}
    for name, count in out.get("checked", {}).items():
        lines.append(f"check {name}: the compiled kernel matches the numpy reference ({tolerances[name]}) on {count} "
                     f"inputs" if count else
                     f"check {name}: nothing compiled to compare (numba is not installed)")
    typer.echo("\n".join(lines))
