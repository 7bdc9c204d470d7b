"""Which backends can run here, and which one a call uses.

Nothing in this module raises at import: a missing compiler, C++ build or Triton only
makes that backend unavailable, with the reason kept for `python -m specfair_kernels.env`.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("triton", "cpp", "torch")
ENV_VAR = "SPECFAIR_BACKEND"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cpp_module():
    try:
        from . import _C  # built by setup.py from csrc/
    except Exception as exc:  # ImportError, or an ABI mismatch raised as OSError
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


@functools.lru_cache(maxsize=None)
def _triton_module():
    try:
        import triton  # noqa: F401

        from .ops import divergence as _ops_divergence  # noqa: F401
        from .ops import verify as _ops_verify  # noqa: F401
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return _ops_verify, None


def cpp_extension():
    """The compiled `_C` module, or None."""
    return _cpp_module()[0]


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on `device`, else why not."""
    if backend == "torch":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ backend runs on the CPU only, tensors are on {device}"
        return _cpp_module()[1]
    if backend == "triton":
        err = _triton_module()[1]
        if err:
            return err
        if device.type == "cpu" and not interpreting():
            return "Triton on CPU tensors needs TRITON_INTERPRET=1 (the interpreter)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton does not run on {device.type} tensors"
        return None
    raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")


def select(backend: str, device: torch.device) -> str:
    """Resolve ``backend`` ('auto' or a name; SPECFAIR_BACKEND overrides 'auto') for ``device``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    requested = backend
    if backend == "auto":
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
    if requested not in ("auto",) + BACKENDS:
        source = f"the environment variable {ENV_VAR}" if backend == "auto" else "backend"
        raise ValueError(f"{source} must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {requested!r}")
    if requested == "auto":
        order = ("triton", "torch") if device.type == "cuda" else ("cpp", "torch")
        for name in order:
            if unavailable_reason(name, device) is None:
                return name
        return "torch"
    why = unavailable_reason(requested, device)
    if why is not None:
        source = f"{ENV_VAR}={requested!r}" if backend == "auto" else f"backend={requested!r}"
        raise RuntimeError(f"{source} was requested but is unavailable: {why}")
    return requested


def available(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """{backend: None if usable on `device`, else the reason}."""
    device = torch.device(device)
    return {name: unavailable_reason(name, device) for name in BACKENDS}
