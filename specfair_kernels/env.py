"""`python -m specfair_kernels.env`: versions, devices and which backends are usable (and why not)."""
from __future__ import annotations

import os
import platform
import sys


def report() -> str:
    import torch

    import specfair_kernels as sk

    from .backends import ENV_VAR, OPS, cpp_op, interpreting

    lines = [f"specfair_kernels {sk.__version__}", f"python {sys.version.split()[0]} ({platform.platform()})",
             f"torch {torch.__version__}"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}" + (" (TRITON_INTERPRET=1)" if interpreting() else ""))
    except Exception as exc:
        lines.append(f"triton: not importable ({type(exc).__name__})")
    lines.append(f"{ENV_VAR}={os.environ.get(ENV_VAR, '(unset)')}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"cuda: {torch.cuda.get_device_name()} (torch CUDA {torch.version.cuda})")
    else:
        lines.append("cuda: not available")
    for dev in devices:
        for op in OPS:
            for name, why in sk.available_backends(dev, op).items():
                lines.append(f"  {dev:<5} {op:<17} {name:<7} {'usable' if why is None else 'unavailable: ' + why}")
    isa = cpp_op("cpu_isa")
    if isa is not None:
        lines.append(f"C++ token_divergence vector ISA: {isa()} (SPECFAIR_CPU_ISA=baseline|avx2 caps it)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
