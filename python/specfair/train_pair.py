"""Train a drafter/verifier pair of small Llama models on a multilingual corpus.

``train_pair(TrainPairConfig(...))``:

1. trains a shared byte-level BPE tokenizer (the ``tokenizers`` library) on the
   training split of every language, and wraps it as a ``transformers`` fast tokenizer
   (``tokenizer.json`` + ``tokenizer_config.json``; special tokens ``<s>`` bos, ``</s>``
   eos, ``<pad>`` pad, ``<unk>`` unk);
2. builds two ``LlamaForCausalLM`` models from ``LlamaConfig`` with that vocabulary: a
   *verifier* and a *drafter* several times smaller;
3. trains each with a plain nanoGPT-shaped loop (AdamW, linear warm-up then cosine
   decay, gradient clipping), sampling fixed-length windows from per-language token
   streams according to a *mixture*: balanced for the verifier, skewed for the drafter
   (some languages under-represented, as real drafter data is);
4. saves both with ``save_pretrained`` (safetensors) plus the tokenizer under
   ``<out>/verifier`` and ``<out>/drafter``, the resolved config as
   ``<out>/train_pair_config.json`` and a model card ``README.md`` per model;
   With ``reuse_verifier`` set, steps 1-2 load the tokenizer and verifier of an existing
   pair instead, and only the drafter is trained;
5. measures on the held-out split, teacher-forced, per language: each model's
   perplexity, and between the two models the expected acceptance
   ``alpha = sum_x min(p(x), q(x))`` at temperature 1 and ``KL(p || q)`` (p the
   verifier, q the drafter) with :func:`specfair_kernels.token_divergence`; written to
   the drafter's card and to ``<out>/pair_report.json`` and returned.

Same config and seed give the same tokenizer files and the same weights on the CPU.
Only ``python/specfair`` imports ``transformers``; ``specfair_kernels`` never does.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import corpus as corpus_mod
from . import teacher_forced
from ._util import check_fields, check_out_dir, resolve_device, write_json, write_text
from .model_card import model_card
from .models import count_parameters
from .pair_training import DRAFTER_INITS, DRAFTER_OBJECTIVES, init_from, train_model
from .training import WindowSampler

__all__ = [
    "DEFAULT_UNDER_REPRESENTED",
    "PRESETS",
    "ModelSize",
    "TrainPairConfig",
    "TrainPairError",
    "evaluate_pair",
    "hf_tokenizer",
    "preset",
    "resolve_mixtures",
    "train_pair",
    "train_tokenizer",
]

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
BYTE_ALPHABET = 256
# Languages of the default corpus that the default drafter mixture under-represents
# (weight `under_weight`, 1/10 of the others): several scripts, as in real drafter data.
DEFAULT_UNDER_REPRESENTED = ("el", "ja", "ko", "ru", "vi")


class TrainPairError(ValueError):
    """Bad configuration or unusable output directory (message says what to change)."""


@dataclass
class ModelSize:
    """Llama shape.  ``kv_heads=None`` means multi-head attention (= ``heads``)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    kv_heads: int | None = None

    def validate(self, name: str) -> None:
        for f in ("hidden", "layers", "heads", "intermediate"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TrainPairError(f"{name}.{f} must be a positive int, got {v!r}")
        if self.hidden % self.heads:
            raise TrainPairError(f"{name}.hidden={self.hidden} is not divisible by heads={self.heads}")
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            raise TrainPairError(f"{name}.heads={self.heads} is not divisible by kv_heads={kv}")


@dataclass
class TrainPairConfig:
    """Everything that determines the pair (saved as ``train_pair_config.json``)."""

    out_dir: str = "specfair-pair"
    # --- data
    corpus_source: str = "default"              # a specfair.corpus source
    corpus_options: dict = field(default_factory=dict)   # the source's options (root=, path=, ...)
    languages: list[str] | None = None          # None: every language of the corpus
    heldout_fraction: float = 0.1
    corpus_seed: int = 0                        # the corpus split's seed
    max_items_per_task: int | None = None
    # --- tokenizer
    vocab_size: int = 4096
    min_frequency: int = 2
    # --- models (drafter several times smaller than the verifier)
    verifier: ModelSize = field(default_factory=lambda: ModelSize(256, 6, 8, 688))
    drafter: ModelSize = field(default_factory=lambda: ModelSize(128, 2, 4, 344))
    context_length: int = 256
    tie_embeddings: bool = True
    # --- training (the same recipe for both models)
    # default: 4000 x 16 x 256 = 16.4M tokens per model, ~8 epochs of the default corpus's
    # ~2.0M training tokens (vocab 4096); 3.4 min for the pair on an H100, ~3 h on a
    # 2-core CPU (1500 steps: held-out verifier perplexity 35 against 26 at 4000)
    steps: int = 4000                           # optimiser steps per model
    drafter_steps: int | None = None            # None: `steps`
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1                   # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    # --- mixtures: language -> sampling weight (normalised).  None: the defaults below.
    verifier_mixture: dict[str, float] | None = None    # None: balanced
    drafter_mixture: dict[str, float] | None = None     # None: skewed, see under_represented
    under_represented: list[str] = field(default_factory=lambda: list(DEFAULT_UNDER_REPRESENTED))
    under_weight: float = 0.1
    # --- evaluation and output
    eval_tokens_per_language: int = 16384       # held-out tokens per language (at most)
    eval_batch_size: int = 16
    save_dtype: str = "float32"                 # "float32" | "float16" | "bfloat16"
    device: str = "cpu"                         # "cpu" | "cuda" | "cuda:N" | "auto"
    bf16_autocast_on_cuda: bool = True
    progress: bool = True                       # tqdm bars
    # --- an existing pair's verifier/ directory: its tokenizer and verifier are loaded and
    # copied verbatim, and only the drafter is trained (``drafter_steps`` or ``steps``)
    reuse_verifier: str | None = None
    # --- the drafter's loss: "ce" (next token) or "distill" (KL(p || q) to the verifier), and
    # its start: "random", "verifier" (its embedding, first layers, norm, head) or a model
    # directory (see specfair.pair_training)
    drafter_objective: str = "ce"
    drafter_init: str = "random"

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainPairConfig":
        d = {k: v for k, v in d.items() if k != "resolved"}
        check_fields(cls, d, TrainPairError)
        for k in ("verifier", "drafter"):
            if isinstance(d.get(k), dict):
                d[k] = ModelSize(**d[k])
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def validate(self) -> None:
        self.verifier.validate("verifier")
        self.drafter.validate("drafter")
        if self.vocab_size < BYTE_ALPHABET + len(SPECIAL_TOKENS):
            raise TrainPairError(f"vocab_size must be >= {BYTE_ALPHABET + len(SPECIAL_TOKENS)} "
                                 f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {self.vocab_size}")
        for name in ("steps", "batch_size", "context_length", "eval_tokens_per_language", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TrainPairError(f"{name} must be a positive int, got {v!r}")
        if self.drafter_steps is not None and self.drafter_steps < 1:
            raise TrainPairError(f"drafter_steps must be a positive int or None, got {self.drafter_steps!r}")
        if not self.lr > 0:
            raise TrainPairError(f"lr must be > 0, got {self.lr}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise TrainPairError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}")
        if self.drafter_objective not in DRAFTER_OBJECTIVES:
            raise TrainPairError(f"drafter_objective must be one of {DRAFTER_OBJECTIVES}, "
                                 f"got {self.drafter_objective!r}")
        if not isinstance(self.drafter_init, str) or not self.drafter_init:
            raise TrainPairError(f"drafter_init must be one of {DRAFTER_INITS} or a model directory, "
                                 f"got {self.drafter_init!r}")
        if not 0 < self.under_weight:
            raise TrainPairError(f"under_weight must be > 0, got {self.under_weight}")


def _micro() -> TrainPairConfig:
    return TrainPairConfig(
        vocab_size=300, min_frequency=2,
        verifier=ModelSize(32, 2, 2, 64), drafter=ModelSize(16, 1, 2, 32),
        context_length=32, steps=4, batch_size=4, lr=1e-2, warmup_steps=1,
        eval_tokens_per_language=256, eval_batch_size=8, progress=False)


def _default() -> TrainPairConfig:
    return TrainPairConfig()


PRESETS = {"micro": _micro, "default": _default}


def preset(name: str, **overrides) -> TrainPairConfig:
    """A named preset (``micro``: seconds on a CPU, for tests; ``default``: the shipped
    pair), with fields overridden by keyword."""
    if name not in PRESETS:
        raise TrainPairError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TrainPairError(f"unknown config field {k!r}")
        setattr(cfg, k, v)
    return cfg


# ---------------------------------------------------------------------------- data
def resolve_mixtures(cfg: TrainPairConfig, languages: list[str]) -> tuple[dict, dict]:
    def check(name, mix):
        unknown = sorted(set(mix) - set(languages))
        missing = [l for l in languages if l not in mix]
        if unknown or missing:
            raise TrainPairError(f"{name} must give a weight to exactly the training languages "
                                 f"{languages}; unknown: {unknown}, missing: {missing}")
        if any(not (w >= 0 and math.isfinite(w)) for w in mix.values()) or sum(mix.values()) <= 0:
            raise TrainPairError(f"{name} weights must be finite, >= 0 and not all 0: {mix}")
        total = float(sum(mix.values()))
        return {l: float(mix[l]) / total for l in languages}

    ver = check("verifier_mixture", cfg.verifier_mixture or {l: 1.0 for l in languages})
    if cfg.drafter_mixture is not None:
        dra = check("drafter_mixture", cfg.drafter_mixture)
    else:
        low = set(cfg.under_represented)
        if not low & set(languages) or set(languages) <= low:
            warnings.warn(f"under_represented={sorted(low)} leaves the drafter mixture over "
                          f"{languages} balanced; set under_represented or drafter_mixture to skew it",
                          stacklevel=3)
        dra = check("drafter_mixture", {l: (cfg.under_weight if l in low else 1.0) for l in languages})
    return ver, dra


def _under_represented(mixture: dict[str, float]) -> list[str]:
    """Languages whose drafter weight is below half of the largest weight."""
    top = max(mixture.values())
    return [l for l, w in mixture.items() if w < 0.5 * top]


def train_tokenizer(texts, vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (deterministic for a
    given text order).  No normaliser: ``decode(encode(t)) == t`` for every string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"], byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [SPECIAL_TOKENS[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def hf_tokenizer(tok, context_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=context_length,
                                   clean_up_tokenization_spaces=False, padding_side="right",
                                   **SPECIAL_TOKENS)


# ---------------------------------------------------------------------------- models
def _llama_config(size: ModelSize, cfg: TrainPairConfig, hf_tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads or size.heads, max_position_embeddings=cfg.context_length,
        rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id, use_cache=True)


def _build_model(size: ModelSize, cfg: TrainPairConfig, hf_tok, seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(_llama_config(size, cfg, hf_tok))


# ---------------------------------------------------------------------------- evaluation
def evaluate_pair(verifier, drafter, streams, languages, cfg: TrainPairConfig, device) -> dict:
    """Per language, teacher-forced on held-out text: perplexity of each model, and the
    expected acceptance alpha = sum min(p, q) and KL(p || q) at temperature 1.

    A wrapper over :mod:`specfair.teacher_forced`: non-overlapping windows of
    ``cfg.context_length`` tokens, at most ``cfg.eval_tokens_per_language`` per language."""
    pad = verifier.config.pad_token_id
    if not any(len(streams[l]) > 1 for l in languages):
        raise TrainPairError("the held-out split has no text to evaluate on; raise heldout_fraction")
    windows = teacher_forced.windows_from_streams(streams, list(languages), cfg.context_length,
                                                  cfg.eval_tokens_per_language, pad)
    r = teacher_forced.evaluate(verifier, drafter, windows, temperature=1.0,
                                batch_size=cfg.eval_batch_size, device=device)
    return {"tokens": dict(r.tokens), "verifier_ppl": dict(r.verifier_ppl),
            "drafter_ppl": dict(r.drafter_ppl), "alpha": dict(r.alpha), "kl": dict(r.kl)}


# ---------------------------------------------------------------------------- main entry
def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def train_pair(config: TrainPairConfig) -> dict:
    """Train, save and evaluate the pair (see the module docstring); returns the report
    (also written to ``<out_dir>/pair_report.json``)."""
    cfg = config
    cfg.validate()
    device = resolve_device(cfg.device, TrainPairError)
    out = check_out_dir(cfg.out_dir, TrainPairError)
    t_start = time.perf_counter()

    # CorpusError / SourceNotAvailableError propagate with their own messages.
    corpus = corpus_mod.load_corpus(cfg.corpus_source, tasks=cfg.languages,
                                    heldout_fraction=cfg.heldout_fraction, seed=cfg.corpus_seed,
                                    max_items_per_task=cfg.max_items_per_task, **cfg.corpus_options)
    languages = corpus.task_names            # the requested order, duplicates dropped
    missing_train = [l for l in languages if not corpus.tasks[l].train]
    if missing_train:
        raise TrainPairError(f"no training text for language(s) {missing_train}")
    mixtures = dict(zip(("verifier", "drafter"), resolve_mixtures(cfg, languages)))

    if cfg.reuse_verifier is not None:
        hf_tok, reused, reused_info = load_verifier(cfg)
    else:
        # The tokenizer is trained on every language's training split, in a fixed order.
        texts = [t for l in languages for t in corpus.tasks[l].train]
        hf_tok = hf_tokenizer(train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency), cfg.context_length)
        reused, reused_info = None, None
    train_streams = teacher_forced.token_streams(hf_tok, {l: corpus.tasks[l].train for l in languages})
    held_streams = teacher_forced.token_streams(hf_tok, {l: corpus.tasks[l].heldout for l in languages})

    models, info = _train_models(cfg, hf_tok, train_streams, mixtures, device, reused)
    if reused is not None:
        info["verifier"] = reused_info
    ev = evaluate_pair(models["verifier"], models["drafter"], held_streams, languages, cfg, device)
    report = {
        "out_dir": str(out), "device": str(device), "languages": languages, "vocab_size": len(hf_tok),
        "mixtures": mixtures, "verifier": info["verifier"], "drafter": info["drafter"], "eval": ev,
        "acceptance": _acceptance(ev, languages, mixtures["drafter"]),
        "corpus": {"source": corpus.name, "options": corpus.options, "stats": corpus.stats()},
        "versions": _versions(),
    }
    _save(out, cfg, models, hf_tok, report)
    report["seconds_total"] = time.perf_counter() - t_start
    corpus_desc = (f"`specfair.corpus` source `{corpus.name}`"
                   + (f" with options {corpus.options}" if corpus.options else ""))
    for role in ("verifier", "drafter") if reused is None else ("drafter",):
        write_text(out / role / "README.md", model_card(role, cfg, report, corpus_desc))
    saved_cfg = cfg.to_dict()
    saved_cfg["resolved"] = {"languages": languages, "verifier_mixture": mixtures["verifier"],
                             "drafter_mixture": mixtures["drafter"]}
    write_json(out / "train_pair_config.json", saved_cfg)
    write_json(out / "pair_report.json", report)
    return report


def load_verifier(cfg: TrainPairConfig):
    """Tokenizer, verifier and report entry (the source pair's ``../pair_report.json`` one, or
    size and parameters; plus ``reused_from``) of ``cfg.reuse_verifier``; sets ``cfg.verifier``,
    ``vocab_size`` and ``context_length`` from it, so that the saved config is true."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    src = Path(cfg.reuse_verifier)
    if not (src / "config.json").is_file() or not (src / "tokenizer.json").is_file():
        raise TrainPairError(f"reuse_verifier {str(src)!r} is not a verifier directory "
                             "(config.json and tokenizer.json expected)")
    hf_tok = AutoTokenizer.from_pretrained(src)
    model = LlamaForCausalLM.from_pretrained(src, torch_dtype=torch.float32).eval()
    mc = model.config
    kv = mc.num_key_value_heads if mc.num_key_value_heads != mc.num_attention_heads else None
    cfg.verifier = ModelSize(mc.hidden_size, mc.num_hidden_layers, mc.num_attention_heads, mc.intermediate_size, kv)
    cfg.vocab_size, cfg.context_length = len(hf_tok), mc.max_position_embeddings
    info = {"parameters": count_parameters(model), "size": dataclasses.asdict(cfg.verifier)}
    src_report = src.parent / "pair_report.json"
    old = json.loads(src_report.read_text()).get("verifier") if src_report.is_file() else None
    if isinstance(old, dict):
        info = {k: v for k, v in old.items() if k not in ("path", "reused_from")}
    info["reused_from"] = str(src)
    return hf_tok, model, info


def _train_models(cfg: TrainPairConfig, hf_tok, train_streams, mixtures, device,
                  verifier=None) -> tuple[dict, dict]:
    """Build and train the verifier (unless one is given), then the drafter, each on its
    mixture; seeds are fixed per role so that the pair is reproducible.  The drafter starts
    from ``cfg.drafter_init`` and learns ``cfg.drafter_objective`` (`specfair.pair_training`)."""
    steps = {"verifier": cfg.steps, "drafter": cfg.drafter_steps or cfg.steps}
    sizes = {"verifier": cfg.verifier, "drafter": cfg.drafter}
    models, info = {}, {}
    if verifier is not None:
        models["verifier"] = verifier.to(device)
    for k, role in enumerate(("verifier", "drafter")):
        if role in models:
            continue
        model = _build_model(sizes[role], cfg, hf_tok, seed=cfg.seed * 1000 + 2 * k)
        teacher = None
        if role == "drafter":
            _init_drafter(model, cfg, models["verifier"])
            teacher = models["verifier"] if cfg.drafter_objective == "distill" else None
        langs = [l for l, w in mixtures[role].items() if w > 0]
        sampler = WindowSampler([train_streams[l] for l in langs], cfg.context_length,
                                seed=cfg.seed * 1000 + 2 * k + 1, names=langs, error=TrainPairError)
        probs = torch.tensor([mixtures[role][l] for l in langs], dtype=torch.float64)
        stats = train_model(role, model, sampler, probs, cfg, steps[role], device, teacher=teacher)
        models[role] = model
        info[role] = {"parameters": count_parameters(model), "size": dataclasses.asdict(sizes[role]), **stats}
        if role == "drafter":
            info[role]["init"] = cfg.drafter_init
    return models, info


def _init_drafter(model, cfg: TrainPairConfig, verifier) -> None:
    if cfg.drafter_init == "random":
        return
    if cfg.drafter_init == "verifier":
        init_from(model, verifier, "verifier", TrainPairError)
        return
    from transformers import LlamaForCausalLM

    src = Path(cfg.drafter_init)
    if not (src / "config.json").is_file():
        raise TrainPairError(f"drafter_init must be one of {DRAFTER_INITS} or a model directory "
                             f"(with config.json), got {cfg.drafter_init!r}")
    source = LlamaForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    if source.config.vocab_size != model.config.vocab_size:
        raise TrainPairError(f"drafter_init {cfg.drafter_init!r} has vocabulary {source.config.vocab_size}, "
                             f"the pair's tokenizer {model.config.vocab_size}")
    init_from(model, source, cfg.drafter_init, TrainPairError)


def _acceptance(ev: dict, languages: list[str], drafter_mixture: dict) -> dict:
    under = _under_represented(drafter_mixture)
    well = [l for l in languages if l not in under]
    alphas = [v for v in ev["alpha"].values() if v is not None]
    return {
        "under_represented": under,
        "well_represented": well,
        "alpha_mean_well_represented": _mean([ev["alpha"][l] for l in well]),
        "alpha_mean_under_represented": _mean([ev["alpha"][l] for l in under]),
        "alpha_mean": _mean(alphas),
        "alpha_spread": (max(alphas) - min(alphas)) if alphas else None,
        "kl_mean_well_represented": _mean([ev["kl"][l] for l in well]),
        "kl_mean_under_represented": _mean([ev["kl"][l] for l in under]),
    }


def _versions() -> dict:
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def _save(out, cfg: TrainPairConfig, models: dict, hf_tok, report: dict) -> None:
    """Both models (in ``cfg.save_dtype``) with the tokenizer, in Hugging Face format."""
    dtype = getattr(torch, cfg.save_dtype)
    for role in ("verifier", "drafter"):
        d = out / role
        d.mkdir(parents=True, exist_ok=True)
        if role == "verifier" and cfg.reuse_verifier is not None:   # copied byte for byte
            src = Path(cfg.reuse_verifier)
            for f in sorted(f for f in src.iterdir() if f.is_file() and src.resolve() != d.resolve()):
                shutil.copyfile(f, d / f.name)
            report[role]["path"] = str(d)
            continue
        m = models[role].to("cpu")
        if dtype != torch.float32:
            m = m.to(dtype)
        m.save_pretrained(d, safe_serialization=True)
        hf_tok.save_pretrained(d)
        models[role] = m
        report[role]["path"] = str(d)
        report[role]["safetensors_bytes"] = sum(f.stat().st_size for f in d.glob("*.safetensors"))

