"""Write the Kaggle digit-recognizer files (train.csv, test.csv) from the real MNIST IDX files.

    python tools/make_kaggle_csv.py OUT_DIR [--source ../shared/data/mnist] [--seed 0]

The competition's data are MNIST digits in two CSV files: train.csv, 42,000 rows of
``label,pixel0,...,pixel783``, and test.csv, 28,000 rows of ``pixel0,...,pixel783`` without
labels. This tool builds files of exactly that format and size from the 70,000 MNIST images
(training and test sets together, shuffled with --seed), so the lab nets that read the Kaggle
CSV (the ``kaggle_digits`` dataset) can be trained and scored without the competition download.
It also writes test_labels.csv (``ImageId,Label``, the layout of a Kaggle submission), the
answers for test.csv, which Kaggle keeps to itself.

``layerkit fit lab_alexnet_kaggle --data-dir OUT_DIR`` trains on the first 90% of train.csv
and tests on its last 10% (4,200 images): the ``kaggle_digits`` loader's rule when test.csv
has no labels. Pixel rows are the IDX images row by row, 0..255, as in the competition.

``--labelled-test`` writes test.csv with the labels in front (``label,pixel0,...``) instead: the
loader then tests on its 28,000 rows, so a trained run can be scored on them with
``layerkit evaluate RUN_DIR --data-dir DIR --allow-other-data`` (the same rows and the same
shuffle for the same --seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from layerkit.data.builtin import IDX_FILES, idx_path
from layerkit.data.idx import read_idx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "mnist"
TRAIN_ROWS, TEST_ROWS = 42_000, 28_000


def load_mnist(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 images (N, 784) uint8 and labels, training set first."""
    arrays = {}
    for key, stem in zip(("x_train", "y_train", "x_test", "y_test"), IDX_FILES, strict=True):
        path = idx_path(source, stem)
        if path is None:
            raise SystemExit(f"{source}: no {stem} (.gz) file; pass --source DIR with the four MNIST IDX files")
        arrays[key] = read_idx(path)
    x = np.concatenate([arrays["x_train"], arrays["x_test"]]).reshape(-1, 784)
    y = np.concatenate([arrays["y_train"], arrays["y_test"]])
    return x.astype(np.uint8), y.astype(np.int64)


def write_csv(path: Path, header: list[str], rows: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.write(",".join(header) + "\n")
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    tmp.replace(path)


def make(source: Path, out: Path, seed: int = 0, train_rows: int = TRAIN_ROWS,
         test_rows: int = TEST_ROWS, labelled_test: bool = False) -> None:
    x, y = load_mnist(source)
    if train_rows + test_rows > len(x):
        raise SystemExit(f"{train_rows} + {test_rows} rows asked for, MNIST has {len(x)} images")
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:train_rows], order[train_rows:train_rows + test_rows]
    out.mkdir(parents=True, exist_ok=True)
    pixels = [f"pixel{i}" for i in range(784)]
    write_csv(out / "train.csv", ["label", *pixels], np.column_stack([y[train], x[train]]))
    if labelled_test:
        write_csv(out / "test.csv", ["label", *pixels], np.column_stack([y[test], x[test]]))
    else:
        write_csv(out / "test.csv", pixels, x[test])
    write_csv(out / "test_labels.csv", ["ImageId", "Label"],
              np.column_stack([np.arange(1, len(test) + 1), y[test]]))
    print(f"wrote {out / 'train.csv'} ({len(train):,} rows), {out / 'test.csv'} ({len(test):,} rows, "
          f"{'labelled' if labelled_test else 'no labels'}) and {out / 'test_labels.csv'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="folder to write the CSV files into")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the four MNIST IDX files")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--train-rows", type=int, default=TRAIN_ROWS, help=f"default {TRAIN_ROWS:,}, as Kaggle's")
    p.add_argument("--test-rows", type=int, default=TEST_ROWS, help=f"default {TEST_ROWS:,}, as Kaggle's")
    p.add_argument("--labelled-test", action="store_true",
                   help="put the labels in test.csv too (not Kaggle's format; for scoring a run on it)")
    args = p.parse_args(argv)
    make(args.source, args.out, args.seed, args.train_rows, args.test_rows, args.labelled_test)


if __name__ == "__main__":
    main()
