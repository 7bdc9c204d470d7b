"""Multilingual task corpora: one loader interface over several text sources (issue 5).

A *task* is, by default, a language.  Every source yields, per task, items with a
language-independent *split key*; the train / held-out split is decided by a stable
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
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import html.parser
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = [
    "DEFAULT_SOURCE",
    "DJANGO_REQUIREMENT",
    "GUIDE_ROOT",
    "CorpusError",
    "SourceNotAvailableError",
    "Item",
    "PoEntry",
    "TaskSplit",
    "TaskCorpus",
    "available_tasks",
    "list_sources",
    "html_paragraphs",
    "load_corpus",
    "parse_po",
    "split_of",
]

DEFAULT_SOURCE = "debian-installation-guide"
GUIDE_ROOT = "/usr/share/doc/installation-guide-amd64"
GUIDE_INSTALL = "apt-get install -y installation-guide-amd64"
DJANGO_REQUIREMENT = "Django==5.2.19"
MGSM_DATASET = "juletxara/mgsm"
MGSM_LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")


class CorpusError(ValueError):
    """Bad request: unknown source or task, bad option, malformed file."""


class SourceNotAvailableError(RuntimeError):
    """The source's data is not on this machine; the message says how to install it."""


# --------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Item:
    """One text of one task.  ``key`` decides the split (language-independent for
    parallel sources); ``id`` identifies the item (unique within its task)."""

    key: str
    id: str
    text: str


@dataclass
class TaskSplit:
    train: list[str]
    heldout: list[str]
    train_ids: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.train) + len(self.heldout)


@dataclass
class TaskCorpus:
    name: str
    tasks: dict[str, TaskSplit]
    heldout_fraction: float = 0.1
    seed: int = 0
    options: dict = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per task: item and character counts of each split."""
        return {
            t: {
                "train_items": len(s.train),
                "heldout_items": len(s.heldout),
                "train_chars": sum(map(len, s.train)),
                "heldout_chars": sum(map(len, s.heldout)),
            }
            for t, s in self.tasks.items()
        }

    def summary(self) -> str:
        lines = [f"{self.name}: {len(self.tasks)} tasks (held-out fraction "
                 f"{self.heldout_fraction}, seed {self.seed})",
                 f"{'task':<10} {'train':>7} {'heldout':>7} {'train chars':>12} {'heldout chars':>13}"]
        for t, st in self.stats().items():
            lines.append(f"{t:<10} {st['train_items']:>7} {st['heldout_items']:>7} "
                         f"{st['train_chars']:>12} {st['heldout_chars']:>13}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- splitting
def _unit(*parts: object) -> float:
    """A stable uniform number in [0, 1) from the parts (same on every machine)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "big") / 2.0**64


def split_of(key: str, heldout_fraction: float = 0.1, seed: int = 0) -> str:
    """``"heldout"`` or ``"train"`` for a split key: a pure function of (seed, key)."""
    return "heldout" if _unit("split", seed, key) < heldout_fraction else "train"


def _make_split(items: Sequence[Item], heldout_fraction: float, seed: int) -> TaskSplit:
    s = TaskSplit([], [])
    for it in items:
        if split_of(it.key, heldout_fraction, seed) == "heldout":
            s.heldout.append(it.text)
            s.heldout_ids.append(it.id)
        else:
            s.train.append(it.text)
            s.train_ids.append(it.id)
    return s


def _subsample(items: Sequence[Item], n: int, seed: int) -> list[Item]:
    """At most ``n`` items, chosen by a stable hash of the split key (so parallel
    languages keep the same keys), in their original order."""
    if n >= len(items):
        return list(items)
    ranked = sorted(range(len(items)), key=lambda i: (_unit("select", seed, items[i].key), i))
    keep = set(ranked[:n])
    return [it for i, it in enumerate(items) if i in keep]


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Source:
    name: str
    description: str
    tasks: Callable[..., list[str]]                      # (**options) -> task names
    load: Callable[..., dict[str, list[Item]]]           # (tasks, **options) -> items
    options: tuple[str, ...]


_SOURCES: dict[str, _Source] = {}


def _register(src: _Source) -> None:
    _SOURCES[src.name] = src


def list_sources() -> list[str]:
    """Names accepted by :func:`load_corpus` (``"default"`` is an alias of
    ``DEFAULT_SOURCE``)."""
    return sorted(_SOURCES)


def _resolve(source: str) -> _Source:
    name = DEFAULT_SOURCE if source in (None, "default") else source
    if name not in _SOURCES:
        raise CorpusError(f"unknown corpus source {source!r}; available: "
                          f"{', '.join(['default'] + list_sources())}")
    return _SOURCES[name]


def _check_options(src: _Source, options: dict) -> None:
    bad = sorted(set(options) - set(src.options))
    if bad:
        raise CorpusError(f"source {src.name!r} does not take option(s) {bad}; "
                          f"it takes: {', '.join(src.options) or 'none'}")


def available_tasks(source: str = "default", **source_options) -> list[str]:
    """The task names (languages) the source offers on this machine."""
    src = _resolve(source)
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
                max_items_per_task: int | None = None, **source_options) -> TaskCorpus:
    """Load a corpus and split every task into train / held-out.

    ``source``: one of :func:`list_sources` or ``"default"``.  ``tasks``: task names to
    keep (default: all; unknown names raise :class:`CorpusError` listing the available
    ones).  ``heldout_fraction``: expected share of held-out split keys.  ``seed``:
    changes the split (and the ``max_items_per_task`` subsample).  Extra keyword
    arguments are the source's options (see the module docstring).
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise CorpusError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    if max_items_per_task is not None and max_items_per_task < 1:
        raise CorpusError(f"max_items_per_task must be >= 1, got {max_items_per_task}")
    src = _resolve(source)
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
        out[t] = _make_split(its, heldout_fraction, seed)
    if not out:
        raise CorpusError(f"source {src.name!r} yielded no text for tasks {wanted}")
    return TaskCorpus(src.name, out, heldout_fraction, seed,
                      {k: str(v) for k, v in source_options.items()})


_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


# ---------------------------------------------------------------- Debian installation guide
def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


# Ids that DocBook generates per build ("idm4019", "ftn.idm4019", "id-1.3.4", "d0e123"):
# they differ between languages, so they never name a section.
_GENERATED_ID = re.compile(r"^(ftn\.)?(idm?\d+|id-[\d.]+|d\d+e\d+)$")


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of ``<p>`` elements, each tagged with the nearest preceding
    anchor name.  Block-level tags inside a paragraph (lists, tables, nested divs)
    end the current piece of text, so nested blocks give separate paragraphs; text
    in navigation headers/footers, ``<pre>``, scripts and styles is ignored."""

    _BLOCK = {"p", "div", "ul", "ol", "li", "dl", "dt", "dd", "table", "tr", "td", "th",
              "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "br", "hr"}
    _SKIP = {"pre", "script", "style", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[tuple[str, str]] = []   # (anchor, text)
        self.anchor = ""
        self._p_depth = 0
        self._skip_depth = 0
        self._nav_stack: list[bool] = []              # per open div: is it navigation?
        self._nav_depth = 0
        self._buf: list[str] = []

    def _flush(self) -> None:
        text = _clean("".join(self._buf))
        self._buf = []
        if text:
            self.paragraphs.append((self.anchor, text))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        name = (a.get("name") if tag == "a" else None) or a.get("id")
        if name and not _GENERATED_ID.match(name):
            self.anchor = name
        if tag in self._BLOCK:
            self._flush()
        if tag == "div":
            nav = (a.get("class") or "") in ("navheader", "navfooter", "toc")
            self._nav_stack.append(nav)
            self._nav_depth += nav
        if tag in self._SKIP:
            self._skip_depth += 1
        if tag == "p":
            self._p_depth += 1

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in self._SKIP or tag in ("p", "div"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in self._BLOCK:
            self._flush()
        if tag == "div" and self._nav_stack:
            self._nav_depth -= self._nav_stack.pop()
        if tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag == "p" and self._p_depth:
            self._p_depth -= 1

    def handle_data(self, data):
        if self._p_depth and not self._skip_depth and not self._nav_depth:
            self._buf.append(data)

    def close(self):
        super().close()
        self._flush()


def html_paragraphs(html_text: str) -> list[tuple[str, str]]:
    """``(anchor, text)`` for every paragraph of an HTML page (see _ParagraphParser)."""
    p = _ParagraphParser()
    p.feed(html_text)
    p.close()
    return p.paragraphs


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
        out[stem] = [(a, t) for a, t in html_paragraphs(_read_text(f)) if len(t) >= min_chars]
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


_register(_Source(
    "debian-installation-guide",
    "Debian installation manual (installation-guide-amd64), HTML paragraphs, 19 languages",
    _guide_tasks, _guide_load, ("root", "min_chars", "drop_untranslated")))


# --------------------------------------------------------------------------- gettext .po
@dataclass
class PoEntry:
    msgid: str
    msgstr: str                      # msgstr, or msgstr[0] for plural entries
    msgctxt: str | None = None
    msgid_plural: str | None = None
    msgstr_plural: dict[int, str] = field(default_factory=dict)
    fuzzy: bool = False
    obsolete: bool = False


def _po_unquote(s: str, where: str) -> str:
    s = s.strip()
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise CorpusError(f"{where}: expected a quoted string, got {s!r}")
    body, out, i = s[1:-1], [], 0
    esc = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
           "f": "\f", "v": "\v"}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append(esc.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


_PO_KEY = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*)$')


def parse_po(text: str, where: str = "<po>") -> list[PoEntry]:
    """Parse a gettext .po file: every entry, the header (msgid "") included, with
    its flags.  Multi-line strings are joined; ``#~`` obsolete entries are marked."""
    entries: list[PoEntry] = []
    cur: dict = {}
    flags: set[str] = set()
    last: tuple | None = None        # (field, plural index) that continuation lines extend

    def finish():
        nonlocal cur, flags, last
        if "msgid" in cur:
            plural = cur.get("plural", {})
            entries.append(PoEntry(
                msgid=cur["msgid"],
                msgstr=cur.get("msgstr", plural.get(0, "")),
                msgctxt=cur.get("msgctxt"),
                msgid_plural=cur.get("msgid_plural"),
                msgstr_plural=dict(plural),
                fuzzy="fuzzy" in flags,
                obsolete=cur.get("obsolete", False)))
        cur, flags, last = {}, set(), None

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        obsolete = False
        if line.startswith("#~"):
            obsolete, line = True, line[2:].strip()
            if line.startswith("|"):            # previous-msgid comment of an obsolete entry
                continue
        if not line:
            if "msgid" in cur and "msgstr" not in cur and "plural" not in cur:
                continue
            finish()
            continue
        if line.startswith("#"):
            if "msgstr" in cur or "plural" in cur:
                finish()
            if line.startswith("#,"):
                flags.update(f.strip() for f in line[2:].split(","))
            continue
        m = _PO_KEY.match(line)
        if m:
            kw, idx, rest = m.group(1), m.group(2), m.group(3)
            if kw in ("msgctxt", "msgid") and ("msgstr" in cur or "plural" in cur):
                finish()
            if kw == "msgid" and "msgid" in cur:
                finish()
            value = _po_unquote(rest, f"{where}:{n}")
            if obsolete:
                cur["obsolete"] = True
            if idx is not None:
                cur.setdefault("plural", {})[int(idx)] = value
                last = ("plural", int(idx))
            else:
                cur[kw] = value
                last = (kw, None)
            continue
        if line.startswith('"'):
            if last is None:
                raise CorpusError(f"{where}:{n}: string continuation outside an entry")
            value = _po_unquote(line, f"{where}:{n}")
            if last[0] == "plural":
                cur["plural"][last[1]] += value
            else:
                cur[last[0]] += value
            continue
        raise CorpusError(f"{where}:{n}: cannot parse line {raw!r}")
    finish()
    return entries


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
            for e in parse_po(_read_text(po), str(po)):
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


_register(_Source(
    "django",
    "Django's gettext catalogues (core + contrib apps), parallel by msgid, ~100 locales",
    _django_tasks, _django_load, ("root", "min_chars", "source_language")))


# --------------------------------------------------------------------------- MGSM
_MGSM_FIELDS = ("question", "answer", "question+answer")


def _mgsm_text(row: dict, field_name: str) -> str:
    q = _clean(str(row.get("question") or ""))
    a = row.get("answer")
    if a in (None, ""):
        a = row.get("answer_number", "")
    a = _clean(str(a if a is not None else ""))
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
    with open(path, encoding="utf-8", newline="") as f:
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


_register(_Source(
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
            with open(p, encoding="utf-8") as f:
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
            with open(p, encoding="utf-8", newline="") as f:
                for n, rec in enumerate(csv.DictReader(f), 2):
                    yield str(p), n, rec


def _table_rows(fmt, path, text_column, task_column, key_column):
    for where, n, rec in _records(fmt, path):
        for col in (text_column, task_column) + ((key_column,) if key_column else ()):
            if col not in rec:
                raise CorpusError(f"{where}:{n}: no column {col!r} (columns: {sorted(rec)}); "
                                  f"set text_column= / task_column= / key_column=")
        yield where, n, rec


def _make_table_source(fmt: str) -> _Source:
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

    return _Source(fmt, f"a user's own {fmt.upper()} file with a text and a task column",
                   tasks, load, ("path", "text_column", "task_column", "key_column"))


_register(_make_table_source("jsonl"))
_register(_make_table_source("csv"))


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m specfair.corpus",
                                 description="Summarise a task corpus (per-task split sizes).")
    ap.add_argument("source", nargs="?", default="default",
                    help=f"one of: default ({DEFAULT_SOURCE}), {', '.join(list_sources())}")
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-items-per-task", type=int)
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="source option, e.g. root=/path or path=data.jsonl")
    a = ap.parse_args(argv)
    opts = {}
    for o in a.option:
        k, _, v = o.partition("=")
        low = v.lower()
        opts[k] = (True if low == "true" else False if low == "false"
                   else int(v) if re.fullmatch(r"-?\d+", v) else v)
    try:
        c = load_corpus(a.source, a.tasks, a.heldout_fraction, a.seed,
                        a.max_items_per_task, **opts)
    except (CorpusError, SourceNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(c.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
