"""MoE shapes (experts, top-k, hidden size, dtype) resolved from Hugging Face configs.

Resolution goes through ``transformers.AutoConfig`` so any architecture transformers knows works,
not a table per model. Field names differ between MoE families, so the expert count, top-k and
hidden size are looked up through ordered lists of known spellings on the text config (nested
``text_config`` for multimodal models, ``ffn_config`` for DBRX). Shipped ``config.json`` snapshots
make the supported models resolve offline without any network attempt.

A shape read from a file (a shipped snapshot or a local directory) is cached
(``files.cache_dir()/shapes.json``), keyed by the config file's bytes, this module's source and
transformers' version: the first ``AutoConfig`` call of a process imports much of transformers
(7.8 s on an H200 host; the suite's setup_cache resolves nine models), a cached shape costs a
file read. Hub ids are not cached.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import BadInput, one_line
from .files import cached, remember

CONFIG_DIR = Path(__file__).parent / "configs"
SHAPES = "shapes.json"  # the cache file of resolved shapes (``files.cache_dir``)
DEFAULT_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"

# Spellings seen across MoE configs, most specific first. A value that is None or 0 does not
# count (several config classes default unrelated fields to 0 for dense variants).
EXPERT_FIELDS = (
    "num_local_experts",
    "n_routed_experts",
    "num_experts",
    "moe_num_experts",
    "num_routed_experts",
    "ffn_config.moe_num_experts",
)
TOPK_FIELDS = (
    "num_experts_per_tok",
    "moe_top_k",
    "num_selected_experts",
    "ffn_config.moe_top_k",
    "moe_k",
    "top_k",
)
HIDDEN_FIELDS = ("hidden_size", "d_model", "n_embd", "dim")


# Activation dtypes a config may name (torch's floating names; the kernels take the first three).
ACTIVATION_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}  # bytes of one element
ACTIVATION_DTYPES = tuple(ACTIVATION_BYTES)


@dataclass(frozen=True)
class MoEShape:
    """What the permute/unpermute kernels see of a model."""

    model: str
    num_experts: int
    topk: int
    hidden_size: int
    dtype: str  # torch dtype name of the activations, e.g. "bfloat16"
    architecture: str
    source: str  # "snapshot", "local" or "hub"

    def summary(self) -> dict[str, Any]:
        """The fields `moebench info --json` prints."""
        d = asdict(self)
        return {k: d[k] for k in ("model", "num_experts", "topk", "hidden_size", "dtype")}


def shipped_models() -> list[str]:
    """Hub ids of the config snapshots shipped with the package."""
    return sorted(
        f"{p.parent.parent.name}/{p.parent.name}" for p in CONFIG_DIR.glob("*/*/config.json")
    )


def _snapshot_dir(model: str) -> Path | None:
    wanted = model.strip().lower()
    for hub_id in shipped_models():
        if wanted in (hub_id.lower(), hub_id.split("/", 1)[1].lower()):
            return CONFIG_DIR / hub_id
    return None


def _lookup(config: Any, fields: tuple[str, ...]) -> Any:
    for field in fields:
        value: Any = config
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
            if value is None:
                break
        if value not in (None, 0):
            return value
    return None


def shape_from_config(config: Any, model: str, source: str) -> MoEShape:
    """Read an MoE shape from a transformers config object, naming any missing field."""
    arch = (getattr(config, "architectures", None) or [getattr(config, "model_type", "?")])[0]
    candidates = [config.get_text_config()] if hasattr(config, "get_text_config") else []
    candidates.append(config)
    found: dict[str, Any] = {}
    for name, fields in (
        ("expert count", EXPERT_FIELDS),
        ("top-k", TOPK_FIELDS),
        ("hidden size", HIDDEN_FIELDS),
    ):
        value = next((v for c in candidates if (v := _lookup(c, fields)) is not None), None)
        if value is None:
            raise BadInput(
                f"{model} ({arch}) is not a supported MoE config: no {name} field "
                f"(looked for {', '.join(fields)})"
            )
        try:
            found[name] = int(value)
        except (TypeError, ValueError):
            found[name] = 0
        if found[name] < 1 or found[name] != value:
            raise BadInput(f"{model} ({arch}): the {name} must be a positive integer, got {value!r}")
    dtype = None
    for c in candidates:
        dtype = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
        if dtype is not None:
            break
    dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else "bfloat16"
    if dtype_name not in ACTIVATION_DTYPES:
        raise BadInput(f"{model} ({arch}): activation dtype {dtype_name!r} is not one moebench times "
                       f"(one of {', '.join(ACTIVATION_DTYPES)})")
    if found["top-k"] > found["expert count"]:
        raise BadInput(
            f"{model}: top-k {found['top-k']} exceeds the expert count {found['expert count']}"
        )
    return MoEShape(
        model=model,
        num_experts=found["expert count"],
        topk=found["top-k"],
        hidden_size=found["hidden size"],
        dtype=dtype_name,
        architecture=str(arch),
        source=source,
    )


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None. huggingface_hub retries a failed connection with
    back-off for ~25 s; one quick TCP probe turns an offline machine into an immediate answer."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    host = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=timeout_s).close()
    except OSError as exc:
        return f"{host.hostname}: {exc.strerror or exc}"
    return None


@functools.cache
def _reader() -> bytes:
    """How a config becomes a shape: this module's source and the transformers that parses it."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        version = ""
    return Path(__file__).read_bytes() + version.encode()


def _shape_key(config_json: Path, name: str, source: str, trust_remote_code: bool) -> str:
    """What a cached shape depends on: the config's bytes and how it is read."""
    h = hashlib.sha256(config_json.read_bytes())
    h.update(_reader())
    h.update(f"|{name}|{source}|{trust_remote_code}".encode())
    return h.hexdigest()


def _locate(model: str) -> tuple[str, str, str]:
    """Where ``model``'s config is, where from ("local", "snapshot" or "hub"), and the name its
    shape carries."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput(f"{model} is a directory without config.json")
        return str(path), "local", model
    if (snapshot := _snapshot_dir(model)) is not None:
        return str(snapshot), "snapshot", f"{snapshot.parent.name}/{snapshot.name}"
    return model, "hub", model


def resolve(model: str, trust_remote_code: bool = False) -> MoEShape:
    """Resolve ``model`` (local dir, shipped snapshot or hub id) to its MoE shape.

    Order: a local directory holding config.json; a shipped snapshot (never touches the
    network); the hub, with short timeouts so an offline machine fails fast. Shapes read from a
    file are cached (see the module docstring).
    """
    location, source, name = _locate(model)
    key = None if source == "hub" else _shape_key(Path(location) / "config.json", name, source, trust_remote_code)
    if key is not None and (entry := cached(SHAPES).get(key)) is not None:
        try:
            return MoEShape(**entry)
        except TypeError:  # an entry of another layout: resolve again
            pass
    shape = _resolve(location, source, name, trust_remote_code)
    if key is not None:
        remember(SHAPES, key, asdict(shape))
    return shape


def _resolve(location: str, source: str, model: str, trust_remote_code: bool) -> MoEShape:
    """``resolve`` through transformers' ``AutoConfig``."""
    # Set before transformers pulls in huggingface_hub, which reads them once at import.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # deprecation chatter about config fields is not ours to fix

    if source == "hub" and (why := _hub_unreachable()) is not None:
        raise BadInput(
            f"unknown model {model!r}: not a local directory with config.json, not a shipped "
            f"snapshot, and the Hugging Face hub is unreachable ({why}). "
            f"Shipped: {', '.join(shipped_models())}"
        )
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError variously
        reason = one_line(exc)
        if source == "hub":
            raise BadInput(
                f"unknown model {model!r}: not a local directory with config.json, not a "
                f"shipped snapshot, and the Hugging Face hub lookup failed ({reason}). "
                f"Shipped: {', '.join(shipped_models())}"
            ) from None
        hint = "" if trust_remote_code else " (custom code needs --trust-remote-code)"
        raise BadInput(f"cannot load the config of {model}: {reason}{hint}") from None
    return shape_from_config(config, model, source)
