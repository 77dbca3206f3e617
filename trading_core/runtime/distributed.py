"""Fan-out of independent training tasks: Ray tasks on a local Ray (default) or a cluster via ``RAY_ADDRESS``.

Every task seeds itself and trains on one torch thread, so a task gives the same result wherever it runs —
in this process, in a local Ray worker or on a cluster node (whose workers need this project installed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

Task = TypeVar("Task")
Result = TypeVar("Result")


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
) -> list[Result]:
    """``[function(task) for task in tasks]``, as Ray tasks when ``use_ray``; results keep the tasks' order.

    :param function: a module-level function (Ray ships it to the workers by reference)
    :param tasks: picklable task descriptions
    :param use_ray: run as Ray tasks; ``False`` runs them one after the other here
    :param address: Ray cluster address; defaults to ``RAY_ADDRESS``, else a local Ray is started
    :param num_cpus: CPUs of a local Ray (all cores when ``None``)
    """
    if not use_ray or len(tasks) <= 1:
        return [function(task) for task in tasks]
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
        return ray.get([remote.remote(task) for task in tasks])
    finally:
        if started_here:
            ray.shutdown()
