"""The code passes ruff with the rules in pyproject.toml, so a ``# noqa`` marker means a
rule was considered and waived there, not that nothing checks it."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    pytest.importorskip("ruff")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "python", "specfair_kernels", "tests",
                        "benchmarks", "setup.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
