"""What s-CDF runs load and measure with: the pair, the split corpus, and teacher-forced
figures of a drafter on the validation or held-out split against cached verifier logits."""
from __future__ import annotations

from . import corpus as corpus_mod
from . import teacher_forced as tf
from .models import load_pair
from .scdf_config import ScdfConfig, ScdfError

__all__ = ["evaluate_drafter", "load_models", "load_task_corpus", "prepare_eval_cache"]


def load_models(cfg: ScdfConfig):
    """(verifier, drafter, tokenizer) of ``cfg`` on the CPU, through `specfair.models.load_pair`
    (hub names, directories or GGUF files; the shipped pair when neither is given)."""
    try:
        drafter, verifier, tokenizer = load_pair(cfg.drafter, cfg.verifier, device="cpu", cache=cfg.gguf_cache)
    except (OSError, ValueError, ImportError) as e:
        raise ScdfError(f"could not load the pair: {e}") from None
    return verifier, drafter, tokenizer


def load_task_corpus(cfg: ScdfConfig):
    """The corpus of ``cfg``, split train / validation / held-out (`specfair.corpus`)."""
    return corpus_mod.load_corpus(cfg.corpus_source, tasks=cfg.tasks, heldout_fraction=cfg.heldout_fraction,
                                  seed=cfg.corpus_seed, max_items_per_task=cfg.max_items_per_task,
                                  validation_fraction=cfg.validation_fraction, **cfg.corpus_options)


def prepare_eval_cache(ec: dict, cfg: ScdfConfig, verifier, tokenizer, corpus, names, device,
                       split: str = "heldout") -> dict:
    """Fill ``ec`` with the windows of ``split`` ("heldout" by default, or "validation") and
    the verifier's logits on them (once), so that several runs share them.  A cache holds
    one split (``ec["split"]``); asking it for another is an error."""
    if ec.setdefault("split", split) != split:
        raise ScdfError(f"this evaluation cache holds the {ec['split']} split, not {split}")
    if "windows" not in ec:
        texts = {t: corpus.tasks[t].split(split) for t in names}
        if not any(texts.values()):
            knob = "heldout_fraction" if split == "heldout" else "validation_fraction"
            raise ScdfError(f"the corpus has no {split} text to evaluate on; raise {knob}")
        ec["windows"] = tf.token_windows(tokenizer, texts, cfg.context_length, cfg.eval_tokens_per_task)
    if "target_logits" not in ec:
        ec["target_logits"] = tf.verifier_logits(verifier, ec["windows"], batch_size=cfg.eval_batch_size,
                                                 device=device, progress=cfg.progress)
    return ec


def evaluate_drafter(cfg: ScdfConfig, drafter, ec: dict, device) -> tf.TeacherForcedResult:
    """Teacher-forced held-out figures of ``drafter`` against the cached verifier logits of
    `prepare_eval_cache`."""
    return tf.evaluate(None, drafter, ec["windows"], temperature=cfg.temperature, batch_size=cfg.eval_batch_size,
                       device=device, backend=cfg.backend, target_logits=ec["target_logits"])
