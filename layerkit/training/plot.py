"""PNG plots of a run directory (needs the optional ``plot`` extra: matplotlib).

- ``curves.png``: loss and accuracy per epoch, training vs validation vs test
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


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s"), ("test", "-^")):
            key = f"{split}_{metric}"
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key, np.nan) for r in history], style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title(f"{title} loss".strip())
    axes[1].set_title(f"{title} accuracy".strip())
    fig.tight_layout()
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
    written = [plot_curves(history, out / "curves.png", spec.name)]
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
