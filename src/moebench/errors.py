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


# What torch appends to every CUDA error: advice, not the error.
_CUDA_ADVICE = ("Search for `cuda", "CUDA kernel errors might be asynchronously reported",
                "For debugging consider passing CUDA_LAUNCH_BLOCKING=1", "Compile with `TORCH_USE_CUDA_DSA`")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line and cut to ``limit`` characters: library errors
    (CUDA, transformers, NVML) span many lines, and a reason is always printed on one. torch's
    advice after a CUDA error is dropped, so the error itself is what fits."""
    text = " ".join(str(exc).split())
    cut = min((i for i in (text.find(a) for a in _CUDA_ADVICE) if i > 0), default=len(text))
    return text[:cut].rstrip(" .")[:limit] if cut < len(text) else text[:limit]


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (``one_line``), or the type alone where there is no message:
    the reason a failed piece gives, everywhere."""
    text = one_line(exc, limit)
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__
