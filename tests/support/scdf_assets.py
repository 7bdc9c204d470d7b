"""The tiny s-CDF world of the scdf tests (importable because the pytest config puts
tests/support on sys.path): three languages of a few sentences as a JSONL corpus, a tiny
random verifier/drafter pair with a tokenizer trained on the sentences, and the
`ScdfConfig` that trains on them in seconds."""
from __future__ import annotations

import json
from pathlib import Path

from tiny_models import tiny_llama

SENTENCES = {
    "en": ["The installer asks a few questions before it partitions the disk.",
           "Choose a mirror close to you so that packages download quickly.",
           "The boot loader is installed on the first hard disk by default.",
           "Make backups of important data before the installation starts."],
    "ru": ["Программа установки задаёт несколько вопросов перед разметкой диска.",
           "Выберите ближайшее к вам зеркало, чтобы пакеты загружались быстро.",
           "Системный загрузчик по умолчанию устанавливается на первый жёсткий диск.",
           "Перед началом установки сделайте резервные копии важных данных."],
    "el": ["Το πρόγραμμα εγκατάστασης κάνει μερικές ερωτήσεις πριν διαμερίσει τον δίσκο.",
           "Επιλέξτε έναν καθρέφτη κοντά σας ώστε τα πακέτα να κατεβαίνουν γρήγορα.",
           "Ο φορτωτής εκκίνησης εγκαθίσταται από προεπιλογή στον πρώτο σκληρό δίσκο.",
           "Κρατήστε αντίγραφα ασφαλείας των σημαντικών δεδομένων πριν την εγκατάσταση."],
}
CTX = 16


def write_assets(root: Path) -> Path:
    """corpus.jsonl (every sentence three times, keyed by id), verifier/ and drafter/ in ``root``."""
    from specfair.train_pair import hf_tokenizer, train_tokenizer

    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for lang, texts in SENTENCES.items():
            for i, t in enumerate(texts):
                for rep in range(3):
                    f.write(json.dumps({"task": lang, "id": f"s{i}r{rep}", "text": f"{t} ({rep})"},
                                       ensure_ascii=False) + "\n")
    tok = hf_tokenizer(train_tokenizer([t for v in SENTENCES.values() for t in v], vocab_size=300), 64)
    for role, seed, hidden in (("verifier", 1, 48), ("drafter", 2, 32)):
        m = tiny_llama(len(tok), seed, hidden=hidden, logit_scale=10.0, pad=3)
        m.save_pretrained(root / role)
        tok.save_pretrained(root / role)
    return root


def config(assets: Path, out, **kw):
    """A fast `ScdfConfig` on the assets of `write_assets` (keywords override fields)."""
    from specfair.scdf import ScdfConfig

    base = dict(out_dir=str(out), verifier=str(assets / "verifier"), drafter=str(assets / "drafter"),
                corpus_source="jsonl", corpus_options={"path": str(assets / "corpus.jsonl"), "key_column": "id"},
                heldout_fraction=0.25, validation_fraction=0.25, context_length=CTX, steps=6, batch_size=4,
                warmup_steps=2, lr=1e-2,
                checkpoint_every=3, eval_tokens_per_task=64, eval_batch_size=8, progress=False,
                init_windows_per_task=2, log_every=1)
    base.update(kw)
    return ScdfConfig(**base)


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)
