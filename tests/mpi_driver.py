"""Run under ``mpiexec -n K`` by tests/test_mpi.py: ``python mpi_driver.py JOB.json``.

Jobs: ``train`` (runs of ``layerkit.training.runs.train`` with the built-in plugins, some
interrupted and resumed), ``cli`` (``layerkit.cli.main(argv)`` after an optional fault
on one rank: ``raise`` or ``sigkill`` at its third backward pass)."""

from __future__ import annotations

import json
import os
import signal
import sys

from layerkit.plugins.manager import load_registry, reset_registry


class InterruptAt:
    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def __getattr__(self, name):  # every other callback method: nothing to do
        return lambda *args: None

    def on_batch_end(self, epoch, step, loss, accuracy, samples):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


def fault(kind: str, rank: int) -> None:
    from layerkit.nn.network import Network as Model

    backward, calls = Model.backward, [0]

    def failing(self, caches, dout):
        calls[0] += 1
        if calls[0] == 3:
            if kind == "raise":
                raise ValueError(f"injected failure on rank {rank}")
            os.kill(os.getpid(), signal.SIGKILL)
        return backward(self, caches, dout)

    Model.backward = failing


def main() -> int:
    job = json.loads(open(sys.argv[1]).read())
    from layerkit.parallel.mpi import world

    comm = world()
    if job["kind"] == "cli":
        if job.get("fault") and comm.rank == job["fault_rank"]:
            fault(job["fault"], comm.rank)
        from layerkit.cli import main as cli_main
        return cli_main(job["argv"])
    from layerkit.training.runs import train
    from layerkit.training.trainer import TrainingInterrupted

    from layerkit.parallel.processes import set_processes

    reset_registry(load_registry(entry_points=False))
    for run in job["runs"]:
        # forked processes inside each rank, or none
        os.environ["LAYERKIT_SAMPLE_PARALLEL"] = "1" if run.get("processes", 1) > 1 else "0"
        set_processes(run.get("processes", 1))
        if run.get("interrupt"):
            try:
                train(run["model"], out=run["out"], callbacks=[InterruptAt(*run["interrupt"])])
            except TrainingInterrupted:
                pass
            else:
                raise AssertionError("the run was not interrupted")
            if not run.get("resume", True):
                continue
            out, result = train(resume=run["out"])
        else:
            out, result = train(run["model"], out=run["out"])
        assert (out is None) == (comm.rank > 0), "only rank 0 has the run directory"
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # the other rank would wait for this one for ever: end the job
        import traceback

        from layerkit.parallel.mpi import world

        traceback.print_exc()
        world().abort(1)
    sys.exit(code)
