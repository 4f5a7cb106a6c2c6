"""Where the heavy units run: in this process, or on a Ray cluster.

Each precompute stage is a list of *units*, each a plain function of plain, picklable inputs
(embed one task; train one expert; one (expert, tasks) chunk of the performance matrix).
An executor runs a stage's units and yields each result as it finishes; the caller (the
driver) is the only process that writes the DuckDB file and commits each result as it arrives,
so resume, ``FILE.building`` / ``FILE.updating`` and the atomic publish are the same for both:

- :class:`LocalExecutor` runs the units one after the other in this process (with the next
  unit's input decoded in a background thread, as the build always did);
- :class:`RayExecutor` runs them as Ray tasks (``ray==2.60.0``), one CPU (``--device cpu``) or
  ``--gpus-per-task`` of a GPU (``--device cuda``) each, retried when a worker dies.

Data stays where it is: a unit gets a task's *spec* (its records name image files, which the
worker reads), never decoded images; expert weights and trunk caches go to the shared
``--cache``. ``ray`` is imported only by :class:`RayExecutor`, so local runs and the app never
load it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import Task2VecError

ENGINES = ("local", "ray")
RAY_RETRIES = 3  # a unit whose worker dies is run again, up to this many times
UNIT_CPUS = 1  # CPUs (and torch threads) per Ray unit, also beside a GPU


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of work: ``fn(*args)``; ``key`` names it in messages (a task or expert id)."""

    key: str
    args: tuple


def _named(key: str, message: str) -> str:
    """The unit's error message, naming the unit if it does not already."""
    return message if key in message else f"{key}: {message}"


class LocalExecutor:
    """Runs the units in this process, in order; the next unit's ``load`` (the decoding of its
    images, I/O that releases the GIL) runs in a background thread meanwhile."""

    engine = "local"
    workers = 1

    def run(self, fn: Callable, units: Sequence[Unit], *, load: Callable | None = None,
            desc: str = "", unit: str = "unit", progress: bool = True) -> Iterator[tuple[Unit, Any]]:
        """Yield ``(unit, fn(*unit.args))`` per unit. With ``load``, ``fn`` is called as
        ``fn(*unit.args, loaded=load(*unit.args))`` (the same result: ``fn`` loads by itself
        when not given ``loaded``)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), desc=desc, unit=unit, disable=not progress)
        try:
            with ThreadPoolExecutor(max_workers=1) as loader:
                pending = loader.submit(load, *units[0].args) if load and units else None
                for i, u in enumerate(units):
                    bar.set_postfix_str(u.key[-40:])
                    try:
                        if load:
                            loaded = pending.result()
                            if i + 1 < len(units):
                                pending = loader.submit(load, *units[i + 1].args)
                            result = fn(*u.args, loaded=loaded)
                        else:
                            result = fn(*u.args)
                    except Task2VecError as exc:
                        raise Task2VecError(_named(u.key, str(exc))) from None
                    yield u, result
                    bar.update(1)
        finally:
            bar.close()

    def close(self, keep_logs: bool = False) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# Ray


class _Records:
    """A spec's records as a plain list (paths and labels): what a worker needs to read them."""

    def __init__(self, records):
        self.records = tuple(records)

    def __call__(self):
        return list(self.records)


def portable(spec):
    """``spec`` as it travels to a worker: its records resolved on the driver into file names
    (a paper reader's records are a closure over the whole annotation index, which must not be
    shipped per task), unless they already are a small reader call (``functools.partial``:
    the demo library generates its images on the worker from the installed datasets)."""
    if isinstance(spec.records, (functools.partial, _Records)):
        return spec
    return dataclasses.replace(spec, records=_Records(spec.records()))


def _portable_args(args: tuple) -> tuple:
    from .libraries import TaskSpec

    def conv(a):
        if isinstance(a, TaskSpec):
            return portable(a)
        if isinstance(a, (list, tuple)) and any(isinstance(x, TaskSpec) for x in a):
            return type(a)(conv(x) for x in a)
        return a
    return tuple(conv(a) for a in args)


def _run_unit(fn: Callable, args: tuple, threads: int):
    """What a Ray worker runs (a module-level function: Ray pickles it by name). Torch gets the
    unit's CPUs as threads: Ray's OMP_NUM_THREADS comes too late for a worker that imported
    torch already (measured: its expert training then ran on 2 threads, rounding differently)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(*args)


def _ray_session_dir() -> Path:
    # Ray's socket paths must stay under 107 characters: a short folder in the temp dir.
    return Path(tempfile.mkdtemp(prefix="t2v-ray-"))


def _cluster_running() -> bool:
    """Whether ``ray start`` left a cluster address for this machine (what ``auto`` reads)."""
    if os.environ.get("RAY_ADDRESS"):
        return True
    temp = os.environ.get("RAY_TMPDIR") or "/tmp/ray"
    return Path(temp, "ray_current_cluster").is_file()


class RayExecutor:
    """Runs the units as Ray tasks and yields results as they finish (any order).

    ``address``: a running cluster (``HOST:PORT`` or ``auto``); ``None`` connects to the one
    ``ray start`` left on this machine if there is one, else starts a local Ray instance for
    this run (loopback only, no dashboard, no usage stats, logs in a temp folder, named on the
    progress output) and shuts it down in :meth:`close`; ``local`` always starts one.
    Per unit: ``num_gpus=gpus_per_task`` with ``device='cuda'``, one CPU otherwise.
    """

    engine = "ray"

    def __init__(self, address: str | None = None, *, device: str = "cpu",
                 gpus_per_task: float = 1.0, num_cpus: int | None = None, progress: bool = True):
        if device.startswith("cuda:"):
            raise Task2VecError("with --engine ray use --device cuda: Ray gives each unit its GPU")
        if device not in ("cpu", "cuda"):
            raise Task2VecError(f"unknown device {device!r}; use cpu or cuda")
        if not 0 < gpus_per_task <= 1 and not (gpus_per_task > 1 and gpus_per_task == int(gpus_per_task)):
            raise Task2VecError(f"--gpus-per-task must be in (0, 1] or a whole number, got {gpus_per_task}")
        self.device, self.gpus_per_task = device, gpus_per_task
        self.logs: Path | None = None
        self._own = address == "local" or (address is None and not _cluster_running())
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        if self._own and "ray" not in sys.modules:
            # Ray's "single machine" mode: every Ray process binds to 127.0.0.1 only.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Workers import this package by name: the driver's copy when Ray starts them here.
        root = str(Path(__file__).resolve().parents[1])
        if root not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(
                p for p in (root, os.environ.get("PYTHONPATH")) if p)
        import logging

        import ray

        self._ray = ray
        quiet = dict(log_to_driver=False, configure_logging=True, logging_level=logging.ERROR)
        # A caller that connected to Ray itself (ray.init) keeps its connection.
        self._connected_here = not ray.is_initialized()
        try:
            if not self._connected_here:
                self._own = False
            elif self._own:
                self.logs = _ray_session_dir()
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         _temp_dir=str(self.logs), **quiet)
            else:
                ray.init(address=address or "auto", **quiet)
        except Exception as exc:  # ray raises ConnectionError, ValueError or a bare Exception
            self._cleanup_logs()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self._own:  # e.g. the raylet did not register within Ray's 30 s
                raise Task2VecError(f"cannot start a local Ray instance: {reason}") from None
            raise Task2VecError(f"cannot connect to the Ray cluster at {address or 'auto'}: "
                                f"{reason}; start it with ray start --head, or use "
                                "--ray-address local") from None
        self._errors_to_file()
        resources = ray.cluster_resources()
        if device == "cuda":
            gpus = resources.get("GPU", 0.0)
            if gpus <= 0:
                self.close()
                raise Task2VecError("--device cuda, but the Ray cluster has no GPUs; use --device cpu")
            self.workers = max(1, int(gpus // gpus_per_task))
        else:
            self.workers = max(1, int(resources.get("CPU", 1) // UNIT_CPUS))
        if progress and self.logs:
            print(f"ray: local instance, {self.workers} workers, logs in {self.logs}", file=sys.stderr,
                  flush=True)
        options = {"max_retries": RAY_RETRIES, "retry_exceptions": False}
        options.update({"num_gpus": gpus_per_task, "num_cpus": UNIT_CPUS} if device == "cuda"
                       else {"num_cpus": UNIT_CPUS})
        self._remote = ray.remote(**options)(_run_unit)

    def run(self, fn: Callable, units: Sequence[Unit], *, load: Callable | None = None,
            desc: str = "", unit: str = "unit", progress: bool = True) -> Iterator[tuple[Unit, Any]]:
        """Yield ``(unit, fn(*unit.args))`` as units finish. At most two units per worker are
        queued at a time. A unit that fails on bad input stops new submissions; the units
        already running finish and are yielded (so they are committed), then the error is
        raised naming the unit. ``load`` is for the local executor (workers load in ``fn``)."""
        from tqdm.auto import tqdm

        ray = self._ray
        todo = list(units)[::-1]
        running: dict = {}
        failure: BaseException | None = None
        bar = tqdm(total=len(units), desc=desc, unit=unit, disable=not progress)
        bar.set_postfix_str(f"{self.workers} workers")
        try:
            while running or (todo and failure is None):
                while todo and failure is None and len(running) < 2 * self.workers:
                    u = todo.pop()
                    # named after the unit function: what ray list tasks and the dashboard show
                    ref = self._remote.options(name=fn.__name__).remote(fn, _portable_args(u.args),
                                                                        UNIT_CPUS)
                    running[ref] = u
                ready, _ = ray.wait(list(running), num_returns=1)
                u = running.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    if isinstance(cause, Task2VecError):
                        failure = failure or Task2VecError(_named(u.key, str(cause)))
                    else:
                        failure = failure or cause
                    continue
                except ray.exceptions.RayError as exc:  # the worker or its node died, out of
                    # memory, ... after RAY_RETRIES retries
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    failure = failure or Task2VecError(
                        f"{u.key}: Ray could not run it ({type(exc).__name__}: {reason[:200]}); "
                        "the finished units are kept, and running the same command again resumes")
                    continue
                yield u, result
                bar.update(1)
        finally:
            for ref in running:  # the driver stopped early (an error or KeyboardInterrupt)
                ray.cancel(ref, force=True)
            bar.close()
        if failure is not None:
            raise failure

    def _errors_to_file(self) -> None:
        """Ray's driver prints the cluster's error messages (e.g. "A worker died or was killed
        while executing a task") to stdout, from a thread it always starts. Here they go to
        ``ray-errors.log`` in the run's Ray logs instead: a unit whose worker died is retried,
        and a unit that fails is reported by :meth:`run` in one line. (Ray is pinned; this
        replaces its ``print_to_stdstream`` until :meth:`close`.)"""
        import ray._private.worker as ray_worker

        node = getattr(ray_worker, "_global_node", None)
        folder = self.logs or (Path(node.get_logs_dir_path()) if node is not None else None)
        self._printer = ray_worker.print_to_stdstream

        def to_file(data: dict, ignore_prefix: bool = False) -> None:
            if folder is not None and folder.is_dir():
                with open(folder / "ray-errors.log", "a") as fh:
                    fh.write("".join(f"{line}\n" for line in data.get("lines", ())))

        ray_worker.print_to_stdstream = to_file

    def close(self, keep_logs: bool = False) -> None:
        """Disconnect; shut the local instance down if this run started it. Its logs are
        removed unless ``keep_logs`` (a run that crashed keeps them in ``self.logs``)."""
        printer = getattr(self, "_printer", None)
        if printer is not None:
            import ray._private.worker as ray_worker

            ray_worker.print_to_stdstream = printer
        if self._connected_here and self._ray.is_initialized():
            self._ray.shutdown()
        if not keep_logs:
            self._cleanup_logs()

    def _cleanup_logs(self) -> None:
        # The logs of a run that finished or stopped on bad input are not kept (a temp folder
        # per run would pile up); a run that crashed or was killed leaves them in /tmp/t2v-ray-*.
        if self.logs is not None:
            shutil.rmtree(self.logs, ignore_errors=True)
            self.logs = None


def executor(engine: str = "local", *, address: str | None = None, device: str = "cpu",
             gpus_per_task: float = 1.0, progress: bool = True):
    """The executor the CLI's ``--engine`` names (call ``close()`` when done)."""
    if engine == "local":
        if address is not None:
            raise Task2VecError("--ray-address needs --engine ray")
        return LocalExecutor()
    if engine == "ray":
        return RayExecutor(address, device=device, gpus_per_task=gpus_per_task, progress=progress)
    raise Task2VecError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")


LOCAL = LocalExecutor()
