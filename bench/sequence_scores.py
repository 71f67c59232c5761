"""The figures docs/results.md records for a trained sequence model, computed from its run directory.

    python bench/sequence_scores.py RUN_DIR [RUN_DIR ...]

For a model trained on ``text``: the mean loss over every test token (nats) and bits per character,
bpc = loss / ln 2. For a synthetic task (``copy``, ``reverse``, ``sort``, ``addition``): answer-token
accuracy (the most likely token equals the target, over the answer positions: targets other than
-100) and exact-match accuracy (every answer token of a sequence right). Both on the run's test
split, rebuilt from the model file's data options, with the saved weights (``layerkit.load(RUN)``:
``predict_proba`` for the loss, ``predict`` for the accuracies).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

IGNORE = -100


def scores(run: Path) -> dict:
    import layerkit
    from layerkit.modelfile.spec import spec_from_dict
    from layerkit.training.runs import prepare_data

    model = layerkit.load(run)
    raw = json.loads((run / "model.json").read_text())
    spec = spec_from_dict(raw, source="model.json")
    data = prepare_data(spec, model.net)
    x, y = data.x_test, data.y_test
    counted = y != IGNORE
    result: dict = {"run": str(run), "dataset": spec.training["dataset"], "test_sequences": len(x),
                    "counted_tokens": int(counted.sum())}
    z = np.concatenate([model.predict_proba(x[i:i + 256]) for i in range(0, len(x), 256)]).astype(np.float64)
    picked = np.take_along_axis(z, np.where(counted, y, 0)[..., None], axis=-1)[..., 0]
    loss = float(-np.log(np.maximum(picked[counted], 1e-300)).mean())
    result["test_loss"] = loss
    if spec.training["dataset"] == "text":
        result["bpc"] = loss / math.log(2)
    else:
        right = (model.predict(x) == y) | ~counted
        result["answer_token_accuracy"] = float(right[counted].mean())
        result["exact_match_accuracy"] = float(right.all(axis=1).mean())
    return result


def main() -> int:
    for arg in sys.argv[1:] or ["--help"]:
        if arg in ("-h", "--help"):
            print(__doc__)
            return 0
        print(json.dumps(scores(Path(arg))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
