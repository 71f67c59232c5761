"""Data-parallel scaling: img/s over 1 and 2 MPI ranks next to the forked path, and a cost model.

    python bench/scaling.py [--images 1024] [--repeats 3] [--skip-speed] [--skip-cost]

Speed (needs the ``mpi`` extra): the LeNet-style and AlexNet-style nets of
``bench/speed.py`` train ``--repeats`` timed epochs (after one warm-up epoch) of
``--images`` images, in a child process per configuration:

- one process, one thread (``LAYERKIT_SAMPLE_PARALLEL=0``, BLAS and pool on one thread);
- the forked path: each batch split over 2 processes of one ``fit``;
- ``mpiexec -n 1`` and ``mpiexec -n 2``, one process and one thread per rank.

Cost model: for every model of the zoo, the bytes one training step all-reduces
(counted by running one step over a counting stand-in for a 2-rank group: the fused
gradient buffer, the loss/accuracy totals and batch norm's whole-batch sums, each with
its number of calls), the CPU time of one single-process, single-threaded step at the
model's batch size, and the efficiency predicted for K hosts from the ring all-reduce cost
``2 (K-1)/K * bytes / bandwidth + 2 (K-1) * latency`` per call:
``efficiency = (t / K) / (t / K + communication)``, the compute split evenly over the hosts.
Prints Markdown tables (docs/distributed.md holds a run of them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the cost model times one core; numpy reads these when imported

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NETS = {"lenet_style": (HERE / "nets" / "lenet_style.json", 64),
        "alexnet_mnist": (REPO / "layerkit" / "models" / "alexnet_mnist.json", 128)}
# (name, bandwidth in bytes/s, per-message latency in s): assumed typical figures, TCP over Ethernet
LINKS = [("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 5e-6)]
HOSTS = (2, 8, 64)


# -- speed: children ------------------------------------------------------------------------------

def child(net: str, images: int, repeats: int) -> None:
    """Train and print rank 0's epoch times as JSON (every rank runs this under mpiexec)."""
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import read_model_file, spec_from_dict
    from layerkit.parallel.mpi import world
    from layerkit.cli.overrides import apply_overrides
    from layerkit.training.runs import prepare_data
    from layerkit.training.trainer import Callback, Trainer, build_loss

    comm = world()
    model_file, batch = NETS[net]
    raw, source = read_model_file(model_file)
    raw = apply_overrides(raw, {"epochs": repeats + 1, "batch_size": batch, "data.train_limit": images,
                                "data.test_limit": 256})
    spec = spec_from_dict(raw, source=Path(source).name)
    model = build_model(spec)
    data = prepare_data(spec, model)  # every rank reads the embedded sample itself: not what is timed

    class Timer(Callback):
        def __init__(self):
            self.seconds = []

        def on_epoch_begin(self, epoch, steps, start_step):
            self.steps, self.started = steps, time.perf_counter()

        def on_batch_end(self, epoch, step, loss, accuracy, samples):
            if step + 1 == self.steps:
                self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    trainer = Trainer(model, build_loss(spec), data, spec.training, callbacks=[timer], collectives=comm)
    trainer.fit()
    if comm.rank == 0:
        print(json.dumps({"seconds": timer.seconds[1:], "images": len(data.x_train), "shares": trainer.shares}))


def speed(images: int, repeats: int) -> None:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    one_thread = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "LAYERKIT_NUM_THREADS": "1"}
    configs = [("one process", [], {**one_thread, "LAYERKIT_SAMPLE_PARALLEL": "0"}),
               ("forked, 2 processes", [], {**one_thread, "LAYERKIT_SAMPLE_PARALLEL": "1", "LAYERKIT_PROCESSES": "2"})]
    if mpiexec:
        for k in (1, 2):
            configs.append((f"MPI, {k} rank{'s' if k > 1 else ''}", [mpiexec, "-n", str(k)],
                            {**one_thread, "LAYERKIT_SAMPLE_PARALLEL": "0"}))
    else:
        print("no mpiexec: install the mpi extra (pip install -e '.[mpi]') for the MPI rows", file=sys.stderr)
    print(f"\n### img/s, {images} images per epoch, median of {repeats} epochs "
          f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)\n")
    print("| net | " + " | ".join(name for name, _, _ in configs) + " |")
    print("|---|" + "---:|" * len(configs))
    for net in NETS:
        cells = []
        for _, launcher, env in configs:
            proc = subprocess.run([*launcher, sys.executable, __file__, "--child", net, "--images", str(images),
                                   "--repeats", str(repeats)], env={**os.environ, **env}, capture_output=True,
                                  text=True, cwd=REPO)
            if proc.returncode != 0:
                cells.append("failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:60])
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            cells.append(f"{result['images'] / statistics.median(result['seconds']):,.0f}")
        print(f"| {net} | " + " | ".join(cells) + " |", flush=True)


# -- cost model ------------------------------------------------------------------------------------

def cost(steps: int) -> None:
    from layerkit.modelfile import zoo
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import read_model_file, spec_from_dict
    from layerkit.parallel import threads
    from layerkit.parallel.collectives import Collectives
    from layerkit.training.steps import DistributedStep, LocalStep, random_model
    from layerkit.training.trainer import build_loss

    class Counting(Collectives):
        """Rank 0 of a 2-rank group whose other rank holds the same values: counts the traffic."""
        rank, size = 0, 2

        def __init__(self):
            self.calls, self.nbytes = 0, 0

        def allreduce_sum(self, array):
            self.calls += 1
            self.nbytes += array.nbytes
            array *= 2
            return array

        def batch_sum(self, values):
            return self.allreduce_sum(np.array(values, dtype=np.float64).ravel())

    threads.set_num_threads(1)
    rows = []
    for name in zoo.names():
        raw, source = read_model_file(zoo.resolve(name))
        spec = spec_from_dict(raw, source=source)
        model, loss = build_model(spec), build_loss(spec)
        batch = int(spec.training.get("batch_size", 64))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *spec.input_shape)).astype(np.float32)
        y = rng.integers(0, int(model.graph.output.output_shape[0]), batch)
        idx = np.arange(batch)
        keys = [(node.name, t) for node in model.nodes for t in model.params[node.name]]
        group = Counting()
        DistributedStep(group, model, loss, x, y, None, keys, None, random_model(model, None))(idx, rng)
        local = LocalStep(model, loss, x, y, None, keys)
        local(idx, rng)  # warm-up
        seconds = []
        for _ in range(steps):
            # CPU time of this one-threaded process: what the step costs a core of its own,
            # unaffected by other processes on a shared machine
            started = time.process_time()
            local(idx, rng)
            seconds.append(time.process_time() - started)
        rows.append((name, model.param_count, batch, group.nbytes, group.calls, statistics.median(seconds)))
    print(f"\n### Cost model ({time.strftime('%Y-%m-%d')}; step time: CPU time of one step on one core of this "
          f"machine, median of {steps})\n")
    head = "| model | parameters | batch | bytes all-reduced / step | all-reduce calls / step | step on 1 core (ms) |"
    for hosts in HOSTS:
        for link, _, _ in LINKS:
            head += f" {hosts} hosts, {link} |"
    print(head)
    print("|---|" + "---:|" * (5 + len(HOSTS) * len(LINKS)))
    for name, params, batch, nbytes, calls, t in rows:
        cells = [name, f"{params:,}", str(batch), f"{nbytes:,}", str(calls), f"{1e3 * t:.1f}"]
        for hosts in HOSTS:
            for _, bandwidth, latency in LINKS:
                comm = 2 * (hosts - 1) / hosts * nbytes / bandwidth + calls * 2 * (hosts - 1) * latency
                cells.append(f"{(t / hosts) / (t / hosts + comm):.0%}")
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model for the cost model")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.repeats)
        return 0
    if not args.skip_speed:
        speed(args.images, args.repeats)
    if not args.skip_cost:
        cost(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
