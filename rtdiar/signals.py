"""Stop signals: Ctrl-C (SIGINT), `kill` / `docker stop` / a service manager (SIGTERM) and a closing
terminal (SIGHUP) all end a run the same way.

The first asks for an orderly stop: the threads finish the frame in hand and are joined, the camera
and microphone are released, and every output is finalised (the annotated video stays playable),
with exit status 0, since the stop was asked for. A second signal ends the process at once, with
status 128 + the signal's number, as a shell reports a killed process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[list[int]]:
    """While inside, the first stop signal calls `stop()` (it must only ask: it runs in the signal
    handler) and a second one exits at once. Yields the list of signals received. Outside the main
    thread, where Python cannot take signals, it does nothing."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handle(signum: int, frame) -> None:
        if received:
            os._exit(128 + signum)
        received.append(signum)
        stop()

    previous = {number: signal.signal(number, handle) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
