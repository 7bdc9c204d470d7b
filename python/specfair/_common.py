"""Small helpers shared by the specfair layer (device names, tokenizer backends)."""
from __future__ import annotations

import copy


def resolve_device(name, error: type[Exception] = ValueError):
    """``torch.device`` for ``name`` ("cpu", "cuda", "cuda:N" or "auto": CUDA when available),
    raising ``error`` with a message that names the device when it cannot be used here."""
    import torch

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


def plain_backend(tokenizer):
    """A copy of a fast tokenizer's backend with padding and truncation off.  A
    ``transformers`` tokenizer once called with ``padding=True`` keeps padding on in its
    backend, which would pad every paragraph of an ``encode_batch``."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return backend


def atomic_write(path, write, binary: bool = False) -> None:
    """Write a file all at once or not at all: ``write(f)`` fills a temporary file in the same
    directory, which is flushed, fsync'd and renamed over ``path``; on any error the
    temporary file is removed and ``path`` is untouched."""
    import os
    import tempfile
    from pathlib import Path

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
