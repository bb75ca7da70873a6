"""Joining a Ray cluster, or starting one on this machine: the only place Ray is initialized.

``session(address)`` is the one owner of the connection: it joins the cluster at ``address`` (or
starts a local one), and shuts Ray down on the way out only if it was the one that started it.
Addresses are checked before Ray sees them: a malformed one, or one nothing answers on, is a
``BadInput`` within seconds (Ray itself would retry for minutes, logging every retry).

Ray is an optional extra: this module imports it only when called.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from .errors import BadInput, describe, stop_on_sigterm

INSTALL_HINT = "pip install 'moebench[ray]'"
CONNECT_TIMEOUT_S = 15.0  # the pre-flight connection to an existing cluster
PROBE_TIMEOUT_S = 5.0
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # results are kilobytes: no need for Ray's 30 % of RAM


def ray_module():
    try:
        import ray
    except ImportError:
        raise BadInput(f"Ray is not installed here: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """What the driver sees of the cluster it joined."""

    address: str
    gpus: int
    cpus: int
    nodes: int

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def worker_count(self, requested: int | None) -> int:
        """One worker per GPU. Without GPUs, one per node by default: CPU workers that share a
        node compete for its cores and memory bandwidth and skew each other's host timings."""
        if self.gpus:
            if requested is not None and requested > self.gpus:
                raise BadInput(f"{requested} Ray workers asked for, but the cluster has {self.gpus} "
                               "GPU(s) and runs one worker per GPU")
            return requested or self.gpus
        if requested is not None and requested > self.cpus:
            raise BadInput(f"{requested} Ray workers asked for, but the cluster has no GPU and "
                           f"{self.cpus} CPU(s), one per worker")
        return requested or self.nodes


def _host_port(address: str) -> tuple[str, int] | None:
    """None for ``auto`` (Ray finds the cluster); BadInput for what is no address at all."""
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BadInput(f"Ray address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _probe(address: str, host: str, port: int) -> None:
    """Fail fast on an address nothing listens on: Ray itself retries such a one for minutes."""
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = f"no answer within {PROBE_TIMEOUT_S:.0f} s" if isinstance(exc, TimeoutError) else (
            exc.strerror or describe(exc))
        raise BadInput(f"cannot reach the Ray cluster at {address}: {why}") from None


def _preflight(address: str) -> None:
    """Connect once from a child process with a deadline: something that accepts connections but
    is not a Ray cluster (or a stale ``auto``) makes ``ray.init`` retry for minutes, logging each
    retry to stderr from Ray's C++ core; a child's stderr and lifetime are ours to cut short."""
    code = ("import logging, sys, ray; "
            "ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)")
    try:
        child = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                               timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BadInput(f"the Ray cluster at {address} did not answer within {CONNECT_TIMEOUT_S:.0f} s") from None
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or [f"exit status {child.returncode}"]
        error = next((ln for ln in reversed(lines) if re.match(r"[\w.]+(Error|Exception)\b", ln)), lines[-1])
        raise BadInput(f"cannot connect to the Ray cluster at {address}: {error.split(': ', 1)[-1]}")


def connect(address: str | None = None) -> Cluster:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) or start a
    local one (None). A process already connected to Ray keeps that connection (``address`` is
    then not used). An unreachable address is a BadInput within ``CONNECT_TIMEOUT_S`` seconds."""
    ray = ray_module()
    if address is not None:
        _host_port(address)  # a malformed address is reported even where the connection is reused
    if not ray.is_initialized():
        if address is None:
            ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:
            if (host_port := _host_port(address)) is not None:
                _probe(address, *host_port)
            _preflight(address)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    resources = ray.cluster_resources()
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client connections have no GCS address of their own
        gcs = address or "local"
    return Cluster(address=gcs, gpus=int(resources.get("GPU", 0)), cpus=int(resources.get("CPU", 0)),
                   nodes=sum(1 for n in ray.nodes() if n.get("Alive")))


@contextmanager
def session(address: str | None = None) -> Iterator[Cluster]:
    """The cluster at ``address`` (``connect``) for the length of the block; Ray is shut down at
    its end if this session started it (a caller already connected keeps its connection)."""
    ray = ray_module()
    owns = not ray.is_initialized()
    try:
        cluster = connect(address)
        stop_on_sigterm()  # after Ray's own handler, which would abort with a C++ stack
        yield cluster
    finally:
        if owns and ray.is_initialized():
            ray.shutdown()
