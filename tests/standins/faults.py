"""Stand-in implementations that fault, for the fault-recovery tests on a CPU.

``registry(fault=KIND@T)`` (as ``functools.partial``: a worker process or Ray actor builds its
implementations with it, ``isolate.WorkerSetup``) is ``reference-custom`` whose permute, at batch
size T, does what a broken kernel does to its process:

- ``sticky``: raises CUDA's illegal-address error, and every later call in that process raises it
  too (a CUDA context after such a fault; on a CPU nothing else would make it sticky);
- ``exit``: ``os._exit(3)``, a process that ends without a word;
- ``segv``: SIGSEGV, a crash inside a kernel library;
- ``hang``: never returns.
"""

from __future__ import annotations

import functools
import os
import signal
import time

from moebench.impls.reference import ReferenceCustom

STICKY_ERROR = "CUDA error: an illegal memory access was encountered"
_poisoned = False


def _fault(kind: str) -> None:
    global _poisoned
    if kind == "sticky":
        _poisoned = True
        raise RuntimeError(STICKY_ERROR)
    if kind == "exit":
        os._exit(3)
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "hang":
        time.sleep(3600)


class FaultyReference(ReferenceCustom):
    def __init__(self, kind: str, tokens: int) -> None:
        self.kind, self.tokens = kind, tokens

    def prepare(self, inputs):
        run = super().prepare(inputs)
        permute = run.permute

        def faulty() -> None:
            if _poisoned:
                raise RuntimeError(STICKY_ERROR)
            if inputs.num_tokens == self.tokens:
                _fault(self.kind)
            permute()

        run.permute = faulty
        return run


def registry(vllm_ops_library=None, vllm_module=None, *, fault: str = "none@0") -> dict:
    kind, _, tokens = fault.partition("@")
    return {"reference-custom": FaultyReference(kind, int(tokens))}


def factory(fault: str):
    """A picklable registry factory that faults as ``fault`` says."""
    return functools.partial(registry, fault=fault)
