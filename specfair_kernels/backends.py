"""Which backends can run here, and which one a call uses.

Nothing in this module raises at import: a missing compiler, C++ build or Triton only
makes that backend unavailable, with the reason kept for `python -m specfair_kernels.env`.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("triton", "cpp", "torch")
OPS = ("verify", "token_divergence")
IMPLEMENTS = {
    "triton": ("verify", "token_divergence"),  # ops/verify.py, ops/divergence.py
    "cpp": ("verify", "token_divergence"),  # csrc/verify.cpp, csrc/divergence.cpp
    "torch": ("verify", "token_divergence"),  # reference.py
}
"""Which ops each backend implements (`api.verify`, `api.token_divergence`)."""
ENV_VAR = "SPECFAIR_BACKEND"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def load_cpp_extension():
    """(the compiled `_C` module, None), or (None, why it does not import); loaded once."""
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
    return load_cpp_extension()[0]


def cpp_op(name: str):
    """``torch.ops.specfair_kernels.<name>``, which `_C` registers when it loads, or None."""
    if cpp_extension() is None:
        return None
    try:
        return getattr(torch.ops.specfair_kernels, name)
    except (AttributeError, RuntimeError):  # not registered: _C was built from older sources
        return None


def _cpp_lacks(op: str) -> str | None:
    """Why the loaded `_C` has no kernel for `op`, or None if it has one."""
    has = hasattr(cpp_extension(), "verify") if op == "verify" else cpp_op(op) is not None
    if has:
        return None
    return (f"the built specfair_kernels._C has no {op} kernel (built from older csrc/; rebuild it with "
            "`python setup.py build_ext --inplace`)")


def _check_op(op):
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, OPS))}; got {op!r}")


def unavailable_reason(backend: str, device: torch.device, op: str | None = None) -> str | None:
    """None if `backend` can run `op` (every op in `OPS` if None) on `device`, else why not."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if op is not None:
        _check_op(op)
        if op not in IMPLEMENTS[backend]:
            return f"the {backend} backend does not implement {op}"
    if backend == "torch":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ backend runs on the CPU only, tensors are on {device}"
        err = load_cpp_extension()[1]
        if err:
            return err
        for name in OPS if op is None else (op,):
            why = _cpp_lacks(name)
            if why:
                return why
        return None
    if backend == "triton":
        err = _triton_module()[1]
        if err:
            return err
        if device.type == "cpu" and not interpreting():
            return "Triton on CPU tensors needs TRITON_INTERPRET=1 (the interpreter)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton does not run on {device.type} tensors"
    return None


def select(op: str, backend: str, device: torch.device) -> str:
    """The backend that runs `op` for this call: ``backend`` ('auto' or a name; SPECFAIR_BACKEND
    overrides 'auto') on ``device``.  'auto' takes Triton on CUDA, else C++, else torch."""
    _check_op(op)
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
            if unavailable_reason(name, device, op) is None:
                return name
        return "torch"
    why = unavailable_reason(requested, device, op)
    if why is not None:
        source = f"{ENV_VAR}={requested!r}" if backend == "auto" else f"backend={requested!r}"
        usable = [name for name in BACKENDS if unavailable_reason(name, device, op) is None]
        raise RuntimeError(f"{source} was requested for {op} but is unavailable: {why} "
                           f"(usable for {op} on {device.type}: {', '.join(usable)})")
    return requested


def available(device: torch.device | str = "cpu", op: str | None = None) -> dict[str, str | None]:
    """{backend: None if it can run `op` (every op if None) on `device`, else the reason}."""
    device = torch.device(device)
    return {name: unavailable_reason(name, device, op) for name in BACKENDS}
