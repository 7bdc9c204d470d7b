"""Shared test configuration: which backends run, on which device, and how.

* Without a GPU, TRITON_INTERPRET=1 is set *before* anything imports triton, so the
  Triton kernels run (slowly) in the interpreter on CPU tensors.
* ``@pytest.mark.cuda`` tests are skipped when no GPU is present.
* Backends are discovered from ``specfair_kernels.available_backends(device)``: the
  suite runs with only the torch reference, and runs the C++ and Triton backends
  wherever they import.

Fixtures that parametrize a test (via ``pytest_generate_tests``):

``any_backend``   every usable (backend, device) pair, the Triton interpreter included:
                  tests using it must keep shapes tiny when ``any_backend.interpreted``
                  (B <= 4, K <= 3, V <= 64, few calls).
``cheap_backend`` the pairs that are fast enough for heavy statistical tests: torch,
                  C++ if built, Triton only on CUDA.
``other_backend`` every usable pair except the torch reference on the CPU, to compare
                  against ``torch`` on the same device.
``compiled_backend``    ``other_backend`` without the Triton interpreter.
``interpreted_backend`` Triton under TRITON_INTERPRET=1 on CPU tensors (if available).

Plain fixtures: ``backends_for`` (the helper function), ``all_backends``,
``cheap_backends`` (lists of ``Backend``) and ``device`` ("cuda" if present, else "cpu").
"""
from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Must precede every `import triton` (specfair_kernels imports it lazily).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dataclasses  # noqa: E402

import pytest  # noqa: E402

import specfair_kernels as sk  # noqa: E402

try:  # hypothesis profiles: "ci" is derandomized (HYPOTHESIS_PROFILE=ci)
    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("default", **_common)
    settings.register_profile("ci", derandomize=True, print_blob=True, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # pragma: no cover
    pass

DEVICES = ("cpu", "cuda") if HAS_CUDA else ("cpu",)


def backends_for(device) -> list[str]:
    """Names of the backends usable on `device` right now (torch is always among them)."""
    return [name for name, why in sk.available_backends(device).items() if why is None]


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend name and the device its tensors live on."""

    name: str
    device: str

    @property
    def interpreted(self) -> bool:
        """Triton on CPU tensors: the interpreter, only for tiny shapes and few calls."""
        return self.name == "triton" and self.device == "cpu"

    def __str__(self) -> str:
        return f"{self.name}-{self.device}"


ALL_BACKENDS = [Backend(n, d) for d in DEVICES for n in backends_for(d)]
CHEAP_BACKENDS = [b for b in ALL_BACKENDS if not b.interpreted]
OTHER_BACKENDS = [b for b in ALL_BACKENDS if not (b.name == "torch" and b.device == "cpu")]
COMPILED_BACKENDS = [b for b in OTHER_BACKENDS if not b.interpreted]
INTERPRETED_BACKENDS = [b for b in ALL_BACKENDS if b.interpreted]


def _params(backs):
    return [pytest.param(b, id=str(b), marks=[pytest.mark.cuda] if b.device == "cuda" else [])
            for b in backs]


def pytest_generate_tests(metafunc):
    for fixture, backs, why in (
        ("any_backend", ALL_BACKENDS, None),
        ("cheap_backend", CHEAP_BACKENDS, None),
        ("other_backend", OTHER_BACKENDS, "only the torch reference backend is available"),
        ("compiled_backend", COMPILED_BACKENDS, "no backend other than torch (and the Triton interpreter)"),
        ("interpreted_backend", INTERPRETED_BACKENDS, "the Triton interpreter is unavailable"),
    ):
        if fixture in metafunc.fixturenames:
            params = _params(backs)
            if not params:
                params = [pytest.param(None, id="none", marks=pytest.mark.skip(reason=why))]
            metafunc.parametrize(fixture, params)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session):
    why = sk.available_backends("cpu")["torch"]
    if why is not None:
        raise pytest.UsageError(f"the torch reference backend must always be available: {why}")


def pytest_report_header(config):
    lines = [f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}, cuda={HAS_CUDA}"]
    for dev in DEVICES:
        for name, why in sk.available_backends(dev).items():
            lines.append(f"backend {name:6s} on {dev}: {'available' if why is None else 'unavailable: ' + why}")
    return lines


@pytest.fixture(scope="session", autouse=True)
def _torch_backend_exists():
    assert "torch" in backends_for("cpu"), "the torch reference backend must always be available"


@pytest.fixture(scope="session", name="backends_for")
def _backends_for_fixture():
    return backends_for


@pytest.fixture(scope="session")
def all_backends() -> list[Backend]:
    return list(ALL_BACKENDS)


@pytest.fixture(scope="session")
def cheap_backends() -> list[Backend]:
    return list(CHEAP_BACKENDS)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"
