"""One torch thread pool per process, sized to its cores and shared by every model in it.

Three measured causes of a pipeline slower than its detector (bench/profile_pipeline.py):

* **Spinning pool threads.** torch's OpenMP runtime (libgomp) keeps a pool thread spinning for ~300,000
  iterations after every parallel region before it sleeps. The detector alone then burned 2-3x the CPU it needs
  (198-251 ms of CPU per 640x480 frame against 81-86 ms with ``OMP_WAIT_POLICY=PASSIVE``, on a busy 2-core
  machine), and in a pipeline that spin takes the core from ingest, the classifier, storage and Redis.
  :func:`prepare_environment` makes the threads sleep at once; it must run before torch is loaded, which is why
  importing ``fervid`` runs it (a value already in the environment is kept).
* **Two pools on the same cores.** An OpenMP team is per calling thread: the demo's detector and classifier
  threads each ran their own pool of `cores` threads, oversubscribing the cores whenever both inferred at once.
  :func:`cpu_inference` is one lock per process that CPU inference takes, so the models take turns on one pool
  while everything else (JPEG, Redis, SQL, which release the GIL) overlaps.
* **Pool size.** :func:`configure_torch` sets the intra-op threads to the setting ``threads`` (0: the cores this
  process may run on), once, in each stage that loads a model, so every deployment sizes it the same way.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# What fervid wants from the OpenMP runtime unless the environment says otherwise.
OMP_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}

_CPU_INFERENCE = threading.Lock()


def prepare_environment() -> None:
    """Set fervid's OpenMP defaults in the environment (never overriding one already set). Effective only
    before torch is first imported; subprocesses inherit it."""
    for key, value in OMP_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pool_size(threads: int = 0) -> int:
    """The intra-op threads for the setting `threads` (0: the available cores)."""
    return threads if threads > 0 else available_cores()


def configure_torch(threads: int = 0) -> int:
    """Size torch's intra-op pool (the setting ``threads``; 0 = the available cores) and return the size. The
    inter-op pool is left alone: fervid never forks graphs, so it stays idle."""
    import torch

    n = pool_size(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cpu_inference(device: torch.device | str | Any) -> AbstractContextManager[Any]:
    """The process's CPU inference lock for a model on `device` (a no-op context for GPUs, which queue work
    themselves): hold it for the forward pass only, not for pre- or post-processing."""
    kind = device if isinstance(device, str) else getattr(device, "type", "cpu")
    return _CPU_INFERENCE if kind == "cpu" else nullcontext()
