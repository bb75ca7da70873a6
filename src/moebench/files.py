"""Writing a file so that no reader, and no interrupted writer, ever leaves half of it: results,
the caches, the release manifest and bisection state all go through ``atomic_write``; and where
moebench keeps its caches (``cache_dir``) and how it reads and adds their entries (``cached``,
``remember``). Torch-free, so the commands that only write files import nothing heavy."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: Path, fill: Callable[[IO[str]], None], newline: str | None = None) -> None:
    """Write through a temp file in the same folder and rename it over ``path``: a reader (or a
    killed writer) never sees half a file, and an interrupted write leaves no temp file behind.
    The file keeps the mode of the one it replaces, else the umask's (mkstemp's own is 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline=newline) as f:
            fill(f)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """moebench's caches (bandwidth ceilings, resolved model shapes): $XDG_CACHE_HOME/moebench,
    else ~/.cache/moebench."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "moebench"


def cached(name: str) -> dict:
    """The entries of the cache file ``name`` (a JSON object in ``cache_dir``); {} where there is
    none yet or it cannot be read: the entry is then just computed again."""
    try:
        entries = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def remember(name: str, key: str, value) -> None:
    """Add ``key`` to the cache file ``name``, keeping the entries another process (a Ray worker,
    the next asv commit) wrote meanwhile; a read-only home only costs computing it again later."""
    entries = {**cached(name), key: value}
    try:
        atomic_write(cache_dir() / name, lambda f: json.dump(entries, f, indent=1))
    except OSError:
        pass
