"""Load a benchmark script (a file, not a package module) by its path, for tests of its functions."""
import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """``benchmarks/<name>.py`` as a fresh module (``_test_<name>_module``)."""
    spec = importlib.util.spec_from_file_location(f"_test_{name}_module", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
