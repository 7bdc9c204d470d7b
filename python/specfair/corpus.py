"""Multilingual task corpora: one loader interface over several text sources.

A *task* is, by default, a language.  Every source yields, per task, items with a
language-independent *split key*; the train / validation / held-out split is decided by a stable
hash of ``(seed, split key)`` (BLAKE2b, never Python's salted ``hash()``), so it is the
same on every run and machine, and where the source is parallel the same item (same
message id, same document section, same problem number) lands in the same split for
every language: held-out text is parallel across languages.

Sources (``list_sources()``):

``debian-installation-guide`` (the default, ``DEFAULT_SOURCE``)
    Debian's ``installation-guide-amd64`` package: the installation manual as HTML in
    19 languages under ``/usr/share/doc/installation-guide-amd64/<lang>/*.html``.
    Paragraph text (``<p>``) is extracted with :mod:`html.parser`; the split key is the
    file plus the nearest section anchor (``<a name=...>``, identical in every
    language).  Paragraphs left untranslated (identical to an English paragraph of the
    same file) are dropped from the other languages unless ``drop_untranslated=False``.
    Options: ``root=``, ``min_chars=`` (default 20), ``drop_untranslated=``.
``django``
    Django's gettext catalogues (``django/conf/locale/<locale>/LC_MESSAGES/*.po`` and
    every ``contrib/<app>/locale``), parsed by a small .po parser here (multi-line
    strings, contexts, plural forms -> ``msgstr[0]``; fuzzy, obsolete and empty
    translations skipped).  Split key: catalogue + context + msgid.  The source
    language ``en`` is filled from the msgids.  Options: ``root=`` (a directory that
    contains ``locale/<locale>/LC_MESSAGES/*.po`` trees at any depth), ``min_chars=``.
``mgsm``
    MGSM (grade-school maths problems in 11 languages).  With ``data_dir=`` it reads the
    original TSV files ``mgsm_<lang>.tsv`` (question \\t answer); otherwise it calls
    ``datasets.load_dataset("juletxara/mgsm", lang, split="test")`` (needs network and
    ``pip install datasets``).  Both paths go through the same row parser.  Split key:
    the problem number.  Options: ``data_dir=``, ``split=``, ``field=`` ("question",
    "answer" or "question+answer").
``jsonl`` / ``csv``
    A user's own file (``path=``, a file or a list of files) with a text column and a
    task column (``text_column="text"``, ``task_column="task"``); ``key_column=`` names
    a column of parallel item ids, otherwise the text itself is the split key.

Example::

    from specfair.corpus import load_corpus
    corpus = load_corpus()                      # the default corpus, every language
    corpus = load_corpus("django", tasks=["fr", "de"], heldout_fraction=0.2, seed=1)
    corpus.tasks["fr"].train, corpus.tasks["fr"].heldout

Parsers of the file formats live in `specfair.corpus_formats`, the sources themselves in
`specfair.corpus_sources`; this module splits and selects.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .corpus_formats import CorpusError, PoEntry, SourceNotAvailableError, html_paragraphs, parse_po
from .corpus_sources import DEFAULT_SOURCE, DJANGO_REQUIREMENT, GUIDE_ROOT, SOURCES, Item, Source

__all__ = [
    "DEFAULT_SOURCE",
    "DJANGO_REQUIREMENT",
    "SPLITS",
    "GUIDE_ROOT",
    "CorpusError",
    "SourceNotAvailableError",
    "Item",
    "PoEntry",
    "TaskSplit",
    "TaskCorpus",
    "available_tasks",
    "export_jsonl",
    "list_sources",
    "html_paragraphs",
    "load_corpus",
    "parse_po",
    "split_of",
    "stable_unit",
]


SPLITS = ("train", "validation", "heldout")


@dataclass
class TaskSplit:
    """One task's text, split three ways: ``train`` (fitting), ``validation`` (choosing
    knobs; empty unless ``validation_fraction > 0``) and ``heldout`` (reporting)."""

    train: list[str]
    heldout: list[str]
    train_ids: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    validation_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.train) + len(self.validation) + len(self.heldout)

    def split(self, name: str) -> list[str]:
        """The texts of split ``name`` ("train", "validation" or "heldout")."""
        if name not in SPLITS:
            raise CorpusError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


@dataclass
class TaskCorpus:
    name: str
    tasks: dict[str, TaskSplit]
    heldout_fraction: float = 0.1
    seed: int = 0
    options: dict = field(default_factory=dict)
    validation_fraction: float = 0.0

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per task: item and character counts of each split."""
        return {
            t: {
                "train_items": len(s.train),
                "validation_items": len(s.validation),
                "heldout_items": len(s.heldout),
                "train_chars": sum(map(len, s.train)),
                "validation_chars": sum(map(len, s.validation)),
                "heldout_chars": sum(map(len, s.heldout)),
            }
            for t, s in self.tasks.items()
        }

    def summary(self) -> str:
        lines = [f"{self.name}: {len(self.tasks)} tasks (held-out fraction "
                 f"{self.heldout_fraction}, validation fraction {self.validation_fraction}, seed {self.seed})",
                 f"{'task':<10} {'train':>7} {'valid':>7} {'heldout':>7} {'train chars':>12} {'valid chars':>12} "
                 f"{'heldout chars':>13}"]
        for t, st in self.stats().items():
            lines.append(f"{t:<10} {st['train_items']:>7} {st['validation_items']:>7} {st['heldout_items']:>7} "
                         f"{st['train_chars']:>12} {st['validation_chars']:>12} {st['heldout_chars']:>13}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- splitting
def stable_unit(*parts: object) -> float:
    """A stable uniform number in [0, 1) from the parts (same on every machine)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "big") / 2.0**64


def split_of(key: str, heldout_fraction: float = 0.1, seed: int = 0, validation_fraction: float = 0.0) -> str:
    """``"heldout"``, ``"validation"`` or ``"train"`` for a split key: a pure function of
    (seed, key, fractions).  One stable number u in [0, 1) per key: held-out when
    u < heldout_fraction, validation when u < heldout_fraction + validation_fraction,
    train otherwise.  So the held-out split does not depend on ``validation_fraction``
    (validation is carved out of what would otherwise be training text)."""
    u = stable_unit("split", seed, key)
    if u < heldout_fraction:
        return "heldout"
    return "validation" if u < heldout_fraction + validation_fraction else "train"


def _make_split(items: Sequence[Item], heldout_fraction: float, seed: int,
                validation_fraction: float = 0.0) -> TaskSplit:
    s = TaskSplit([], [])
    for it in items:
        name = split_of(it.key, heldout_fraction, seed, validation_fraction)
        getattr(s, name).append(it.text)
        getattr(s, f"{name}_ids").append(it.id)
    return s


def _subsample(items: Sequence[Item], n: int, seed: int) -> list[Item]:
    """At most ``n`` items, chosen by a stable hash of the split key (so parallel
    languages keep the same keys), in their original order."""
    if n >= len(items):
        return list(items)
    ranked = sorted(range(len(items)), key=lambda i: (stable_unit("select", seed, items[i].key), i))
    keep = set(ranked[:n])
    return [it for i, it in enumerate(items) if i in keep]




def list_sources() -> list[str]:
    """Names accepted by :func:`load_corpus` (``"default"`` is an alias of
    ``DEFAULT_SOURCE``)."""
    return sorted(SOURCES)


def resolve_source(source: str) -> Source:
    name = DEFAULT_SOURCE if source in (None, "default") else source
    if name not in SOURCES:
        raise CorpusError(f"unknown corpus source {source!r}; available: "
                          f"{', '.join(['default'] + list_sources())}")
    return SOURCES[name]


def _check_options(src: Source, options: dict) -> None:
    bad = sorted(set(options) - set(src.options))
    if bad:
        raise CorpusError(f"source {src.name!r} does not take option(s) {bad}; "
                          f"it takes: {', '.join(src.options) or 'none'}")


def available_tasks(source: str = "default", **source_options) -> list[str]:
    """The task names (languages) the source offers on this machine."""
    src = resolve_source(source)
    _check_options(src, source_options)
    return sorted(src.tasks(**source_options))


def _select_tasks(available: Iterable[str], tasks: Sequence[str] | str | None,
                  source: str) -> list[str]:
    available = sorted(available)
    if tasks is None:
        return available
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise CorpusError(f"unknown task(s) {unknown} for source {source!r}; "
                          f"available tasks: {', '.join(available)}")
    return list(dict.fromkeys(tasks))


def load_corpus(source: str = "default", tasks: Sequence[str] | str | None = None,
                heldout_fraction: float = 0.1, seed: int = 0,
                max_items_per_task: int | None = None, validation_fraction: float = 0.0,
                **source_options) -> TaskCorpus:
    """Load a corpus and split every task into train / validation / held-out.

    ``source``: one of :func:`list_sources` or ``"default"``.  ``tasks``: task names to
    keep (default: all; unknown names raise :class:`CorpusError` listing the available
    ones).  ``heldout_fraction``: expected share of held-out split keys.  ``seed``:
    changes the split (and the ``max_items_per_task`` subsample).  ``validation_fraction``:
    expected share of validation split keys, taken from the training side (default 0: a
    two-way split; held-out is the same for every value, see :func:`split_of`).  Extra
    keyword arguments are the source's options (see the module docstring).
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise CorpusError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    if not 0.0 <= validation_fraction <= 1.0 - heldout_fraction:
        raise CorpusError(f"validation_fraction must be in [0, 1 - heldout_fraction], got {validation_fraction}")
    if max_items_per_task is not None and max_items_per_task < 1:
        raise CorpusError(f"max_items_per_task must be >= 1, got {max_items_per_task}")
    src = resolve_source(source)
    _check_options(src, source_options)
    wanted = _select_tasks(src.tasks(**source_options), tasks, src.name)
    items = src.load(wanted, **source_options)
    out: dict[str, TaskSplit] = {}
    for t in wanted:
        its = items.get(t, [])
        if not its:
            continue
        if max_items_per_task is not None:
            its = _subsample(its, max_items_per_task, seed)
        out[t] = _make_split(its, heldout_fraction, seed, validation_fraction)
    if not out:
        raise CorpusError(f"source {src.name!r} yielded no text for tasks {wanted}")
    return TaskCorpus(src.name, out, heldout_fraction, seed,
                      {k: str(v) for k, v in source_options.items()}, validation_fraction)



def export_jsonl(out_path, source: str = "default", **source_options) -> Path:
    """Write a corpus as JSONL (``task``, ``key``, ``text``) for a machine without it.

    ``load_corpus("jsonl", path=out_path, key_column="key", heldout_fraction=f, seed=s)``
    then gives the same train/held-out texts, in the same order, as
    ``load_corpus(source, heldout_fraction=f, seed=s)``: the split is a hash of the key."""
    src = resolve_source(source)
    _check_options(src, source_options)
    names = src.tasks(**source_options)
    items = src.load(names, **source_options)
    out_path = Path(out_path)
    with open(out_path, "w", encoding="utf-8") as f:
        for t in names:
            for it in items.get(t, []):
                f.write(json.dumps({"task": t, "key": it.key, "text": it.text}, ensure_ascii=False) + "\n")
    return out_path
