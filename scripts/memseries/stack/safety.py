"""The safety net: no process of a stack survives its orchestrator.

Every started stack is registered here. On the first SIGINT/SIGTERM every live stack is stopped (all process
groups signalled at once, one short grace) and the signal becomes an exception so `with` blocks unwind; a
second signal during that stop SIGKILLs everything at once. `atexit` is the last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading

INTERRUPT_GRACE = 5.0  # seconds the components get after the first Ctrl-C: the stack is gone within 10 s

_LIVE: list = []
_STOPPING = threading.Event()
_INSTALLED = False


def register(stack) -> None:
    _install()
    if stack not in _LIVE:
        _LIVE.append(stack)


def unregister(stack) -> None:
    if stack in _LIVE:
        _LIVE.remove(stack)


def stop_all(grace: float | None = None) -> None:
    for stack in list(_LIVE):
        with contextlib.suppress(Exception):
            stack.stop() if grace is None else stack.stop(grace=grace)


def kill_all_now() -> None:
    for stack in list(_LIVE):
        with contextlib.suppress(Exception):
            stack.kill_now()


def _on_signal(signum, frame):  # exercised by tests/e2e/test_harness_interrupt.py
    if _STOPPING.is_set():  # a second Ctrl-C while stopping: no more grace
        kill_all_now()
        return
    _STOPPING.set()
    try:
        stop_all(grace=INTERRUPT_GRACE)
    finally:
        _STOPPING.clear()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            # don't override a handler somebody else (pytest, rich) installed deliberately, except the defaults
            if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler, None):
                signal.signal(s, _on_signal)
