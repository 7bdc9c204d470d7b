"""The thin Python layer over specfair_kernels: corpus, default pair, generator, audit, s-CDF.

Modules, leaves first (each imports only modules above it):
``_util`` (devices, atomic files, options) and ``distributed`` (torchrun ranks, sums, shards) -
``gguf_cache`` (dense copies of GGUF files) - ``models`` (the one loader) - ``decoding`` (cache,
prompts, sampling) - ``costs`` (draft length, measured step costs) - ``ngram`` (prompt-lookup
drafts) - ``generator`` - ``baseline`` (verifier alone, measured speed-up); ``corpus_formats`` -
``corpus_sources`` - ``corpus``; ``spread`` (variances, ratios, bootstraps: the home of
"unfairness"); ``teacher_forced``; ``training`` (window sampler, LR schedule, fingerprints);
``model_card`` - ``train_pair``; ``scdf_config`` - ``scdf`` - ``scdf_compare``;
``audit_drafting`` - ``audit_report`` - ``audit``; ``cli`` (every argparse) last.
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# The generator's names at the top level, imported on first use so that `import specfair`
# stays light (transformers is loaded only when a model is).
_LAZY = {"load_pair": "models", "SpeculativeGenerator": "generator", "generate_verifier_only": "baseline",
         "measure_speedup": "baseline", "GenerationOutput": "decoding"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'specfair' has no attribute {name!r}")

#: The shipped drafter/verifier pair (``verifier/``, ``drafter/``, ``pair_report.json``,
#: ``train_pair_config.json``), trained by ``specfair train-pair --preset default``.
DEFAULT_PAIR_DIR = Path(__file__).resolve().parent / "assets" / "default-pair"


def default_pair_path(role: str | None = None) -> Path:
    """Directory of the shipped pair, or of one of its models (``role`` = ``"verifier"`` or
    ``"drafter"``), for ``from_pretrained``.  Raises FileNotFoundError with the fix when the
    files are missing (an install that left out the package data)."""
    if role not in (None, "verifier", "drafter"):
        raise ValueError(f"role must be None, 'verifier' or 'drafter', got {role!r}")
    path = DEFAULT_PAIR_DIR if role is None else DEFAULT_PAIR_DIR / role
    if not (DEFAULT_PAIR_DIR / "verifier" / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the shipped default pair is missing under {DEFAULT_PAIR_DIR}; reinstall the package "
            "from the repository (pip install --no-build-isolation -e .), or train one with "
            "`specfair train-pair --out DIR`")
    return path
