"""Build layerkit/data/embedded/mnist_sample.npz, the MNIST sample the package ships.

    python tools/make_embedded_sample.py [--source ../shared/data/mnist] [--train-per-class 500]

Takes the first N images of each digit (in file order) from the real training
and test IDX files, so the sample is class-balanced and the same on every run.
Stored as uint8 with np.savez_compressed (no pickles).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from layerkit.data.builtin import IDX_FILES, idx_path
from layerkit.data.idx import read_idx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_OUT = ROOT / "layerkit" / "data" / "embedded" / "mnist_sample.npz"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    short = [c for c, p in enumerate(picks) if len(p) < per_class]
    if short:
        raise SystemExit(f"classes {short} have fewer than {per_class} samples")
    return np.sort(np.concatenate(picks))  # keep file order: classes stay interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()

    paths = [idx_path(args.source, stem) for stem in IDX_FILES]
    if not all(paths):
        raise SystemExit(f"{args.source}: the four MNIST IDX files are not all there")
    x_train, y_train = read_idx(paths[0], 3), read_idx(paths[1], 1)
    x_test, y_test = read_idx(paths[2], 3), read_idx(paths[3], 1)
    train = first_per_class(y_train, args.train_per_class)
    test = first_per_class(y_test, args.test_per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x_train=x_train[train], y_train=y_train[train],
                        x_test=x_test[test], y_test=y_test[test])
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(train)} training + {len(test)} test images, "
          f"{args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")


if __name__ == "__main__":
    main()
