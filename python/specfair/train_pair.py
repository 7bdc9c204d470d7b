"""Train a drafter/verifier pair of small Llama models on a multilingual corpus (issue 5).

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
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_UNDER_REPRESENTED",
    "PRESETS",
    "ModelSize",
    "TrainPairConfig",
    "TrainPairError",
    "preset",
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

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainPairConfig":
        d = {k: v for k, v in d.items() if k != "resolved"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainPairError(f"unknown config field(s) {unknown}")
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


# ---------------------------------------------------------------------------- file helpers
def _atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    from ._common import atomic_write

    atomic_write(path, lambda f: f.write(text))


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check that files can be written in it."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainPairError(f"output directory {str(out)!r} is not writable: {e.strerror or e}") from None
    return out


# ---------------------------------------------------------------------------- data
def _resolve_mixtures(cfg: TrainPairConfig, languages: list[str]) -> tuple[dict, dict]:
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


def _hf_tokenizer(tok, context_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=context_length,
                                   clean_up_tokenization_spaces=False, padding_side="right",
                                   **SPECIAL_TOKENS)


def _streams(hf_tok, texts_by_lang: dict[str, list[str]]):
    """Per language: one int64 stream ``<s> text </s> <s> text </s> ...``
    (``specfair.teacher_forced.token_streams``)."""
    from .teacher_forced import token_streams

    return token_streams(hf_tok, texts_by_lang)


class _MixtureSampler:
    """Draws [B, T+1] windows: a language per row from the mixture, then a uniform offset
    in that language's stream (streams shorter than T+1 are tiled)."""

    def __init__(self, streams, mixture: dict[str, float], context_length: int, seed: int):
        import torch

        self.langs = [l for l in mixture if mixture[l] > 0]
        self.probs = torch.tensor([mixture[l] for l in self.langs], dtype=torch.float64)
        self.T = context_length
        self.streams = []
        for l in self.langs:
            s = streams[l]
            if len(s) == 0:
                raise TrainPairError(f"language {l!r} has no training text")
            if len(s) < self.T + 1:
                s = s.repeat(math.ceil((self.T + 1) / len(s)))
            self.streams.append(s)
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int):
        import torch

        li = torch.multinomial(self.probs, batch_size, replacement=True, generator=self.gen)
        rows = []
        for i in li.tolist():
            s = self.streams[i]
            off = int(torch.randint(0, len(s) - self.T, (1,), generator=self.gen))
            rows.append(s[off: off + self.T + 1])
        return torch.stack(rows), li


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
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(size, cfg, hf_tok))
    return model


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _lr_at(step: int, cfg: TrainPairConfig, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if total <= cfg.warmup_steps:
        return cfg.lr
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _train_one(name: str, model, sampler: _MixtureSampler, cfg: TrainPairConfig, steps: int,
               device) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
    use_amp = device.type == "cuda" and cfg.bf16_autocast_on_cuda
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {name}", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        lr = _lr_at(step, cfg, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        batch, _ = sampler.sample(cfg.batch_size)
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", gnorm=f"{float(gnorm):.2f}")
    bar.close()
    model.eval()
    tail = losses[-max(1, min(50, len(losses) // 10)):]
    return {"steps": steps, "tokens_seen": steps * cfg.batch_size * cfg.context_length,
            "final_train_loss": sum(tail) / len(tail), "first_train_loss": losses[0],
            "train_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------- evaluation
def evaluate_pair(verifier, drafter, streams, languages, cfg: TrainPairConfig, device) -> dict:
    """Per language, teacher-forced on held-out text: perplexity of each model, and the
    expected acceptance alpha = sum min(p, q) and KL(p || q) at temperature 1.

    A wrapper over :mod:`specfair.teacher_forced`: non-overlapping windows of
    ``cfg.context_length`` tokens, at most ``cfg.eval_tokens_per_language`` per language."""
    from . import teacher_forced

    pad = verifier.config.pad_token_id
    if not any(len(streams[l]) > 1 for l in languages):
        raise TrainPairError("the held-out split has no text to evaluate on; raise heldout_fraction")
    windows = teacher_forced.windows_from_streams(streams, list(languages), cfg.context_length,
                                                  cfg.eval_tokens_per_language, pad)
    r = teacher_forced.evaluate(verifier, drafter, windows, temperature=1.0,
                                batch_size=cfg.eval_batch_size, device=device)
    return {"tokens": dict(r.tokens), "verifier_ppl": dict(r.verifier_ppl),
            "drafter_ppl": dict(r.drafter_ppl), "alpha": dict(r.alpha), "kl": dict(r.kl)}


# ---------------------------------------------------------------------------- cards
def _fmt(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def _card(role: str, cfg: TrainPairConfig, report: dict, corpus_desc: str) -> str:
    info = report[role]
    ev = report["eval"]
    langs = report["languages"]
    mix = report["mixtures"][role]
    size = info["size"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [llama, specfair, speculative-decoding, " + ("drafter" if role == "drafter" else "verifier") + "]",
        "---",
        f"# specfair {role}",
        "",
        (f"The {role} of a drafter/verifier pair trained by `specfair train-pair` "
         f"(seed {cfg.seed}; config in `../train_pair_config.json`). A small Llama "
         f"(`LlamaForCausalLM`), loaded with `AutoModelForCausalLM.from_pretrained` like any "
         f"Hugging Face model. It exists to make the fairness question of speculative "
         f"decoding measurable offline; it is not a useful language model."),
        "",
        "## Model",
        f"- parameters: {info['parameters']:,} (tied input/output embeddings: {cfg.tie_embeddings})",
        f"- hidden {size['hidden']}, layers {size['layers']}, heads {size['heads']}, "
        f"kv heads {size['kv_heads'] or size['heads']}, intermediate {size['intermediate']}, "
        f"context {cfg.context_length}",
        f"- tokenizer: byte-level BPE, vocabulary {report['vocab_size']}, shared by the pair, "
        f"trained on the training split of every language below",
        f"- weights saved as {cfg.save_dtype} safetensors",
        "",
        "## Data",
        f"- corpus: {corpus_desc}",
        f"- languages ({len(langs)}): {', '.join(langs)}; perplexities below are on the held-out split "
        f"(held-out fraction {cfg.heldout_fraction}, split seed {cfg.corpus_seed}), never trained on",
        "",
        "## Training",
        f"- {info['steps']} steps of AdamW (lr {cfg.lr}, betas {tuple(cfg.betas)}, weight decay "
        f"{cfg.weight_decay}, {cfg.warmup_steps} warm-up steps, cosine to {cfg.lr * cfg.min_lr_ratio:g}), "
        f"batch {cfg.batch_size} x {cfg.context_length} tokens, gradient clipping {cfg.grad_clip}",
        f"- {info['tokens_seen']:,} training tokens seen; final training loss {info['final_train_loss']:.3f}",
        f"- device: {report['device']}",
        "",
        "## Mixture",
        ("Windows are sampled per language with these probabilities "
         + ("(balanced)." if role == "verifier" else
            "(skewed, as real drafter data is: the under-represented languages get "
            f"{cfg.under_weight:g} of the others' weight).")),
        "",
        "| language | weight | held-out perplexity | held-out tokens |",
        "|---|---|---|---|",
    ]
    ppl = ev["verifier_ppl" if role == "verifier" else "drafter_ppl"]
    for l in langs:
        lines.append(f"| {l} | {mix[l]:.4f} | {_fmt(ppl[l], 2)} | {ev['tokens'][l]} |")
    if role == "drafter":
        acc = report["acceptance"]
        lines += [
            "",
            "## Acceptance against the verifier (held-out, teacher-forced, temperature 1)",
            ("Expected acceptance alpha = sum_x min(p(x), q(x)) (p: verifier, q: this drafter) "
             "and KL(p || q), averaged over every held-out token of each language, computed with "
             "`specfair_kernels.token_divergence`."),
            "",
            "| language | drafter weight | alpha | KL(p‖q) |",
            "|---|---|---|---|",
        ]
        for l in langs:
            lines.append(f"| {l} | {mix[l]:.4f} | {_fmt(ev['alpha'][l])} | {_fmt(ev['kl'][l])} |")
        lines += [
            "",
            f"- mean alpha, well-represented languages: {_fmt(acc['alpha_mean_well_represented'])}",
            f"- mean alpha, under-represented languages ({', '.join(acc['under_represented']) or 'none'}): "
            f"{_fmt(acc['alpha_mean_under_represented'])}",
            f"- spread of alpha across languages (max - min): {_fmt(acc['alpha_spread'])}",
            "",
            ("The per-language differences come from this drafter's data: languages that are "
             "under-represented in its mixture are fitted worse, so it agrees less with the "
             "verifier there, fewer drafted tokens are accepted, and speculative decoding "
             "speeds those languages up less (the mechanism of Sandler et al., *The "
             "Disparate Impacts of Speculative Decoding*, 2025)."),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main entry
def _device(name: str):
    from ._common import resolve_device

    return resolve_device(name, TrainPairError)


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def train_pair(config: TrainPairConfig) -> dict:
    """Train, save and evaluate the pair (see the module docstring); returns the report
    (also written to ``<out_dir>/pair_report.json``)."""
    import torch

    from . import corpus as corpus_mod

    cfg = config
    cfg.validate()
    device = _device(cfg.device)
    out = check_output_dir(cfg.out_dir)
    t_start = time.perf_counter()

    # --- corpus (CorpusError / SourceNotAvailableError propagate with their own messages)
    corpus = corpus_mod.load_corpus(cfg.corpus_source, tasks=cfg.languages,
                                    heldout_fraction=cfg.heldout_fraction, seed=cfg.corpus_seed,
                                    max_items_per_task=cfg.max_items_per_task, **cfg.corpus_options)
    languages = corpus.task_names            # the requested order, duplicates dropped
    missing_train = [l for l in languages if not corpus.tasks[l].train]
    if missing_train:
        raise TrainPairError(f"no training text for language(s) {missing_train}")
    ver_mix, dra_mix = _resolve_mixtures(cfg, languages)

    # --- tokenizer: trained on every language's training split, in a fixed order
    texts = [t for l in languages for t in corpus.tasks[l].train]
    tok = train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    hf_tok = _hf_tokenizer(tok, cfg.context_length)
    train_streams = _streams(hf_tok, {l: corpus.tasks[l].train for l in languages})
    held_streams = _streams(hf_tok, {l: corpus.tasks[l].heldout for l in languages})

    # --- models
    steps = {"verifier": cfg.steps, "drafter": cfg.drafter_steps or cfg.steps}
    mixtures = {"verifier": ver_mix, "drafter": dra_mix}
    sizes = {"verifier": cfg.verifier, "drafter": cfg.drafter}
    models, info = {}, {}
    for k, role in enumerate(("verifier", "drafter")):
        model = _build_model(sizes[role], cfg, hf_tok, seed=cfg.seed * 1000 + 2 * k)
        sampler = _MixtureSampler(train_streams, mixtures[role], cfg.context_length,
                                  seed=cfg.seed * 1000 + 2 * k + 1)
        stats = _train_one(role, model, sampler, cfg, steps[role], device)
        models[role] = model
        info[role] = {"parameters": count_parameters(model), "size": dataclasses.asdict(sizes[role]),
                      **stats}

    # --- evaluation
    ev = evaluate_pair(models["verifier"], models["drafter"], held_streams, languages, cfg, device)
    under = [l for l in _under_represented(dra_mix)]
    well = [l for l in languages if l not in under]
    alphas = [v for v in ev["alpha"].values() if v is not None]
    acceptance = {
        "under_represented": under,
        "well_represented": well,
        "alpha_mean_well_represented": _mean([ev["alpha"][l] for l in well]),
        "alpha_mean_under_represented": _mean([ev["alpha"][l] for l in under]),
        "alpha_mean": _mean(alphas),
        "alpha_spread": (max(alphas) - min(alphas)) if alphas else None,
        "kl_mean_well_represented": _mean([ev["kl"][l] for l in well]),
        "kl_mean_under_represented": _mean([ev["kl"][l] for l in under]),
    }

    # --- save
    import transformers
    import tokenizers

    corpus_desc = (f"`specfair.corpus` source `{corpus.name}`"
                   + (f" with options {corpus.options}" if corpus.options else ""))
    report = {
        "out_dir": str(out),
        "device": str(device),
        "languages": languages,
        "vocab_size": len(hf_tok),
        "mixtures": mixtures,
        "verifier": info["verifier"],
        "drafter": info["drafter"],
        "eval": ev,
        "acceptance": acceptance,
        "corpus": {"source": corpus.name, "options": corpus.options, "stats": corpus.stats()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }
    dtype = getattr(torch, cfg.save_dtype)
    for role in ("verifier", "drafter"):
        d = out / role
        d.mkdir(parents=True, exist_ok=True)
        m = models[role].to("cpu")
        if dtype != torch.float32:
            m = m.to(dtype)
        m.save_pretrained(d, safe_serialization=True)
        hf_tok.save_pretrained(d)
        models[role] = m
        report[role]["path"] = str(d)
        report[role]["safetensors_bytes"] = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    report["seconds_total"] = time.perf_counter() - t_start
    for role in ("verifier", "drafter"):
        _atomic_write_text(out / role / "README.md", _card(role, cfg, report, corpus_desc))
    saved_cfg = cfg.to_dict()
    saved_cfg["resolved"] = {"languages": languages, "verifier_mixture": ver_mix,
                             "drafter_mixture": dra_mix}
    _atomic_write_json(out / "train_pair_config.json", saved_cfg)
    _atomic_write_json(out / "pair_report.json", report)
    return report
