"""Every Triton kernel compiles for a real GPU (sm_90), ahead of time and without one.

The interpreter that runs the kernels on the CPU in CI is more permissive than the
compiler (it accepted annotated globals that the compiler rejects), so CI also compiles
each kernel variant to a cubin with Triton's bundled ptxas and checks nothing spills.
The compilation runs in a subprocess because this test session interprets the kernels.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")


def _ptxas_available():
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.path.exists(get_ptxas(90).path)
    except Exception:
        return False


@pytest.mark.skipif(not _ptxas_available(), reason="Triton's CUDA backend/ptxas is not available")
def test_every_kernel_variant_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parents[1] / "compile_kernels.py"
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "no register spills" in res.stdout
