"""PNG plots of a run directory (needs the optional ``plot`` extra: matplotlib).

- ``curves.png``: loss and accuracy (in percent) per epoch, training vs validation vs test,
  and the training loss of every batch (``batches.json``; runs made before it was recorded
  show the epochs alone)
- ``weights.png``: the first layer with weights, as images: convolution filters,
  or for a dense layer reading the raw image, one image per output unit (the
  classic per-class templates of softmax regression)
- ``reconstructions.png``: for a model trained with ``training.data.target: "input"``
  (an autoencoder), the first test images above their reconstructions
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from layerkit.errors import LayerkitError, install_hint

MAX_IMAGES = 64
RECONSTRUCTIONS = 10


class PlotUnavailable(LayerkitError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(f"plotting needs matplotlib: {install_hint('plot')}") from None
    matplotlib.use("Agg")  # files only; never try to open a window
    import matplotlib.pyplot as plt
    return plt


#: how each split's per-epoch values are drawn
SPLITS = (("train", "o"), ("val", "s"), ("test", "^"))
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def _finite(values) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def curves_figure(history: list[dict], title: str = "", batches: dict | None = None):
    """The loss and accuracy curves as a matplotlib Figure: per epoch (markers, so that one epoch
    is a point), the training loss of every batch where ``batches`` (``batches.json``) has it,
    epochs on whole-number ticks, the loss axis from 0, accuracy in percent up to 100."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    losses: list[float] = []
    accuracies: list[float] = []
    last_x = float(max(epochs, default=0))
    per_batch = (batches or {}).get("train_loss") or []
    if per_batch:
        steps = int(batches["batches_per_epoch"])  # type: ignore[index]
        x = (np.arange(len(per_batch)) + 1) / steps  # batch i ends at epoch (i + 1) / steps
        y = np.array([np.nan if v is None else v for v in per_batch], dtype=np.float64)
        loss_ax.plot(x, y, "-", color="tab:blue", alpha=0.45, linewidth=0.8, label="train, per batch")
        finite = y[np.isfinite(y)]
        if finite.size:  # the first batches of a run can be far above the rest: do not let them squash it
            losses.append(float(np.percentile(finite, 99)))
        last_x = max(last_x, float(x[-1]))
    for split, marker in SPLITS:
        for ax, metric, scale, bucket in ((loss_ax, "loss", 1.0, losses), (acc_ax, "accuracy", 100.0, accuracies)):
            key = f"{split}_{metric}"
            if not any(key in r for r in history):
                continue
            values = [r.get(key) for r in history]
            y = np.array([np.nan if v is None else float(v) * scale for v in values], dtype=np.float64)
            label = SPLIT_NAMES[split] + (", per epoch" if split == "train" and per_batch and metric == "loss" else "")
            ax.plot(epochs, y, "-" + marker, markersize=6, label=label, clip_on=False,
                    color={"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}[split])
            bucket.extend(_finite(y).tolist())
    top = max(losses, default=1.0)
    loss_ax.set_ylim(0.0, top * 1.08 if top > 0 else 1.0)
    low = min(accuracies, default=0.0)
    acc_ax.set_ylim(0.0 if low < 50 else 10.0 * math.floor((low - 2.0) / 10.0), 100.0)
    for ax, label in ((loss_ax, "loss"), (acc_ax, "accuracy (%)")):
        ax.set_xlim(0.0, max(last_x, 1.0) * 1.02)  # room for the last epoch's markers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    loss_ax.set_title(f"{title} loss".strip())
    acc_ax.set_title(f"{title} accuracy".strip())
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], path: Path, title: str = "", batches: dict | None = None) -> Path:
    """Write :func:`curves_figure` to ``path`` (PNG)."""
    plt = _pyplot()
    fig = curves_figure(history, title, batches)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def weight_images(model) -> tuple[str, np.ndarray] | None:
    """(label, images (K, H, W) or (K, H, W, 3)) for the first layer with weights, or None
    when its weights have no image shape."""
    input_shape = tuple(model.graph.input_shape)
    for node in model.nodes:
        params = model.params[node.name]
        w = next((v for name, v in params.items() if v.ndim in (2, 4) and node.param_specs[name].decay), None)
        if w is None:
            continue
        if w.ndim == 4:  # (filters, channels, kh, kw)
            imgs = w[:, :3].transpose(0, 2, 3, 1) if w.shape[1] == 3 else w[:, 0]
            return f"{node.name}: {w.shape[0]} filters {w.shape[2]}x{w.shape[3]}", imgs[:MAX_IMAGES]
        size = int(np.prod(input_shape))
        if w.shape[0] != size:
            return None  # the first dense layer reads features, not pixels
        if len(input_shape) == 1:
            side = math.isqrt(size)
            if side * side != size:
                return None
            image_shape = (1, side, side)
        else:
            image_shape = input_shape if len(input_shape) == 3 else (1, *input_shape)
        imgs = w.T.reshape(-1, *image_shape)[:MAX_IMAGES]
        imgs = imgs.transpose(0, 2, 3, 1) if image_shape[0] == 3 else imgs[:, 0]
        return f"{node.name}: weights of each of {w.shape[1]} units", imgs
        return None
    return None


def plot_weights(model, path: Path, class_names: list[str] | None = None) -> Path | None:
    found = weight_images(model)
    if found is None:
        return None
    label, imgs = found
    plt = _pyplot()
    n = len(imgs)
    cols = min(n, 10 if n <= 20 else 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = imgs[i].astype(np.float64)
        if img.ndim == 3:  # colour: scale each filter into [0, 1]
            img = (img - img.min()) / (np.ptp(img) or 1.0)
            ax.imshow(img)
        else:  # signed weights: a diverging map centred on zero shows excitatory vs inhibitory
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        if class_names and imgs.shape[0] == len(class_names) and n <= 20:
            ax.set_title(class_names[i], fontsize=8)
        else:
            ax.set_title(str(i), fontsize=7)
    fig.suptitle(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: losses whose model output is a logit: the picture of a reconstruction is its sigmoid
LOGIT_LOSSES = ("binary_cross_entropy_with_logits",)


def reconstruction_images(model, loss_type: str, images: np.ndarray) -> np.ndarray:
    """The model's reconstructions of ``images`` (N, C, H, W), as pictures in [0, 1]."""
    out = model.predict(images).reshape(images.shape).astype(np.float64)
    if loss_type in LOGIT_LOSSES:
        out = np.exp(-np.logaddexp(0.0, -out))  # the sigmoid, overflow-free
    return np.clip(out, 0.0, 1.0)


def plot_reconstructions(images: np.ndarray, recon: np.ndarray, path: Path, title: str = "") -> Path:
    """Inputs (top row) above their reconstructions (bottom row), grey scale in [0, 1]."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6), squeeze=False)
    for i in range(n):
        for row, batch in enumerate((images, recon)):
            ax = axes[row, i]
            ax.axis("off")
            img = batch[i]
            img = img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]
            ax.imshow(np.clip(img, 0, 1), cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(f"{title} reconstructions of test images".strip(), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the PNGs for a run directory; returns their paths."""
    from layerkit.modelfile.build import build_model
    from layerkit.training.runs import MODEL_FILE, WEIGHTS, CHECKPOINT, RunDir
    from layerkit.nn.network import load_npz
    from layerkit.modelfile.spec import spec_from_dict

    _pyplot()  # fail early, before reading anything, when matplotlib is missing
    run = RunDir(run_dir)
    if not (run / MODEL_FILE).is_file():
        raise LayerkitError(f"{run.path}: not a run directory (no {MODEL_FILE})")
    out = Path(out) if out else run.path
    out.mkdir(parents=True, exist_ok=True)
    history = run.history()
    spec = spec_from_dict(run.model_dict(), source=str(run / MODEL_FILE))
    written = [plot_curves(history, out / "curves.png", spec.name, run.batches())]
    model = build_model(spec)
    if (run / WEIGHTS).is_file():
        model.load_weights(run / WEIGHTS)
    else:  # an unfinished run: its last checkpoint
        arrays = load_npz(run / CHECKPOINT)
        model.set_weights({k[6:]: v for k, v in arrays.items() if k.startswith("model/")}, str(run / CHECKPOINT))
    names = [str(c) for c in (spec.training.get("data") or {}).get("classes") or []] or None
    path = plot_weights(model, out / "weights.png", names)
    if path is not None:
        written.append(path)
    if (spec.training.get("data") or {}).get("target") == "input" and len(spec.input_shape) == 3:
        from layerkit.training.runs import load_run_data

        data = load_run_data(run, spec, model)
        images = data.x_test[:RECONSTRUCTIONS]
        recon = reconstruction_images(model, spec.loss.get("type", ""), images)
        written.append(plot_reconstructions(images, recon, out / "reconstructions.png", spec.name))
    return written
