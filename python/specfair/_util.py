"""Leaf helpers of the specfair layer: devices, atomic files, output directories, option
parsing and argument checks.  Nothing here knows about models, corpora or kernels."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def is_int(x) -> bool:
    """A Python int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def check_positive_int(name: str, value, error: type[Exception] = ValueError, minimum: int = 1) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if not is_int(value) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise error(f"{name} must be {what}, got {value!r}")


def check_fields(cls, d: dict, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the keys of ``d`` that are not fields of the dataclass ``cls``
    (a saved config from another version, or a typo)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise error(f"unknown config field(s) {unknown}")


def resolve_device(name, error: type[Exception] = ValueError) -> torch.device:
    """``torch.device`` for ``name`` ("cpu", "cuda", "cuda:N" or "auto": CUDA when available),
    raising ``error`` with a message that names the device when it cannot be used here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise error(f"device {name!r} is not a torch device: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise error(f"device {name!r} was asked for, but no CUDA GPU is available "
                        "(torch.cuda.is_available() is False); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise error(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise error(f"device {name!r}: only cpu and cuda are supported")
    return dev


def status_printer(enabled: bool = True) -> Callable[..., None]:
    """A ``say(*parts)`` for progress notes: printed to stderr (flushed) when ``enabled``,
    dropped otherwise."""
    if not enabled:
        return lambda *parts: None
    return lambda *parts: print(*parts, file=sys.stderr, flush=True)


def atomic_write(path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write a file all at once or not at all: ``write(f)`` fills a temporary file in the same
    directory, which is flushed, fsync'd and renamed over ``path``; on any error the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)   # mkstemp makes 0600; give the usual permissions
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text(path, text: str) -> None:
    """``atomic_write`` of a string (UTF-8)."""
    atomic_write(path, lambda f: f.write(text))


def json_safe(o):
    """``o`` with every non-finite float (NaN, inf) as None, so that it is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def write_json(path, obj: Any) -> None:
    """``atomic_write`` of ``obj`` as indented JSON (non-ASCII kept as is)."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_out_dir(out, error: type[Exception] = ValueError) -> Path:
    """Create ``out`` if needed and check that files can be written in it, before any work;
    raises ``error`` naming the directory otherwise."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise error(f"output directory {str(p)!r} exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise error(f"output directory {str(p)!r} is not writable: {e.strerror or e}") from None
    return p


def parse_key_value(text: str, error: type[Exception] = ValueError) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(key, value)``: ``true``/``false`` (any case) become bools and
    integers become ints; everything else stays a string.  The one parser of every
    ``--corpus-option`` / ``--option`` flag."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise error(f"expected KEY=VALUE, got {text!r}")
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if re.fullmatch(r"-?\d+", value):
        return key, int(value)
    return key, value
