"""File formats that the corpus sources read, and the corpus errors: paragraphs of an HTML
page (`html_paragraphs`), gettext catalogues (`parse_po`), whitespace clean-up and reading
possibly gzipped text files.  Nothing here knows about tasks, splits or sources."""
from __future__ import annotations

import gzip
import html.parser
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CorpusError", "SourceNotAvailableError", "PoEntry", "clean_text", "html_paragraphs", "parse_po",
           "read_text", "read_utf8"]


class CorpusError(ValueError):
    """Bad request: unknown source or task, bad option, malformed file."""


class SourceNotAvailableError(RuntimeError):
    """The source's data is not on this machine; the message says how to install it."""




_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Whitespace runs to single spaces, stripped."""
    return _WS.sub(" ", text).strip()


def read_utf8(path: Path) -> str:
    """A user's corpus file (JSONL, CSV, TSV) as text, gunzipped when its name ends in .gz.

    Strict UTF-8 (a BOM is dropped): a file that is not raises `CorpusError` naming the file,
    the line and the column of the first byte that is not, with the fix."""
    path = Path(path)
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise CorpusError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
                          "re-encode the file as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from None


def read_text(path: Path) -> str:
    """A UTF-8 text file, gunzipped when its name ends in .gz (undecodable bytes replaced)."""
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
        text = clean_text("".join(self._buf))
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

