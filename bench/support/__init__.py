"""What every benchmark script shares, so that its figures can be trusted or are visibly flagged:

* the machine's load average before and after, and a refusal (exit 3) when it exceeds 1.0 per core, unless
  the script was given ``--allow-load`` (then every figure is printed under a LOADED banner);
* interleaved pairs (baseline, variant, baseline, variant, ...) reported as the median ratio with its min-max;
* whole processes timed from launch, with their peak RSS (``wait4``'s rusage);
* where the machine stands (cores, torch threads) in one line.

A helper package, not a script: ``bench/*.py`` put ``bench/`` on ``sys.path`` and ``import support``. Importing it
applies fervid's OpenMP settings (fervid/threads.py) before any benchmark imports torch, as the `fervid` command
does: a script that imported torch first would measure pool threads spinning against each other.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fervid.threads import prepare_environment

prepare_environment()

LOAD_PER_CORE_LIMIT = 1.0
REFUSED_EXIT = 3


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load_per_core() -> float:
    """The 1-minute load average divided by the cores this process may use."""
    return os.getloadavg()[0] / cores()


def load_report(when: str) -> float:
    """Print the load average (1, 5, 15 min) and return the 1-minute figure per core."""
    one, five, fifteen = os.getloadavg()
    per_core = one / cores()
    flag = "  ** LOADED: figures are not measurements **" if per_core > LOAD_PER_CORE_LIMIT else ""
    print(f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} on {cores()} cores ({per_core:.2f}/core){flag}")
    return per_core


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-load",
        action="store_true",
        help=f"run even when the load average exceeds {LOAD_PER_CORE_LIMIT} per core (figures are flagged LOADED)",
    )


class LoadGuard:
    """Refuses to start on a loaded machine (unless allowed), and says at the end whether the load stayed low.

    ``with LoadGuard(args.allow_load) as guard: ...``; ``guard.loaded`` is true when the load exceeded the limit
    before, during (sampled by :meth:`check`) or after the run."""

    def __init__(self, allow: bool, wait_s: float = 0.0) -> None:
        self.allow = allow
        self.wait_s = wait_s
        self.peak = 0.0

    @property
    def loaded(self) -> bool:
        return self.peak > LOAD_PER_CORE_LIMIT

    def check(self) -> float:
        per_core = load_per_core()
        self.peak = max(self.peak, per_core)
        return per_core

    def __enter__(self) -> LoadGuard:
        deadline = time.monotonic() + self.wait_s
        per_core = self.check()
        while per_core > LOAD_PER_CORE_LIMIT and time.monotonic() < deadline:
            time.sleep(5)
            per_core = load_per_core()
        self.peak = per_core
        load_report("before")
        if per_core > LOAD_PER_CORE_LIMIT and not self.allow:
            print(
                f"refused: load average {per_core:.2f} per core exceeds {LOAD_PER_CORE_LIMIT}; ratios measured now "
                "would mean nothing. Run on a quiet machine, or pass --allow-load to run anyway (figures flagged).",
                file=sys.stderr,
            )
            raise SystemExit(REFUSED_EXIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, load_report("after"))
        if self.loaded:
            print(
                f"** LOADED: the load average reached {self.peak:.2f} per core during this run "
                f"(limit {LOAD_PER_CORE_LIMIT}); do not report these figures **"
            )


@dataclass
class Spread:
    """Median and min-max of a series of figures."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def __str__(self) -> str:
        if not self.values:
            return "n/a"
        return f"{self.median:.2f} ({min(self.values):.2f}-{max(self.values):.2f}, n={len(self.values)})"


def interleaved(
    pairs: int, baseline: Callable[[], float], variant: Callable[[], float], guard: LoadGuard | None = None
) -> tuple[Spread, Spread, Spread]:
    """Run baseline, variant, baseline, variant ... `pairs` times (each returns a rate: higher is better).
    Returns the baseline rates, the variant rates and the per-pair ratios variant/baseline."""
    base, var, ratio = Spread(), Spread(), Spread()
    for i in range(pairs):
        b = baseline()
        v = variant()
        base.values.append(b)
        var.values.append(v)
        ratio.values.append(v / b if b else float("nan"))
        per_core = guard.check() if guard else load_per_core()
        print(
            f"  pair {i + 1}/{pairs}: baseline {b:.2f}, variant {v:.2f}, ratio {v / b:.3f} (load {per_core:.2f}/core)"
        )
    return base, var, ratio


@dataclass
class ProcessRun:
    seconds: float  # wall, from launch to exit
    peak_rss_mb: float  # the child's peak resident set (its largest process, when it had children)
    returncode: int
    output: str


def run_process(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 900) -> ProcessRun:
    """Run a whole process, timing it from launch to exit; its peak RSS comes from wait4 (the largest of it and the
    descendants it waited for)."""
    import tempfile
    import threading

    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, 9))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    if seconds >= timeout:
        raise RuntimeError(f"{shlex.join(argv)} ran past {timeout:.0f} s:\n{output[-2000:]}")
    return ProcessRun(seconds, usage.ru_maxrss / 1024, proc.returncode, output)


def machine_line() -> str:
    try:
        import torch

        threads = f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
        if torch.cuda.is_available():
            threads += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        threads = "no torch"
    return f"{cores()} cores, {threads}, python {sys.version.split()[0]}"
