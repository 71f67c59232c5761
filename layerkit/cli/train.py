"""layerkit CLI commands that train and look at results: fit, evaluate, plot, data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from layerkit.errors import LayerkitError, everywhere
from layerkit.training.progress import ProgressDisplay, pct as _pct

if TYPE_CHECKING:
    from rich.progress import TaskID
from layerkit.training.runs import Terms
from layerkit.training.trainer import TrainingInterrupted
from layerkit.cli import app
from layerkit.cli.overrides import apply_overrides, parse_sets

data_app = typer.Typer(help="Datasets: list the installed loaders, download MNIST / Fashion-MNIST.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

DATA_DIR = typer.Option(None, "--data-dir", metavar="DIR",
                        help="Directory (or file) holding the dataset; default: $LAYERKIT_DATA_DIR, "
                             "the cache, then the embedded MNIST sample.")
DATASET = typer.Option(None, "--dataset", help="Registered dataset name (overrides training.dataset).")
ALLOW_OTHER_DATA = typer.Option(False, "--allow-other-data",
                                help="With a run directory: use the data given even where it differs from "
                                     "the data the run was trained on (its data.json).")

#: how a run's messages name what the user can change: this command's flags
FIT_TERMS = Terms(out="--out", resume="--resume {path}", resume_command="layerkit fit --resume {path}",
                  data_dir="--data-dir", dataset="--dataset", set_dataset="set training.dataset or pass --dataset",
                  allow_other_data="--allow-other-data",
                  model_or_resume="give a model file to train, or --resume RUN_DIR")


def _console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr, highlight=False, width=None if sys.stdout.isatty() else 160)


def _parse_classes(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of class ids",
                                 param_hint="--classes") from None


@app.command()
def fit(model: Optional[Path] = typer.Argument(None, metavar="MODEL", help="Model file (not needed with --resume)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1,
                                             help="Passes over the training data (training.epochs; default 10)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="Samples per training step (training.batch_size; "
                                                      "default 64)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (training.optimizer.lr)."),
        seed: Optional[int] = typer.Option(None, "--seed", min=0,
                                           help="Seed for initial weights, shuffling, dropout and augmentation "
                                                "(training.seed; default 0)."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer",
                                                help="Optimizer type; its own defaults replace the file's parameters."),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", min=0,
                                                     help="L2 penalty on weights, not biases (training.weight_decay; "
                                                          "default 0)."),
        schedule: Optional[str] = typer.Option(None, "--schedule", help="constant, step, exponential or cosine."),
        dataset: Optional[str] = DATASET,
        data_dir: Optional[Path] = DATA_DIR,
        train_limit: Optional[int] = typer.Option(None, "--train-limit", min=1, metavar="N",
                                                  help="Train on the first N training samples only "
                                                       "(training.data.train_limit)."),
        test_limit: Optional[int] = typer.Option(None, "--test-limit", min=1, metavar="N",
                                                 help="Test on the first N test samples only "
                                                      "(training.data.test_limit)."),
        validation_split: Optional[float] = typer.Option(None, "--validation-split", metavar="FRACTION",
                                                         help="Hold out this fraction of the training data "
                                                              "(0 to below 1) to validate on after each epoch "
                                                              "(training.data.validation_split)."),
        classes: Optional[str] = typer.Option(None, "--classes", metavar="0,1,2", help="Train on these labels only."),
        normalize: Optional[str] = typer.Option(None, "--normalize", help="unit, standardize or none."),
        augment_shift: Optional[int] = typer.Option(None, "--augment-shift", metavar="N",
                                                    help="Move training images by up to N random pixels "
                                                         "(training.data.augment.shift)."),
        virtual_shares: Optional[int] = typer.Option(None, "--virtual-shares", min=1, metavar="S",
                                                     help="Compute every batch as S fixed shares, so that one "
                                                          "process, forked processes and MPI ranks (a count "
                                                          "dividing S) train the same model bit for bit "
                                                          "(training.virtual_shares)."),
        set_: List[str] = typer.Option([], "--set", metavar="KEY=JSON",
                                       help="Any training setting, e.g. --set early_stopping.patience=2 "
                                            "(repeatable)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/NAME-TIMESTAMP)."),
        resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                              help="Continue the run in RUN_DIR from its last checkpoint, "
                                                   "on the data recorded in it."),
        init_from: Optional[Path] = typer.Option(None, "--init-from", metavar="RUN_DIR",
                                                 help="Start from the weights of RUN_DIR (a run, a saved model "
                                                      "or a weights .npz): every tensor whose layer name and "
                                                      "shape match (training.init_from)."),
        allow_other_data: bool = ALLOW_OTHER_DATA,
        check_grads: bool = typer.Option(False, "--check-grads",
                                         help="Gradient-check the first training batch first; stop if it fails."),
        callback: List[str] = typer.Option([], "--callback", metavar="NAME",
                                           help="Add a training callback (logger) registered by a plugin, e.g. "
                                                "tensorboard (repeatable; training.callbacks in the model file; "
                                                "'layerkit plugins' lists them)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the per-epoch summary lines."),
        as_json: bool = typer.Option(False, "--json",
                                     help="End with one JSON record on stdout (run_dir, epochs, history, "
                                          "test metrics); progress goes to stderr."),
        ) -> None:
    """Train a model file; writes a run directory with checkpoints, history, weights and metrics.

    Uses the cores it may: convnets train sample-parallel, each batch split over LAYERKIT_PROCESSES processes (LAYERKIT_SAMPLE_PARALLEL=0: one process), other nets on LAYERKIT_NUM_THREADS threads. Under mpiexec -n K, data-parallel over K MPI ranks (docs/distributed.md).
    """  # noqa: E501 (one line: the help text reflows it)
    from layerkit.modelfile.spec import read_model_file
    from layerkit.training.runs import RunRequest, train

    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": optimizer,
                 "weight_decay": weight_decay, "schedule": schedule, "dataset": dataset,
                 "data.train_limit": train_limit, "data.test_limit": test_limit,
                 "data.validation_split": validation_split, "data.classes": _parse_classes(classes),
                 "data.normalize": normalize, "data.augment.shift": augment_shift,
                 "callbacks": list(callback) or None, "init_from": None if init_from is None else str(init_from),
                 "virtual_shares": virtual_shares, **parse_sets(set_)}
    given = sorted(k for k, v in overrides.items() if v is not None)
    if resume is not None and given:
        raise LayerkitError(f"--resume continues a run exactly as it was started; it cannot be combined with "
                            f"{', '.join('--' + g.split('.')[-1].replace('_', '-') for g in given)}")
    if resume is None and model is None:
        raise everywhere(LayerkitError(FIT_TERMS.model_or_resume))
    from layerkit.parallel.mpi import world

    console = _console(stderr=as_json)  # with --json, stdout holds the JSON record alone

    def log(msg: str) -> None:
        _console(stderr=True).print(msg, markup=False, soft_wrap=True)

    lead = world().rank == 0  # under mpiexec, rank 0 alone prints; the others only their own errors
    raw, source = (None, None) if model is None else read_model_file(model)
    request = RunRequest(model=None if raw is None else apply_overrides(raw, overrides), source=source, out=out,
                         resume=resume, data_dir=data_dir, allow_other_data=allow_other_data,
                         check_grads=check_grads, callbacks=[ProgressDisplay(console, quiet)] if lead else [],
                         log=log if lead else (lambda _msg: None), console=console if lead else None,
                         terms=FIT_TERMS)
    try:
        run, result = train(request)
    except TrainingInterrupted as stop:
        code = typer.Exit(130)
        if getattr(stop, "everywhere", False):  # every MPI rank stopped after the same batch
            everywhere(code)
        raise code from None
    if not lead:
        return
    if as_json:
        record = {"run_dir": str(run.path), "epochs": result.epochs_run,
                  "final": result.history[-1] if result.history else None, **result.metrics()}
        record.pop("epochs_run")
        typer.echo(json.dumps(record, indent=2))
        return
    kept = f" (weights of epoch {result.best_epoch}, best {result.monitor})" if result.monitor else ""
    # a model reading token ids is scored per position that counts: its accuracy is a token accuracy
    tokens = (run.model_dict().get("input") or {}).get("dtype") == "int64"
    console.print(f"test {'token ' if tokens else ''}accuracy {_pct(result.test_accuracy)}, "
                  f"loss {result.test_loss:.4f}{kept}; "
                  f"run saved in {run.path}", markup=False)


def _confusion(y_true, y_pred, k: int):
    import numpy as np
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


@app.command()
def evaluate(model: Path = typer.Argument(..., metavar="RUN_DIR|MODEL",
                                          help="A run directory from 'layerkit fit', or a model file with "
                                               "--weights."),
             weights: Optional[Path] = typer.Option(None, "--weights",
                                                    help="weights.npz (or a run's checkpoint.npz); default: "
                                                         "RUN_DIR/weights.npz."),
             data_dir: Optional[Path] = DATA_DIR, dataset: Optional[str] = DATASET,
             allow_other_data: bool = ALLOW_OTHER_DATA,
             as_json: bool = typer.Option(False, "--json",
                                          help="Print one JSON object: model, weights, samples, loss, accuracy, "
                                               "classes, per_class_accuracy, confusion_matrix (a sequence "
                                               "model: tokens, bits_per_token and its token accuracy instead "
                                               "of classes)."),
             untrained: bool = typer.Option(False, "--untrained",
                                            help="Score the model's random initial weights (for testing the "
                                                 "pipeline): a model file without --weights.")) -> None:
    """Accuracy, per-class accuracy and the confusion matrix on the test split (a sequence model:
    its token accuracy).

    Given a run directory (or weights inside one), the test split is read from the data the run
    was trained on and prepared with its saved preprocessing.
    """
    import numpy as np

    from layerkit.api.model import not_a_run
    from layerkit.modelfile import zoo
    from layerkit.modelfile.build import build_model
    from layerkit.nn.network import load_npz
    from layerkit.training.runs import CHECKPOINT, MODEL_FILE, WEIGHTS, RunDir, load_run_data, prepare_data
    from layerkit.modelfile.spec import read_model_file, spec_from_dict
    from layerkit.training.trainer import build_loss, evaluate as run_eval

    def UserError(message: str) -> BaseException:  # noqa: N802 - reads like the exception it makes
        # every MPI rank sees the same files, so every rank stops here alike
        return everywhere(LayerkitError(message))

    run = None
    if model.is_dir():
        if not (model / MODEL_FILE).is_file():
            raise UserError(not_a_run(model, "layerkit evaluate"))
        run = RunDir(model)
        model = run / MODEL_FILE
        if weights is None:  # a run still in progress has only its last checkpoint
            weights = run / WEIGHTS if (run / WEIGHTS).is_file() or not (run / CHECKPOINT).is_file() \
                else run / CHECKPOINT
    elif not model.exists() and zoo.shipped(model) is None:
        raise UserError(f"{model}: no such file or directory; give a run directory written by 'layerkit fit', "
                        f"or a model file with --weights RUN_DIR/weights.npz")
    elif weights is None and not untrained:
        what = "a model file" if model.exists() else "a shipped model"
        raise UserError(f"{model}: {what} has no trained weights; give a run directory, add --weights "
                        f"RUN_DIR/weights.npz, or train it first (layerkit fit {model}); --untrained scores its "
                        f"random initial weights")
    elif weights is not None and (weights.parent / MODEL_FILE).is_file() \
            and (weights.parent / "data.json").is_file():
        run = RunDir(weights.parent)  # weights of a run: its recorded data, not whatever is found now
    raw, source = read_model_file(model)
    spec = spec_from_dict(apply_overrides(raw, {"dataset": dataset}), source=Path(source).name)
    net = build_model(spec)
    if weights is not None:
        arrays = load_npz(weights)
        if "meta" in arrays:  # a checkpoint: its model tensors are under model/
            arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
        net.set_weights(arrays, source=str(weights))
    shown_weights = None if weights is None else str(weights)
    notes: list[str] = [] if weights is not None else ["note: --untrained: scoring the random initial weights"]
    if run is not None:
        from layerkit.training.runs import refuse_arrays_run  # a model trained on arrays: no data to guess
        refuse_arrays_run(run, explicit=dataset is not None or data_dir is not None, terms=FIT_TERMS)
        data = load_run_data(run, spec, net, data_dir=data_dir, allow_other_data=allow_other_data,
                             log=notes.append, terms=FIT_TERMS, evaluating=True, dataset_given=dataset is not None)
    else:
        data = prepare_data(spec, net, data_dir, terms=FIT_TERMS)
    if data.notice:
        notes.append(f"note: {data.notice}")
    if not as_json:
        for note in notes:
            _console(stderr=True).print(note, markup=False)
    loss_fn = build_loss(spec)
    loss_value, accuracy, preds = run_eval(net, loss_fn, data.x_test, data.y_test)
    if np.ndim(data.y_test) != 1 and np.issubdtype(np.asarray(data.y_test).dtype, np.integer):
        # a sequence model: one class per position, scored per token that counts (no confusion matrix)
        tokens = loss_fn.counted(data.y_test)
        # the loss is in nats per counted token; in bits it is a character model's bpc (docs/results.md)
        bits = loss_value / float(np.log(2))
        if as_json:
            typer.echo(json.dumps({"model": spec.name, "weights": shown_weights, "data_source": data.source,
                                   "data_location": data.location, "samples": int(len(data.y_test)),
                                   "tokens": int(tokens), "loss": loss_value, "bits_per_token": bits,
                                   "accuracy": accuracy, "accuracy_of": "tokens"}, indent=2))
        else:
            _console().print(f"{spec.name}: test token accuracy {_pct(accuracy)} "
                             f"({int(round(accuracy * tokens))}/{tokens} tokens in {len(data.y_test)} sequences), "
                             f"loss {loss_value:.4f} per token ({bits:.2f} bits)", markup=False)
        return
    if np.ndim(data.y_test) != 1:  # a reconstruction: no classes to tabulate
        if as_json:
            typer.echo(json.dumps({"model": spec.name, "weights": shown_weights, "data_source": data.source,
                                   "data_location": data.location, "samples": int(len(data.y_test)),
                                   "loss": loss_value, "pixel_accuracy": accuracy}, indent=2))
        else:
            _console().print(f"{spec.name}: test loss {loss_value:.4f}, pixel accuracy {_pct(accuracy)} "
                             f"({len(data.y_test)} images)", markup=False)
        return
    k = max(data.num_classes, int(preds.max(initial=0)) + 1)
    matrix = _confusion(data.y_test, preds, k)
    totals = matrix.sum(axis=1)
    per_class = [float(matrix[i, i] / totals[i]) if totals[i] else None for i in range(k)]
    names = (data.class_names + [str(i) for i in range(len(data.class_names), k)])[:k]
    if as_json:
        typer.echo(json.dumps({"model": spec.name, "weights": shown_weights, "data_source": data.source,
                               "data_location": data.location,
                               "samples": int(len(data.y_test)), "loss": loss_value, "accuracy": accuracy,
                               "classes": names, "per_class_accuracy": per_class,
                               "confusion_matrix": matrix.tolist()}, indent=2))
        return
    from rich.table import Table

    console = _console()
    console.print(f"{spec.name}: test accuracy {_pct(accuracy)} ({int(np.trace(matrix))}/{len(data.y_test)}), "
                  f"loss {loss_value:.4f}", markup=False)
    table = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("accuracy", justify="right")
    for i, name in enumerate(names):
        table.add_row(name, *[str(v) for v in matrix[i]], "-" if per_class[i] is None else _pct(per_class[i]))
    console.print(table)


@app.command()
def plot(run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A run directory from 'layerkit fit'."),
         out: Optional[Path] = typer.Option(None, "--out", help="Folder for the PNGs (default: RUN_DIR).")) -> None:
    """PNG plots of a run: loss and accuracy curves, and the first layer's weights as images."""
    from layerkit.training.plot import plot_run
    from layerkit.training.runs import require_epochs

    require_epochs(run_dir)  # a model saved before any fit: say so rather than draw empty axes
    for path in plot_run(run_dir, out):
        typer.echo(f"wrote {path}")


@data_app.command("list")
def data_list() -> None:
    """The registered datasets and the files each one reads."""
    from layerkit.plugins.manager import get_registry

    registry = get_registry()
    for name in registry.names("dataset"):
        cls = registry.get("dataset", name)
        files = ", ".join(getattr(cls, "files", ()) or ())
        typer.echo(f"{name:15} {cls.description}" + (f"\n{'':15} files: {files}" if files else ""))


@data_app.command("download")
def data_download(name: str = typer.Argument(..., metavar="mnist|fashion_mnist",
                                             help="The dataset to download ('layerkit data list')."),
                  dest: Optional[Path] = typer.Option(None, "--dir", help="Target folder (default: "
                                                      "$LAYERKIT_DATA_DIR/NAME or ~/.cache/layerkit/NAME)."),
                  url_base: Optional[str] = typer.Option(None, "--url-base",
                                                         help="Mirror to download from (http(s):// or file://)."),
                  timeout: float = typer.Option(600.0, "--timeout", min=0.001, metavar="SECONDS",
                                                help="Give up when the whole download takes longer."),
                  idle_timeout: float = typer.Option(30.0, "--idle-timeout", min=0.001, metavar="SECONDS",
                                                     help="Give up when the server sends nothing for this long, "
                                                          "or under 1 KiB in such a span.")) -> None:
    """Download the four IDX files (through pooch, with retries) and verify their SHA-256 checksums."""
    from layerkit.data.download import download

    console = _console(stderr=True)
    bar = _DownloadBar(console) if console.is_terminal else None
    try:
        where = download(name, dest, url_base, timeout=timeout, report=typer.echo, progress=bar,
                         idle_timeout=idle_timeout)
    finally:
        if bar is not None:
            bar.stop()
    typer.echo(f"{name} is in {where}; it is found automatically there"
               if dest is None else f"{name} is in {where}; train with --data-dir {where}")


class _DownloadBar:
    """A rich progress bar per downloaded file (on a terminal only)."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console, transient=True)
        self.tasks: dict[str, TaskID] = {}
        self.progress.start()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done)

    def stop(self) -> None:
        self.progress.stop()
