"""How a fervid process takes SIGTERM/SIGINT: :func:`handle_stop_signals` installs a handler.

Before any work is in flight the handler exits at once, with status 0 (:func:`exit_now_on_signal`); once work is in
flight a command installs a cooperative one (:class:`fervid.worker.StopFlag`): the first signal asks the work to
stop, so nothing is cut off half-done.

`fervid up` starts each worker with SIGTERM blocked (:func:`fervid.supervisor.worker_preexec`), and installing a
handler here unblocks it. A stop sent while the worker is still starting (the interpreter, the command's imports)
waits until the command can take it, instead of killing the worker (-15), or raising an exit in the middle of an
import (a C extension half loaded fails the process).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def handle_stop_signals(handler: Callable[[int, object], None]) -> None:
    """`handler` for SIGTERM and SIGINT from now on; a SIGTERM held back while the process started is taken now."""
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def exit_now_on_signal() -> None:
    """Until work is in flight, SIGTERM/SIGINT end the process at once with status 0 (a slow model load is
    not waited for)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d while starting: exiting", signum)
        raise SystemExit(0)

    handle_stop_signals(handler)
