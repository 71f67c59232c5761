"""Training speed of layerkit against PyTorch CPU and a plain float32 matmul, with the issue's targets.

    python bench/speed.py [--threads 2] [--quick] [--data-dir DIR]

Every measurement runs in its own child process (one per framework x net),
with OMP/OPENBLAS/MKL_NUM_THREADS set to ``--threads`` (and
``torch.set_num_threads``) and LAYERKIT_NUM_THREADS to ``--threads`` unless it is
already set, so neither framework inherits the other's thread
pools, allocator state or warm caches. Each child trains one warm-up epoch and
then ``--repeats`` timed epochs over the same images; the figure is the median.

layerkit trains through ``layerkit.training.trainer.Trainer.fit``, the loop ``layerkit
fit`` uses, with the model file's own optimizer and schedule. A callback
stamps the first batch's start and the last batch's end, so the per-epoch
test evaluation and checkpointing the trainer does after the last batch are
outside the timed region; on the PyTorch side (``torch_reference.train_epoch``)
only the training loop is timed as well.

GFLOP/s convention: one training step costs 3 x the forward FLOPs
(``Graph.flops``: a multiply-add counts 2), i.e. backward = 2 x forward.

Needs PyTorch for the reference rows (``pip install -e .[bench]``); without it
those rows say "n/a" and the ratio targets cannot pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"

# name: (model file, batch size, images per epoch (full, quick))
NETS = {
    "lenet_style": (HERE / "nets" / "lenet_style.json", 64, (2000, 512)),
    "mlp_bench": (HERE / "nets" / "mlp_bench.json", 64, (10000, 2048)),
    "alexnet_mnist": (REPO / "models" / "alexnet_mnist.json", 128, (1024, 256)),
}
MATMUL_N = 2048
ONE_GB = 1 << 30


# -- children ------------------------------------------------------------------------------------

def _data_dir(arg: str | None) -> str | None:
    """The MNIST directory when it holds the files, else None (the embedded sample)."""
    path = Path(arg) if arg else DEFAULT_DATA
    return str(path) if (path / "train-images-idx3-ubyte.gz").exists() or \
        (path / "train-images-idx3-ubyte").exists() else None


def _load_spec_and_data(model_file: Path, images: int, batch: int, epochs: int, data_dir: str | None):
    from layerkit.modelfile.build import build_model
    from layerkit.training.runs import apply_overrides, prepare_data
    from layerkit.modelfile.spec import read_model_file, spec_from_dict

    raw, source = read_model_file(model_file)
    raw = apply_overrides(raw, {"epochs": epochs, "batch_size": batch, "data.train_limit": images,
                                "data.test_limit": 256})
    spec = spec_from_dict(raw, source=Path(source).name)
    model = build_model(spec)
    return spec, model, prepare_data(spec, model, data_dir)


def child_layerkit(net: str, images: int, repeats: int, data_dir: str | None) -> dict:
    from layerkit.training.trainer import Callback, Trainer, build_loss

    model_file, batch, _ = NETS[net]
    spec, model, data = _load_spec_and_data(model_file, images, batch, repeats + 1, data_dir)

    class StepTimer(Callback):
        """Wall time from the first batch's start to the last batch's end of every epoch."""

        def __init__(self):
            self.seconds, self.started = [], None

        def on_epoch_begin(self, epoch, steps, start_step):
            self.steps, self.started = steps, time.perf_counter()

        def on_batch_end(self, epoch, step, loss, accuracy, samples):
            if step + 1 == self.steps:
                self.seconds.append(time.perf_counter() - self.started)

    timer = StepTimer()
    Trainer(model, build_loss(spec), data, spec.training, callbacks=[timer]).fit()
    return {"seconds": timer.seconds[1:], "images": len(data.x_train), "flops": model.graph.flops,
            "source": data.source}


def child_torch(net: str, images: int, repeats: int, threads: int, data_dir: str | None) -> dict:
    sys.path.insert(0, str(HERE))
    from torch_reference import train_epoch

    model_file, batch, _ = NETS[net]
    _, _, data = _load_spec_and_data(model_file, images, batch, 1, data_dir)
    x, y = data.x_train, data.y_train
    train_epoch(model_file, x, y, batch, threads)  # warm-up
    return {"seconds": [train_epoch(model_file, x, y, batch, threads) for _ in range(repeats)],
            "images": len(x)}


def child_matmul(repeats: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_N, MATMUL_N)).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    for _ in range(3):
        np.matmul(a, b, out=out)
    seconds = []
    for _ in range(max(repeats, 5) * 2):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        seconds.append(time.perf_counter() - start)
    return {"gflops": 2 * MATMUL_N ** 3 / statistics.median(seconds) / 1e9}


def _tree_rss_kib(pid: int) -> int:
    """Resident KiB of ``pid`` and all its descendants (the sample-parallel workers), 0 once gone."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as status:
                total += next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as children:
                    todo += [int(c) for c in children.read().split()]
        except (OSError, ValueError):
            pass
    return total


def child_rss(command: list[str]) -> dict:
    """Run ``command`` as this process's only child; report its peak RSS.

    Two figures: RUSAGE_CHILDREN's (the largest single process) and the peak of the
    summed RSS of the process and its workers, sampled every 20 ms (pages the workers
    share with the parent count twice, so this errs high). The larger one is reported.
    """
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nothing can block on a full pipe
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.02)
        err.seek(0)
        stderr = err.read()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rc": proc.returncode, "maxrss_kib": max(largest, peak), "largest_process_kib": largest,
            "tree_peak_kib": peak, "stderr": stderr[-2000:]}


# -- parent ------------------------------------------------------------------------------------------

def layerkit_threads(threads: int) -> str:
    """The pool size the layerkit children get: the user's LAYERKIT_NUM_THREADS, else ``--threads``."""
    return os.environ.get("LAYERKIT_NUM_THREADS", "").strip() or str(threads)


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # set explicitly so the children do not fall back on the core count when --threads is lower
    env["LAYERKIT_NUM_THREADS"] = layerkit_threads(threads)
    return env


def run_child(args: list[str], threads: int) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=child_env(threads),
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def rate(result: dict) -> float | None:
    if "seconds" not in result or not result["seconds"]:
        return None
    return result["images"] / statistics.median(result["seconds"])


def machine_line(threads: int) -> str:
    import numpy as np

    blas = ""
    try:
        config = np.show_config(mode="dicts")
        info = config["Build Dependencies"]["blas"]
        blas = f"{info.get('name', '')} {info.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode
        pass
    torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip() or "not installed"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, numpy {np.__version__} ({blas}), torch {torch_version}; "
            f"threads {threads}, LAYERKIT_NUM_THREADS={layerkit_threads(threads)}; "
            f"load average before the run {load}")


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description="layerkit training speed against PyTorch CPU and the targets.")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP / torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats: a smoke test")
    parser.add_argument("--repeats", type=int, help="timed epochs per measurement (default 5, quick 2)")
    parser.add_argument("--data-dir", help=f"MNIST IDX files (default {DEFAULT_DATA}; embedded sample if absent)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    data_dir = _data_dir(args.data_dir)

    if args.child:
        if args.child == "layerkit":
            result = child_layerkit(args.net, args.images, repeats, data_dir)
        elif args.child == "torch":
            result = child_torch(args.net, args.images, repeats, args.threads, data_dir)
        elif args.child == "matmul":
            result = child_matmul(repeats)
        else:
            result = child_rss(args.command)
        print(json.dumps(result))
        return 0

    command = "python bench/speed.py " + " ".join(sys.argv[1:])
    print(f"`{command.strip()}`\n\n{machine_line(args.threads)}\n", flush=True)
    have_torch = torch_available()
    common = ["--threads", str(args.threads), "--repeats", str(repeats)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]

    matmul = run_child(["--child", "matmul", *common], args.threads)
    rows, results = [], {}
    for net, (model_file, batch, sizes) in NETS.items():
        images = sizes[1] if args.quick else sizes[0]
        lk = run_child(["--child", "layerkit", "--net", net, "--images", str(images), *common], args.threads)
        th = run_child(["--child", "torch", "--net", net, "--images", str(images), *common], args.threads) \
            if have_torch else {"error": "torch not installed"}
        lk_rate, th_rate = rate(lk), rate(th)
        gflops = lk_rate * 3 * lk["flops"] / 1e9 if lk_rate else None
        results[net] = (lk_rate, th_rate, gflops)
        rows.append(f"| {net} | {batch} | {images:,} | {fmt(lk_rate, ',.0f')} | {fmt(th_rate, ',.0f')} | "
                    f"{fmt(lk_rate / th_rate if lk_rate and th_rate else None, '.2f')} | {fmt(gflops, '.1f')} |")
        for side, res in (("layerkit", lk), ("torch", th)):
            if "error" in res:
                print(f"note: {net} {side}: {res['error']}", file=sys.stderr)

    started = time.perf_counter()
    grads = subprocess.run([sys.executable, "-m", "layerkit", "check-grads", "models/alexnet_mnist.json"],
                           cwd=REPO, env=child_env(args.threads), capture_output=True, text=True)
    grads_s = time.perf_counter() - started if grads.returncode == 0 else None

    with tempfile.TemporaryDirectory() as tmp:
        fit = [sys.executable, "-m", "layerkit", "fit", "models/lenet5.json", "--epochs", "1", "--quiet",
               "--out", str(Path(tmp) / "run")] + (["--data-dir", data_dir] if data_dir else [])
        rss = run_child(["--child", "rss", "--", *fit], args.threads)
    rss_bytes = rss["maxrss_kib"] * 1024 if rss.get("rc") == 0 else None

    def ratio(net: str, which: int) -> float | None:
        lk_rate, th_rate, _ = results[net]
        return lk_rate / th_rate if lk_rate and th_rate else None

    mm = matmul.get("gflops")
    alex_g = results["alexnet_mnist"][2]
    figures = [
        ("LeNet-style train img/s / PyTorch CPU", ratio("lenet_style", 0), ">= 0.5", lambda v: v >= 0.5, ".2f"),
        ("MLP train img/s / PyTorch CPU", ratio("mlp_bench", 0), ">= 0.8", lambda v: v >= 0.8, ".2f"),
        (f"AlexNet-style GFLOP/s ({fmt(alex_g, '.1f')}) / float32 matmul GFLOP/s ({fmt(mm, '.1f')})",
         alex_g / mm if alex_g and mm else None, ">= 0.4", lambda v: v >= 0.4, ".2f"),
        ("`check-grads models/alexnet_mnist.json` wall time (s)", grads_s, "<= 10 s", lambda v: v <= 10, ".1f"),
        ("full-MNIST LeNet epoch peak RSS, all processes (MiB)" + ("" if data_dir else " (embedded sample: no MNIST found)"),
         None if rss_bytes is None else rss_bytes / 2 ** 20, "<= 1 GB", lambda v: v * 2 ** 20 <= ONE_GB, ",.0f"),
    ]
    print("| figure | measured | target | result |\n|---|---:|---|---|")
    failed = 0
    for name, value, target, ok, spec in figures:
        passed = value is not None and ok(value)
        failed += not passed
        print(f"| {name} | {fmt(value, spec)} | {target} | {'PASS' if passed else 'FAIL'} |")
    print("\n| net | batch | images/epoch | layerkit img/s | PyTorch img/s | ratio | layerkit GFLOP/s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\nmedian of {repeats} timed epochs after one warm-up epoch, each framework x net in its own process; "
          f"training FLOPs = 3 x Graph.flops; matmul: {MATMUL_N}x{MATMUL_N} float32 numpy, same threads.")
    if grads.returncode != 0:
        print(f"note: check-grads exited with {grads.returncode}: {grads.stderr.strip()[-300:]}", file=sys.stderr)
    if rss.get("rc") != 0:
        print(f"note: the LeNet fit failed: {rss.get('stderr', rss.get('error', ''))[-300:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
