"""Stop what a command started when the command itself is told to stop.

onramp's commands start children in their own sessions (``start_new_session=True``: a Ctrl-C in
the terminal reaches the parent only, and the parent stops each child's whole process group in
order). So the parent must run its clean-up for SIGTERM as it does for SIGINT: by default SIGTERM
ends Python at once, skipping every ``finally``, and the children are left running (e.g. olah
holding its port after ``kill <pid of onramp mirror serve>``).

:func:`exit_on_signals` (called by ``onramp``'s entry point and the benchmark scripts) turns
SIGTERM and SIGHUP into ``SystemExit(128 + signum)`` in the main thread, so ``finally`` blocks and
context managers stop the children; SIGINT raises ``KeyboardInterrupt`` as usual. Once stopping,
further SIGTERM/SIGINT/SIGHUP are noted and ignored, so a second signal cannot cut the clean-up
short (which has its own SIGKILL deadlines); SIGKILL still ends everything but the children.
"""

from __future__ import annotations

import logging
import signal
import threading

__all__ = ["exit_on_signals"]

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_stopping = threading.Event()


def _while_stopping(signum: int, frame) -> None:
    log.warning("%s received while stopping; still stopping the children", signal.Signals(signum).name)


def _stop(signum: int, frame) -> None:
    if _stopping.is_set():
        return _while_stopping(signum, frame)
    _stopping.set()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _while_stopping)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def exit_on_signals() -> bool:
    """Install the handlers (main thread only; elsewhere, e.g. a Prefect worker thread, nothing
    is changed and False is returned). Idempotent."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in _STOP_SIGNALS:
        if sig != signal.SIGINT or signal.getsignal(sig) is signal.default_int_handler:
            signal.signal(sig, _stop)
    return True
