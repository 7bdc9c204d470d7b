"""The one loader of drafter/verifier pairs (Hugging Face names, local directories or GGUF
files, the shipped default pair when none is named) and the facts every caller needs about a
loaded model: its device, output vocabulary, context length and parameter count."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import default_pair_path, gguf_cache


def model_device(model) -> torch.device:
    """Where the model's inputs go: its input embedding's device (the first layer of a model
    spread over devices by a ``device_map``), else its first parameter's."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    return next(model.parameters()).device


def output_vocab_size(model) -> int:
    """Rows of the output embedding (the logits' last dimension), padding included."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def context_length(model) -> int | None:
    """Positions the model can attend over (``max_position_embeddings`` or an alias), or None."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _source(name: str, value, gguf_file):
    """-> (path or hub name for from_pretrained, gguf_file or None)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a Hugging Face model name, a directory, a .gguf file or a loaded "
                        f"model, got {type(value).__name__}")
    text = os.fspath(value)
    if not text:
        raise ValueError(f"{name} must not be empty")
    if gguf_file is None and text.lower().endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: GGUF file {text} does not exist")
        return str(path.parent), path.name
    if gguf_file is not None:
        if not isinstance(gguf_file, (str, os.PathLike)):
            raise TypeError(f"{name}_gguf_file must be a file name, got {type(gguf_file).__name__}")
        gguf_file = os.fspath(gguf_file)
        if Path(text).is_dir() and not (Path(text) / gguf_file).is_file():
            raise FileNotFoundError(f"{name}_gguf_file: {gguf_file} is not in the directory {text}")
    return text, gguf_file


def _need_gguf(name: str, gguf_file):
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ImportError(f"{name}: loading the GGUF file {gguf_file} needs the `gguf` package, which is not "
                          "installed; install it with  pip install 'gguf>=0.10.0'")


def _dtype(dtype):
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be None, 'auto', a torch.dtype or its name (e.g. 'bfloat16'), got {dtype!r}")


def check_tokenizers(drafter_tokenizer, verifier_tokenizer, drafter=None, verifier=None):
    """Raise ValueError unless both tokenizers have the identical vocabulary (token -> id) and
    each model's output embedding covers it (extra rows are padding).

    Special added tokens past the embedding are allowed: transformers appends GPT-2's
    ``<|endoftext|>`` to a GGUF "gpt2" tokenizer whose file lacks it, one id past the model's
    rows.  Such a token can never be sampled (logits stop at the embedding), and a prompt
    holding it is refused by the generator's token-range check."""
    dv, vv = drafter_tokenizer.get_vocab(), verifier_tokenizer.get_vocab()
    if dv != vv:
        only_d = sorted(set(dv) - set(vv))
        only_v = sorted(set(vv) - set(dv))
        moved = sorted(t for t in set(dv) & set(vv) if dv[t] != vv[t])
        parts = [f"the drafter's has {len(dv)} tokens, the verifier's {len(vv)}"]
        if only_d:
            parts.append(f"{len(only_d)} only in the drafter's (e.g. {only_d[:3]})")
        if only_v:
            parts.append(f"{len(only_v)} only in the verifier's (e.g. {only_v[:3]})")
        if moved:
            parts.append(f"{len(moved)} with different ids (e.g. {moved[0]!r}: {dv[moved[0]]} vs {vv[moved[0]]})")
        raise ValueError("drafter and verifier tokenizers differ; speculative decoding needs one shared "
                         "vocabulary: " + "; ".join(parts))
    special = {i for i, t in getattr(verifier_tokenizer, "added_tokens_decoder", {}).items() if t.special}
    for name, model in (("drafter", drafter), ("verifier", verifier)):
        if model is None:
            continue
        rows = output_vocab_size(model)
        uncovered = sorted(t for t, i in vv.items() if i >= rows and i not in special)
        if uncovered:
            raise ValueError(f"the {name}'s output embedding has {rows} rows but the tokenizer has {len(vv)} "
                             f"tokens ({len(uncovered)} past the embedding, e.g. {uncovered[:3]}); the model does "
                             "not cover the vocabulary")


def default_pair_sources(drafter=None, verifier=None) -> tuple[str, str]:
    """(drafter, verifier) as given, or the shipped default pair's directories when both are
    None.  Giving only one of them is an error: a pair is two models of one tokenizer."""
    if (drafter is None) != (verifier is None):
        raise ValueError("give both drafter and verifier, or neither (the shipped default pair)")
    if drafter is None:
        return str(default_pair_path("drafter")), str(default_pair_path("verifier"))
    return drafter, verifier


def load_pair(drafter=None, verifier=None, device=None, dtype=None, *, drafter_gguf_file=None,
              verifier_gguf_file=None, tokenizer=None, trust_remote_code: bool = False, device_map=None,
              cache: bool = True, cache_dir=None, **from_pretrained_kwargs):
    """Load a drafter and a verifier and check that they share a tokenizer.

    Parameters
    ----------
    drafter, verifier : str or PathLike, or both None
        A Hugging Face hub name, a local directory (``save_pretrained`` layout), or a path
        to a ``.gguf`` file (the directory and ``gguf_file=`` are split off for you).
        Both None: the shipped default pair (`specfair.default_pair_path`).
    device : str or torch.device, optional
        Default "cuda" when available, else "cpu".  Both models go there.  Not with ``device_map``.
    device_map : "auto", a dict {module name: device} or another accelerate device map, optional
        Spread each model over the devices (accelerate's dispatch, for a verifier larger than
        one device) instead of moving it to ``device``.  Inputs go to the input embedding's
        device (`model_device`).
    dtype : torch.dtype, its name, or "auto", optional
        Passed to ``from_pretrained`` (default: the checkpoint's float32).
    drafter_gguf_file, verifier_gguf_file : str, optional
        GGUF file name inside the repository/directory (transformers' ``gguf_file=``);
        needs the ``gguf`` package.
    tokenizer : a loaded tokenizer, optional
        Skip loading the tokenizers; it is still checked against both models' sizes.
    cache : bool
        A local GGUF file is dequantised once and its dense copy (safetensors and tokenizer)
        kept in the cache (`specfair.gguf_cache`); later loads read that copy.  False: always
        dequantise the file, and write nothing.
    cache_dir : str or PathLike, optional
        The GGUF cache directory (default ``$SPECFAIR_CACHE/gguf`` or ``~/.cache/specfair/gguf``).
    **from_pretrained_kwargs
        Passed to both ``from_pretrained`` calls (e.g. ``revision``, ``attn_implementation``).

    Returns
    -------
    (drafter_model, verifier_model, tokenizer)
        Models in eval mode on ``device``; the verifier's tokenizer.

    Raises
    ------
    ValueError
        If the two tokenizers' vocabularies differ (an embedding padded past the
        tokenizer is fine), or a model's embedding is smaller than the vocabulary.
    ImportError
        If a GGUF file is given and the ``gguf`` package is missing.
    """
    drafter, verifier = default_pair_sources(drafter, verifier)
    d_src, d_gguf = _source("drafter", drafter, drafter_gguf_file)
    v_src, v_gguf = _source("verifier", verifier, verifier_gguf_file)
    _need_gguf("drafter", d_gguf)
    _need_gguf("verifier", v_gguf)
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {type(cache).__name__}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a directory path, got {type(cache_dir).__name__}")
    if device_map is not None and device is not None:
        raise ValueError("give device or device_map, not both (device_map places the models itself)")
    if device_map is not None and not isinstance(device_map, (str, dict)):
        raise TypeError(f"device_map must be 'auto' (or another accelerate strategy name) or a dict "
                        f"{{module: device}}, got {type(device_map).__name__}")
    kw = dict(from_pretrained_kwargs, trust_remote_code=trust_remote_code)
    dtype = _dtype(dtype)
    if dtype is not None:
        kw["dtype"] = dtype
    if device_map is None:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        kw["device_map"], device = device_map, None
    cache_dir = cache_dir if cache else False
    d_model, d_dir = _load_model(d_src, d_gguf, device, kw, cache_dir)
    v_model, v_dir = _load_model(v_src, v_gguf, device, kw, cache_dir)
    if tokenizer is None:
        # a cached GGUF file's tokenizer is read from its dense copy
        v_tok = _load_tokenizer("verifier", *((v_dir, None) if v_dir else (v_src, v_gguf)), trust_remote_code)
        d_tok = _load_tokenizer("drafter", *((d_dir, None) if d_dir else (d_src, d_gguf)), trust_remote_code)
        check_tokenizers(d_tok, v_tok, d_model, v_model)
        tokenizer = v_tok
    else:
        check_tokenizers(tokenizer, tokenizer, d_model, v_model)
    return d_model, v_model, tokenizer


def _load_model(src, gguf, device, kw, cache_dir):
    """-> (model in eval mode, the GGUF cache entry it was read from or None).  ``cache_dir``
    False: no cache; None: the default cache directory."""
    entry = None
    if gguf is not None and cache_dir is not False and (Path(src) / gguf).is_file():
        entry = gguf_cache_entry(Path(src) / gguf, cache_dir, kw)
    if entry is not None:
        model = AutoModelForCausalLM.from_pretrained(entry, **kw)
    elif gguf is not None:
        model = dequantise_gguf(src, gguf, kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(src, **kw)
    if device is not None:
        model = model.to(device)
    return model.eval(), entry


def dequantise_gguf(src, gguf, kw):
    """The model of a GGUF file, dequantised by transformers into plain float weights."""
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, **kw)
    _forget_gguf_quantizer(model)
    return model


def gguf_cache_entry(path: Path, cache_dir, kw) -> Path:
    """The dense copy of the GGUF file ``path`` in the cache (`specfair.gguf_cache`), made now
    (dequantised at the file's own precision, with its tokenizer) if there is none yet."""
    entry, found = gguf_cache.lookup(path, cache_dir)
    if found is not None:
        return found
    plain = {k: v for k, v in kw.items() if k not in ("dtype", "device_map")}
    model = dequantise_gguf(str(path.parent), path.name, plain)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name,
                                        trust_remote_code=kw.get("trust_remote_code", False))
    return gguf_cache.store(entry, model, tok, path)


def _forget_gguf_quantizer(model) -> None:
    """A GGUF model that transformers dequantised into plain float weights (every
    architecture without GGUF kernels, llama included) still carries the GGUF quantizer,
    which makes it refuse ``save_pretrained`` and training.  Its weights are ordinary
    tensors, so drop the quantizer; a model whose weights stayed in GGUF blocks keeps it."""
    if getattr(model, "hf_quantizer", None) is None:
        return
    if not all(p.is_floating_point() for p in model.parameters()):
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_tokenizer(name, src, gguf, trust_remote_code):
    kw = {"trust_remote_code": trust_remote_code}
    if gguf is not None:
        kw["gguf_file"] = gguf
    try:
        return AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not load the {name}'s tokenizer from {src}: {exc}; pass tokenizer= to "
                         "skip the check only if you know both models use it") from exc
