"""The corpus sources: where each task's texts come from and what their split keys are
(the module docstring of `specfair.corpus` describes each source and its options).

Every source is a `Source`: ``tasks(**options)`` lists the task names it offers here and
``load(tasks, **options)`` returns ``{task: [Item, ...]}``.  `SOURCES` maps names to them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .corpus_formats import (
    CorpusError,
    SourceNotAvailableError,
    clean_text,
    html_paragraphs,
    parse_po,
    read_text,
    read_utf8,
)

DEFAULT_SOURCE = "debian-installation-guide"
GUIDE_ROOT = "/usr/share/doc/installation-guide-amd64"
GUIDE_INSTALL = "apt-get install -y installation-guide-amd64"
DJANGO_REQUIREMENT = "Django==5.2.19"
MGSM_DATASET = "juletxara/mgsm"
MGSM_LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")


@dataclass(frozen=True)
class Item:
    """One text of one task.  ``key`` decides the split (language-independent for
    parallel sources); ``id`` identifies the item (unique within its task)."""

    key: str
    id: str
    text: str



@dataclass(frozen=True)
class Source:
    name: str
    description: str
    tasks: Callable[..., list[str]]                      # (**options) -> task names
    load: Callable[..., dict[str, list[Item]]]           # (tasks, **options) -> items
    options: tuple[str, ...]


SOURCES: dict[str, Source] = {}


def _register(src: Source) -> None:
    SOURCES[src.name] = src


# ---------------------------------------------------------------- Debian installation guide
def _guide_root(root: str | os.PathLike | None) -> Path:
    r = Path(root) if root is not None else Path(GUIDE_ROOT)
    if not r.is_dir() or not _guide_languages(r):
        hint = ("" if root is not None else
                " If the package is installed but the directory is empty, dpkg was told "
                "to exclude /usr/share/doc (a 'path-exclude=/usr/share/doc/*' line under "
                "/etc/dpkg/dpkg.cfg.d/, as in slim Docker images): remove that line and "
                "reinstall with `apt-get install --reinstall -y installation-guide-amd64`.")
        raise SourceNotAvailableError(
            f"the Debian installation guide was not found under {r} (no <lang>/*.html "
            f"directories). Install it with:  {GUIDE_INSTALL}  (as root, on Debian; run "
            f"`apt-get update` first), or pass root=<directory> to a copy of it.{hint}")
    return r


def _guide_files(lang_dir: Path) -> list[Path]:
    return sorted(p for p in lang_dir.iterdir()
                  if p.is_file() and (p.name.endswith(".html") or p.name.endswith(".html.gz")))


def _guide_languages(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and d.name != "images" and _guide_files(d))


def _guide_tasks(root=None, min_chars: int = 20, drop_untranslated: bool = True) -> list[str]:
    return _guide_languages(_guide_root(root))


def _guide_lang_items(lang_dir: Path, min_chars: int) -> dict[str, list[tuple[str, str]]]:
    """Per file stem: [(anchor, text)] of the paragraphs with >= min_chars characters."""
    out = {}
    for f in _guide_files(lang_dir):
        stem = f.name.split(".html")[0]
        out[stem] = [(a, t) for a, t in html_paragraphs(read_text(f)) if len(t) >= min_chars]
    return out


def _guide_load(tasks: list[str], root=None, min_chars: int = 20,
                drop_untranslated: bool = True) -> dict[str, list[Item]]:
    r = _guide_root(root)
    english = None
    if drop_untranslated and (r / "en").is_dir():
        english = {stem: {t for _, t in ps}
                   for stem, ps in _guide_lang_items(r / "en", min_chars).items()}
    result = {}
    for lang in tasks:
        items = []
        for stem, paras in _guide_lang_items(r / lang, min_chars).items():
            eng = english.get(stem, set()) if english is not None and lang != "en" else set()
            for i, (anchor, text) in enumerate(paras):
                if text in eng:
                    continue
                key = f"{stem}#{anchor}"
                items.append(Item(key, f"{key}#{i}", text))
        result[lang] = items
    return result


_register(Source(
    "debian-installation-guide",
    "Debian installation manual (installation-guide-amd64), HTML paragraphs, 19 languages",
    _guide_tasks, _guide_load, ("root", "min_chars", "drop_untranslated")))


def _django_root(root) -> Path:
    if root is not None:
        r = Path(root)
        if not r.is_dir():
            raise SourceNotAvailableError(f"no directory {r} (root= of the django source)")
        return r
    try:
        import django  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise SourceNotAvailableError(
            f"the django corpus reads Django's translation catalogues, but Django is not "
            f"installed. Install it with:  pip install {DJANGO_REQUIREMENT}") from None
    return Path(django.__file__).parent


def _django_catalogues(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """locale -> [(catalogue name, .po path)], catalogue name = path of the directory
    holding ``locale/`` relative to root, plus the domain (e.g. ``contrib/admin:django``)."""
    out: dict[str, list[tuple[str, Path]]] = {}
    for po in sorted(root.rglob("*.po")):
        parts = po.relative_to(root).parts
        if len(parts) < 4 or parts[-2] != "LC_MESSAGES" or parts[-4] != "locale":
            continue
        cat = "/".join(parts[:-4]) + ":" + po.stem
        out.setdefault(parts[-3], []).append((cat, po))
    return out


def _django_tasks(root=None, min_chars: int = 1, source_language: str = "en") -> list[str]:
    r = _django_root(root)
    cats = _django_catalogues(r)
    if not cats:
        raise SourceNotAvailableError(
            f"no gettext catalogues (locale/<locale>/LC_MESSAGES/*.po) under {r}"
            + ("" if root is not None else f"; reinstall with  pip install {DJANGO_REQUIREMENT}"))
    return sorted(cats)


def _django_load(tasks: list[str], root=None, min_chars: int = 1,
                 source_language: str = "en") -> dict[str, list[Item]]:
    cats = _django_catalogues(_django_root(root))
    result = {}
    for loc in tasks:
        items, seen = [], set()
        for cat, po in cats.get(loc, []):
            for e in parse_po(read_text(po), str(po)):
                if not e.msgid or e.fuzzy or e.obsolete:
                    continue
                text = e.msgstr
                if not text and loc == source_language:
                    text = e.msgid
                text = text.strip()
                if len(text) < min_chars:
                    continue
                key = f"{cat}|{e.msgctxt or ''}|{e.msgid}"
                if key in seen:
                    continue
                seen.add(key)
                items.append(Item(key, key, text))
        result[loc] = items
    return result


_register(Source(
    "django",
    "Django's gettext catalogues (core + contrib apps), parallel by msgid, ~100 locales",
    _django_tasks, _django_load, ("root", "min_chars", "source_language")))


# --------------------------------------------------------------------------- MGSM
_MGSM_FIELDS = ("question", "answer", "question+answer")


def _mgsm_text(row: dict, field_name: str) -> str:
    q = clean_text(str(row.get("question") or ""))
    a = row.get("answer")
    if a in (None, ""):
        a = row.get("answer_number", "")
    a = clean_text(str(a if a is not None else ""))
    if field_name == "question":
        return q
    if field_name == "answer":
        return a
    return f"{q}\n{a}" if a else q


def _mgsm_items(rows: Iterable[dict], field_name: str) -> list[Item]:
    """The one row parser for both MGSM paths: rows are dicts with ``question`` and
    ``answer`` (and, from the hub, ``answer_number``); the split key is the row
    number, which is the same problem in every language."""
    if field_name not in _MGSM_FIELDS:
        raise CorpusError(f"mgsm field must be one of {_MGSM_FIELDS}, got {field_name!r}")
    items = []
    for i, row in enumerate(rows):
        text = _mgsm_text(row, field_name)
        if text:
            items.append(Item(f"mgsm#{i}", f"mgsm#{i}", text))
    return items


def _read_mgsm_tsv(path: Path) -> list[dict]:
    rows = []
    with io.StringIO(read_utf8(path), newline="") as f:
        for n, rec in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not rec or not any(rec):
                continue
            if len(rec) < 2:
                raise CorpusError(f"{path}:{n}: expected 'question<TAB>answer'")
            rows.append({"question": "\t".join(rec[:-1]), "answer": rec[-1]})
    return rows


def _mgsm_tsv_files(data_dir) -> dict[str, Path]:
    d = Path(data_dir)
    if not d.is_dir():
        raise SourceNotAvailableError(f"mgsm data_dir {d} is not a directory")
    files = {p.name[len("mgsm_"):-len(".tsv")]: p for p in sorted(d.glob("mgsm_*.tsv"))}
    if not files:
        raise SourceNotAvailableError(f"no mgsm_<lang>.tsv files in {d}")
    return files


def _import_datasets():
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        raise SourceNotAvailableError(
            "the mgsm source loads juletxara/mgsm through the `datasets` library, which "
            "is not installed: run  pip install datasets  (it needs network access to "
            "the Hugging Face hub), or pass data_dir=<directory of mgsm_<lang>.tsv "
            "files>") from None
    return datasets


def _mgsm_tasks(data_dir=None, split: str = "test", field: str = "question") -> list[str]:
    if data_dir is not None:
        return sorted(_mgsm_tsv_files(data_dir))
    return list(MGSM_LANGUAGES)


def _mgsm_load(tasks: list[str], data_dir=None, split: str = "test",
               field: str = "question") -> dict[str, list[Item]]:
    result = {}
    if data_dir is not None:
        files = _mgsm_tsv_files(data_dir)
        for lang in tasks:
            result[lang] = _mgsm_items(_read_mgsm_tsv(files[lang]), field)
        return result
    datasets = _import_datasets()
    for lang in tasks:
        ds = datasets.load_dataset(MGSM_DATASET, lang, split=split)
        result[lang] = _mgsm_items(ds, field)
    return result


_register(Source(
    "mgsm",
    "MGSM maths word problems, 11 languages (datasets.load_dataset or local TSV files)",
    _mgsm_tasks, _mgsm_load, ("data_dir", "split", "field")))


# --------------------------------------------------------------------------- JSONL / CSV
def _paths(path) -> list[Path]:
    if path is None:
        raise CorpusError("this source needs path=<file> (or a list of files)")
    ps = [Path(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
    for p in ps:
        if not p.is_file():
            raise SourceNotAvailableError(f"no such file: {p}")
    return ps


def _records(fmt: str, path) -> Iterable[tuple[str, int, dict]]:
    for p in _paths(path):
        if fmt == "jsonl":
            with io.StringIO(read_utf8(p)) as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise CorpusError(f"{p}:{n}: invalid JSON ({e})") from None
                        if not isinstance(rec, dict):
                            raise CorpusError(f"{p}:{n}: expected a JSON object per line")
                        yield str(p), n, rec
        else:
            with io.StringIO(read_utf8(p), newline="") as f:
                for n, rec in enumerate(csv.DictReader(f), 2):
                    yield str(p), n, rec


def _table_rows(fmt, path, text_column, task_column, key_column):
    for where, n, rec in _records(fmt, path):
        for col in (text_column, task_column) + ((key_column,) if key_column else ()):
            if col not in rec:
                raise CorpusError(f"{where}:{n}: no column {col!r} (columns: {sorted(rec)}); "
                                  f"set text_column= / task_column= / key_column=")
        yield where, n, rec


def _make_table_source(fmt: str) -> Source:
    def tasks(path=None, text_column="text", task_column="task", key_column=None):
        return sorted({str(r[task_column]) for _, _, r in
                       _table_rows(fmt, path, text_column, task_column, key_column)})

    def load(wanted, path=None, text_column="text", task_column="task", key_column=None):
        result = {t: [] for t in wanted}
        for where, n, rec in _table_rows(fmt, path, text_column, task_column, key_column):
            task = str(rec[task_column])
            if task not in result:
                continue
            text = str(rec[text_column] or "").strip()
            if not text:
                continue
            key = str(rec[key_column]) if key_column else text
            result[task].append(Item(key, key if key_column else f"{Path(where).name}:{n}", text))
        return result

    return Source(fmt, f"a user's own {fmt.upper()} file with a text and a task column",
                   tasks, load, ("path", "text_column", "task_column", "key_column"))


_register(_make_table_source("jsonl"))
_register(_make_table_source("csv"))
