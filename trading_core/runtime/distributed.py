"""Fan-out of independent training tasks: Ray tasks on a local Ray (default) or a cluster via ``RAY_ADDRESS``.

Every task seeds itself and trains on one torch thread, so a task gives the same result wherever it runs —
in this process, in a local Ray worker or on a cluster node (whose workers need this project installed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

Task = TypeVar("Task")
Result = TypeVar("Result")

# One INFO line per finished task ("train_and_evaluate: 7/12 tasks done after 41 s"): a run's console and its
# Dagster event log show how far a fan-out of minutes has come (the pipeline's instance captures this logger).
logger = logging.getLogger(__name__)


class _Progress:
    """Counts finished tasks of one fan-out and logs each."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.started = label, total, 0, time.monotonic()

    def finished(self, count: int = 1) -> None:
        self.done += count
        elapsed = time.monotonic() - self.started
        logger.info("%s: %d/%d tasks done after %.0f s", self.label, self.done, self.total, elapsed)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for the block: results then do not depend on the machine's core count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fan_out(
    function: Callable[[Task], Result],
    tasks: Sequence[Task],
    use_ray: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    label: str | None = None,
) -> list[Result]:
    """``[function(task) for task in tasks]``, as Ray tasks when ``use_ray``; results keep the tasks' order.

    Each finished task logs one progress line; the first task that fails raises at once.

    :param function: a module-level function (Ray ships it to the workers by reference)
    :param tasks: picklable task descriptions
    :param use_ray: run as Ray tasks; ``False`` runs them one after the other here
    :param address: Ray cluster address; defaults to ``RAY_ADDRESS``, else a local Ray is started
    :param num_cpus: CPUs of a local Ray (all cores when ``None``)
    :param label: what the progress lines call the fan-out; the function's name when ``None``
    """
    progress = _Progress(label or function.__name__, len(tasks))
    if not use_ray or len(tasks) <= 1:
        return [_run_here(function, task, progress) for task in tasks]
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        address = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        remote = ray.remote(num_cpus=1)(function)
        return _gather(ray, [remote.remote(task) for task in tasks], progress)
    finally:
        if started_here:
            ray.shutdown()


def _run_here(function: Callable[[Task], Result], task: Task, progress: _Progress) -> Result:
    result = function(task)
    progress.finished()
    return result


def _gather(ray, refs: list, progress: _Progress) -> list:
    """The refs' results in their order, logging each task as it finishes; a failed task raises at once."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)  # raises the task's error now, not after the slower tasks finished
        progress.finished(len(ready))
    return ray.get(refs)
