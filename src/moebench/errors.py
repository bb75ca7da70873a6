"""Errors a user can fix (the CLI turns them into one line on stderr and exit code 2), and a stop
asked for from outside."""

import signal
import threading


class BadInput(Exception):
    """Input that cannot be benchmarked as given (unknown model, bad flag value, bad file)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, ``kill``): stop as Ctrl-C does, with what was measured saved.
    A KeyboardInterrupt, because that is what libraries blocked in C code (Ray's ``wait``) let
    through; ``terminated()`` tells the two apart even where one re-raises its own."""


_received: list[int] = []


def _terminated(signum, frame):
    _received.append(signum)
    raise Terminated()


def terminated() -> bool:
    return bool(_received)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``Terminated`` in this (main) thread, so ``with`` blocks close their
    workers and Ray. Call it again after ``ray.init``: Ray installs a handler of its own that
    prints a C++ stack and aborts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line and cut to ``limit`` characters: library errors
    (CUDA, transformers, NVML) span many lines, and a reason is always printed on one."""
    return " ".join(str(exc).split())[:limit]
