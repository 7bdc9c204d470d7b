"""specfair.corpus: every loader on small files in the source's real format (made here,
in tmp_path), deterministic and parallel splits, task filtering, clear errors; plus the
real installed default corpus when it is present.  Nothing is downloaded."""
from __future__ import annotations

import csv
import gzip
import json
import sys
import types
from pathlib import Path

import pytest

from specfair import cli, corpus_sources
from specfair import corpus as C

# --------------------------------------------------------------------------- fixtures
_PAGE = """<html>
<head>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<title>{title}</title>
<link rel="stylesheet" type="text/css" href="install.css">
</head>
<body bgcolor="white">
<div class="navheader">
<table width="100%" summary="Navigation header">
<tr><th colspan="3" align="center">{title}</th></tr>
<tr><td><a accesskey="p" href="ch01.html"><img src="images/prev.png" alt="Prev"></a></td></tr>
</table>
<hr>
</div>
<div class="sect1">
<div class="titlepage"><div><div><h2 class="title">
<a name="{anchor}"></a>{title}</h2></div></div></div>
<p>

{p1}
<a class="ulink" href="https://www.debian.org/" target="_top">Debian</a>
&amp; more.

</p>
<pre class="screen">
# apt-get install something-that-is-not-prose
</pre>
<p>
{p2}
<a name="{generated}"></a>
</p>
<div class="sect2"><div class="titlepage"><div><div><h3 class="title">
<a name="{anchor}-details"></a>Details</h3></div></div></div>
<p>{p3}</p>
<p>{same}</p>
<p>Short.</p>
</div>
</div>
<div class="navfooter"><hr><table><tr><td><p>Navigation text that is not content.</p></td></tr></table></div>
</body>
</html>
"""

_GUIDE_TEXT = {
    "en": ["What is Debian? Debian is an all-volunteer organization.",
           "Debian Developers are involved in a variety of activities.",
           "The details of this section are explained here."],
    "fr": ["Qu'est-ce que Debian ? Debian est une organisation de volontaires.",
           "Les développeurs Debian participent à des activités variées.",
           "Les détails de cette section sont expliqués ici."],
    "de": ["Was ist Debian? Debian ist eine Organisation von Freiwilligen.",
           "Debian-Entwickler sind an vielen Aktivitäten beteiligt.",
           "Die Einzelheiten dieses Abschnitts werden hier erklärt."],
}
_UNTRANSLATED = "This paragraph was left in English in every translation."


def _write_guide(root: Path, langs=("en", "fr", "de"), n_sections: int = 2) -> Path:
    for li, lang in enumerate(langs):
        d = root / lang
        (d / "images").mkdir(parents=True)
        (d / "install.css").write_text("body {}")
        (d / f"install.{lang}.txt.gz").write_bytes(gzip.compress(b"plain text version"))
        for s in range(n_sections):
            p1, p2, p3 = (f"{t} [{s}]" for t in _GUIDE_TEXT[lang])
            page = _PAGE.format(title=f"{s}. Section", anchor=f"section-{s}",
                                generated=f"idm{1000 * li + s}",  # differs per language
                                p1=p1, p2=p2, p3=p3, same=_UNTRANSLATED)
            name = f"ch01s{s:02d}.html"
            if lang == "de" and s == 0:  # a gzipped page is read too
                (d / (name + ".gz")).write_bytes(gzip.compress(page.encode()))
            else:
                (d / name).write_text(page, encoding="utf-8")
    return root


_PO_HEADER = r'''# Translation of Django.
# Copyright (C) Django Software Foundation and individual contributors.
msgid ""
msgstr ""
"Project-Id-Version: django\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n > 1);\n"

'''

_PO_FR = _PO_HEADER + r'''#: contrib/admin/options.py:10
msgid "Afrikaans"
msgstr "Afrikaans (fr)"

#: forms/fields.py:20
msgid ""
"Ensure this value has at most %(max)d character (it has "
"%(length)d)."
msgstr ""
"Assurez-vous que cette valeur comporte au plus %(max)d caractère "
"(actuellement %(length)d)."

#, python-format
msgid "%(count)d item"
msgid_plural "%(count)d items"
msgstr[0] "%(count)d élément"
msgstr[1] "%(count)d éléments"

#, fuzzy
msgid "Fuzzy message"
msgstr "Message flou"

msgid "Untranslated"
msgstr ""

msgctxt "month name"
msgid "May"
msgstr "mai"

msgctxt "verb"
msgid "May"
msgstr "pouvoir"

msgid "Say \"hi\"\tnow"
msgstr "Dites \"salut\"\tmaintenant"

#~ msgid "Obsolete"
#~ msgstr "Obsolète"
'''

_PO_DE = _PO_HEADER + r'''msgid "Afrikaans"
msgstr "Afrikaans (de)"

msgid ""
"Ensure this value has at most %(max)d character (it has "
"%(length)d)."
msgstr "Stellen Sie sicher, dass der Wert höchstens %(max)d Zeichen hat."

msgid "%(count)d item"
msgid_plural "%(count)d items"
msgstr[0] "%(count)d Element"
msgstr[1] "%(count)d Elemente"

#, fuzzy, python-format
msgid "Fuzzy message"
msgstr "Unscharf"

msgid "Untranslated"
msgstr "Übersetzt"
'''

_PO_EN = _PO_HEADER + r'''msgid "Afrikaans"
msgstr ""

msgid "Untranslated"
msgstr ""
'''

_PO_ADMIN_FR = _PO_HEADER + r'''msgid "Log out"
msgstr "Déconnexion"

msgid "Afrikaans"
msgstr "Afrikaans (admin)"
'''


def _write_po_tree(root: Path) -> Path:
    for rel, text in [("conf/locale/fr/LC_MESSAGES/django.po", _PO_FR),
                      ("conf/locale/de/LC_MESSAGES/django.po", _PO_DE),
                      ("conf/locale/en/LC_MESSAGES/django.po", _PO_EN),
                      ("contrib/admin/locale/fr/LC_MESSAGES/django.po", _PO_ADMIN_FR)]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    (root / "conf/locale/fr/LC_MESSAGES/django.mo").write_bytes(b"\x00binary")
    (root / "conf/locale/fr/__init__.py").write_text("")
    return root


_MGSM = {
    "en": [("Janet has 3 apples and buys 2 more. How many apples does she have?", "5"),
           ("A train travels 60 km in 1 hour. How far does it go in 3 hours?", "180"),
           ("Tom reads 10 pages a day. How many pages in a week?", "70")],
    "fr": [("Janet a 3 pommes et en achète 2. Combien de pommes a-t-elle ?", "5"),
           ("Un train parcourt 60 km en 1 heure. Quelle distance en 3 heures ?", "180"),
           ("Tom lit 10 pages par jour. Combien de pages en une semaine ?", "70")],
}


def _write_mgsm(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for lang, rows in _MGSM.items():
        # the original files: no header, question<TAB>answer, quotes left as they are
        (d / f"mgsm_{lang}.tsv").write_text(
            "".join(f'{q} "quoted"\t{a}\n' for q, a in rows), encoding="utf-8")
    return d


def _many_rows(n=300, langs=("aa", "bb", "cc")):
    return [{"id": f"item{i}", "task": lang, "text": f"{lang} sentence number {i}"}
            for i in range(n) for lang in langs]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


# --------------------------------------------------------------------------- registry
def test_sources_listed():
    assert set(C.list_sources()) >= {"debian-installation-guide", "django", "mgsm",
                                     "jsonl", "csv"}
    assert C.DEFAULT_SOURCE in C.list_sources()


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown corpus source 'nope'.*django"):
        C.load_corpus("nope")


def test_unknown_option():
    with pytest.raises(ValueError, match="does not take option"):
        C.load_corpus("jsonl", path="x.jsonl", colour="red")


# --------------------------------------------------------------------------- split helpers
def test_split_of_is_stable_and_salt_free():
    # Fixed values: the split must not depend on the process (PYTHONHASHSEED) or machine.
    got = [C.split_of(f"k{i}", 0.5, seed=0) for i in range(8)]
    assert got == [C.split_of(f"k{i}", 0.5, seed=0) for i in range(8)]
    assert C.stable_unit("split", 0, "k0") == pytest.approx(C.stable_unit("split", 0, "k0"))
    assert abs(C.stable_unit("split", 0, "abc") - 0.4412906243173801) < 1e-12
    assert C.split_of("x", 0.0) == "train" and C.split_of("x", 1.0) == "heldout"


def test_three_way_split_is_disjoint_deterministic_and_keeps_heldout(tmp_path):
    data = tmp_path / "c.jsonl"
    rows = [{"task": lang, "key": f"k{i}", "text": f"{lang} text {i}"} for lang in ("aa", "bb") for i in range(400)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    kw = dict(path=str(data), key_column="key", heldout_fraction=0.2, seed=5)
    c = C.load_corpus("jsonl", validation_fraction=0.25, **kw)
    again = C.load_corpus("jsonl", validation_fraction=0.25, **kw)
    two_way = C.load_corpus("jsonl", **kw)
    for t in ("aa", "bb"):
        s = c.tasks[t]
        ids = {name: set(getattr(s, f"{name}_ids")) for name in C.SPLITS}
        assert all(ids.values())                                       # every split has text
        assert not (ids["train"] & ids["validation"] or ids["train"] & ids["heldout"]
                    or ids["validation"] & ids["heldout"])              # disjoint
        assert len(s) == 400 and sum(map(len, ids.values())) == 400    # and covering
        assert 0.15 < len(s.validation) / 400 < 0.35 and 0.12 < len(s.heldout) / 400 < 0.28
        assert (s.train, s.validation, s.heldout) == (again.tasks[t].train, again.tasks[t].validation,
                                                      again.tasks[t].heldout)   # deterministic
        assert s.heldout == two_way.tasks[t].heldout                   # validation comes out of train only
        assert set(two_way.tasks[t].train) == set(s.train) | set(s.validation)
        assert s.split("validation") == s.validation
    # parallel keys land in the same split in every task
    assert c.tasks["aa"].validation_ids == c.tasks["bb"].validation_ids
    assert C.split_of("k1", 0.2, 5, 0.25) == ("heldout" if "k1" in c.tasks["aa"].heldout_ids else
                                              "validation" if "k1" in c.tasks["aa"].validation_ids else "train")
    with pytest.raises(C.CorpusError, match="validation_fraction"):
        C.load_corpus("jsonl", validation_fraction=0.9, **kw)
    with pytest.raises(C.CorpusError, match="split"):
        c.tasks["aa"].split("test")


# --------------------------------------------------------------------------- guide
def test_guide_paragraphs(tmp_path):
    root = _write_guide(tmp_path / "guide")
    assert C.available_tasks("debian-installation-guide", root=root) == ["de", "en", "fr"]
    c = C.load_corpus("debian-installation-guide", root=root, heldout_fraction=0.0)
    assert c.name == "debian-installation-guide"
    en = c.tasks["en"].train
    assert en[0] == "What is Debian? Debian is an all-volunteer organization. [0] Debian & more."
    # nav headers/footers, <pre> blocks and short paragraphs are not text
    joined = " ".join(en)
    assert "Navigation" not in joined and "apt-get" not in joined and "Short." not in joined
    assert "Prev" not in joined
    # the untranslated paragraph stays in English only, by default
    assert _UNTRANSLATED in en
    assert _UNTRANSLATED not in c.tasks["fr"].train
    assert len(c.tasks["fr"]) == len(c.tasks["de"]) == 2 * 3 and len(c.tasks["en"]) == 2 * 4
    assert "Was ist Debian? Debian ist eine Organisation von Freiwilligen. [0] Debian & more." \
        in c.tasks["de"].train  # from the gzipped page
    kept = C.load_corpus("debian-installation-guide", root=root, drop_untranslated=False)
    assert _UNTRANSLATED in kept.tasks["fr"].train + kept.tasks["fr"].heldout
    # min_chars
    short = C.load_corpus("debian-installation-guide", root=root, min_chars=1, tasks=["en"])
    assert "Short." in short.tasks["en"].train + short.tasks["en"].heldout


def test_guide_split_is_parallel_by_section(tmp_path):
    root = _write_guide(tmp_path / "guide", n_sections=40)
    c = C.load_corpus("debian-installation-guide", root=root, heldout_fraction=0.3)

    def sections(ids):
        return {i.rsplit("#", 1)[0] for i in ids}

    ref = sections(c.tasks["en"].heldout_ids)
    assert 0 < len(ref) < 80
    for lang in ("fr", "de"):
        assert sections(c.tasks[lang].heldout_ids) == ref
        assert sections(c.tasks[lang].train_ids) == sections(c.tasks["en"].train_ids)
        assert not sections(c.tasks[lang].heldout_ids) & sections(c.tasks[lang].train_ids)
    # generated ids (idm123) never name a section: keys are the real anchors
    assert all("idm" not in i for i in c.tasks["fr"].train_ids)


def test_guide_missing_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_sources, "GUIDE_ROOT", str(tmp_path / "not-installed"))
    with pytest.raises(C.SourceNotAvailableError,
                       match=r"apt-get install -y installation-guide-amd64"):
        C.load_corpus()
    with pytest.raises(C.SourceNotAvailableError, match="installation-guide-amd64"):
        C.available_tasks("default")
    (tmp_path / "empty").mkdir()  # exists but holds no <lang>/*.html (dpkg path-exclude)
    with pytest.raises(C.SourceNotAvailableError, match="apt-get install"):
        C.load_corpus("debian-installation-guide", root=tmp_path / "empty")


# --------------------------------------------------------------------------- .po / django
def test_parse_po_entries():
    entries = C.parse_po(_PO_FR)
    by = {(e.msgctxt, e.msgid): e for e in entries}
    assert by[(None, "")].msgstr.startswith("Project-Id-Version: django\n")
    long_id = "Ensure this value has at most %(max)d character (it has %(length)d)."
    assert by[(None, long_id)].msgstr == ("Assurez-vous que cette valeur comporte au plus "
                                          "%(max)d caractère (actuellement %(length)d).")
    plural = by[(None, "%(count)d item")]
    assert plural.msgid_plural == "%(count)d items"
    assert plural.msgstr == "%(count)d élément"
    assert plural.msgstr_plural == {0: "%(count)d élément", 1: "%(count)d éléments"}
    assert by[(None, "Fuzzy message")].fuzzy
    assert by[("month name", "May")].msgstr == "mai"
    assert by[("verb", "May")].msgstr == "pouvoir"
    assert by[(None, 'Say "hi"\tnow')].msgstr == 'Dites "salut"\tmaintenant'
    assert by[(None, "Obsolete")].obsolete
    assert not by[(None, "Afrikaans")].fuzzy


def test_parse_po_rejects_garbage():
    with pytest.raises(ValueError, match="cannot parse"):
        C.parse_po('msgid "a"\nmsgstr "b"\nnonsense here\n', "bad.po")


def test_django_loader(tmp_path):
    root = _write_po_tree(tmp_path / "django")
    assert C.available_tasks("django", root=root) == ["de", "en", "fr"]
    c = C.load_corpus("django", root=root, heldout_fraction=0.0)
    fr = c.tasks["fr"].train
    assert "Afrikaans (fr)" in fr and "Afrikaans (admin)" in fr and "Déconnexion" in fr
    assert "%(count)d élément" in fr and "%(count)d éléments" not in fr
    assert "mai" in fr and "pouvoir" in fr
    assert "Message flou" not in fr and "Obsolète" not in fr
    assert "" not in fr and "Untranslated" not in fr
    assert len(fr) == 8
    de = c.tasks["de"].train
    assert "Unscharf" not in de and "Übersetzt" in de and len(de) == 4
    # the source language is filled from the msgids
    assert sorted(c.tasks["en"].train) == ["Afrikaans", "Untranslated"]
    # parallel: the same msgid has the same id (and so the same split) in every locale
    common = set(c.tasks["fr"].train_ids) & set(c.tasks["de"].train_ids)
    assert "conf:django||Afrikaans" in common and len(common) == 3


def test_django_missing_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "django", None)  # makes `import django` fail
    with pytest.raises(C.SourceNotAvailableError, match=r"pip install Django==\d"):
        C.load_corpus("django")


# --------------------------------------------------------------------------- mgsm
def test_mgsm_local_tsv(tmp_path):
    d = _write_mgsm(tmp_path / "mgsm")
    assert C.available_tasks("mgsm", data_dir=d) == ["en", "fr"]
    c = C.load_corpus("mgsm", data_dir=d, heldout_fraction=0.0)
    assert c.tasks["en"].train[0] == ('Janet has 3 apples and buys 2 more. How many apples '
                                      'does she have? "quoted"')
    assert c.tasks["en"].train_ids == c.tasks["fr"].train_ids == ["mgsm#0", "mgsm#1", "mgsm#2"]
    qa = C.load_corpus("mgsm", data_dir=d, field="question+answer", tasks="fr")
    texts = qa.tasks["fr"].train + qa.tasks["fr"].heldout
    assert any(t.endswith("\n180") for t in texts)
    with pytest.raises(ValueError, match="field"):
        C.load_corpus("mgsm", data_dir=d, field="solution")


def test_mgsm_through_datasets_same_parser(tmp_path, monkeypatch):
    """The hub path: a stand-in `datasets` module returns the rows that
    load_dataset("juletxara/mgsm", lang, split="test") returns; the text and split
    must equal those read from the TSV files with the same content."""
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"question": f'{q} "quoted"', "answer": None, "answer_number": int(a),
                 "equation_solution": None} for q, a in _MGSM[config]]

    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=load_dataset))
    hub = C.load_corpus("mgsm", tasks=["en", "fr"], heldout_fraction=0.5, seed=3,
                        field="question+answer")
    assert calls == [("juletxara/mgsm", "en", "test"), ("juletxara/mgsm", "fr", "test")]
    local = C.load_corpus("mgsm", data_dir=_write_mgsm(tmp_path / "m"), heldout_fraction=0.5,
                          seed=3, field="question+answer")
    assert hub.tasks == local.tasks
    assert len(C.available_tasks("mgsm")) == 11


def test_mgsm_without_datasets_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(C.SourceNotAvailableError, match="pip install datasets"):
        C.load_corpus("mgsm", tasks=["en"])


# --------------------------------------------------------------------------- jsonl / csv
def test_jsonl_and_csv_same_content(tmp_path):
    rows = [{"lang": "en", "sentence": "Hello world.", "n": 1},
            {"lang": "fr", "sentence": "Bonjour le monde.", "n": 1},
            {"lang": "en", "sentence": "Good night.", "n": 2},
            {"lang": "fr", "sentence": "", "n": 2}]
    jl = _write_jsonl(tmp_path / "d.jsonl", rows)
    cv = tmp_path / "d.csv"
    with open(cv, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["lang", "sentence", "n"])
        w.writeheader()
        w.writerows(rows)
    opts = dict(text_column="sentence", task_column="lang", heldout_fraction=0.0)
    a = C.load_corpus("jsonl", path=jl, **opts)
    b = C.load_corpus("csv", path=str(cv), **opts)
    assert a.tasks["en"].train == b.tasks["en"].train == ["Hello world.", "Good night."]
    assert a.tasks["fr"].train == b.tasks["fr"].train == ["Bonjour le monde."]
    assert C.available_tasks("csv", path=cv, task_column="lang", text_column="sentence") \
        == ["en", "fr"]
    # key_column makes items parallel
    k = C.load_corpus("jsonl", path=[jl], key_column="n", **opts)
    assert k.tasks["en"].train_ids == ["1", "2"] and k.tasks["fr"].train_ids == ["1"]


def test_table_errors(tmp_path):
    jl = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "task": "a"}])
    with pytest.raises(ValueError, match="no column 'lang'"):
        C.load_corpus("jsonl", path=jl, task_column="lang")
    with pytest.raises(C.SourceNotAvailableError, match="no such file"):
        C.load_corpus("csv", path=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="path="):
        C.load_corpus("jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="invalid JSON"):
        C.load_corpus("jsonl", path=tmp_path / "bad.jsonl")


# --------------------------------------------------------------------------- splits
@pytest.fixture
def many(tmp_path):
    return _write_jsonl(tmp_path / "many.jsonl", _many_rows())


def test_split_deterministic_and_seeded(many):
    a = C.load_corpus("jsonl", path=many, key_column="id", heldout_fraction=0.2, seed=0)
    b = C.load_corpus("jsonl", path=many, key_column="id", heldout_fraction=0.2, seed=0)
    assert a.tasks == b.tasks
    c = C.load_corpus("jsonl", path=many, key_column="id", heldout_fraction=0.2, seed=1)
    assert c.tasks["aa"].heldout != a.tasks["aa"].heldout
    for s in a.tasks.values():
        assert len(s) == 300 and 30 <= len(s.heldout) <= 90
        assert not set(s.train) & set(s.heldout)


def test_split_parallel_across_tasks(many):
    c = C.load_corpus("jsonl", path=many, key_column="id", heldout_fraction=0.25, seed=7)
    assert c.tasks["aa"].heldout_ids == c.tasks["bb"].heldout_ids == c.tasks["cc"].heldout_ids
    assert c.tasks["aa"].train_ids == c.tasks["cc"].train_ids


def test_max_items_per_task_keeps_parallel_items(many):
    c = C.load_corpus("jsonl", path=many, key_column="id", max_items_per_task=50, seed=2)
    ids = [sorted(s.train_ids + s.heldout_ids) for s in c.tasks.values()]
    assert len(ids[0]) == 50 and ids[0] == ids[1] == ids[2]
    again = C.load_corpus("jsonl", path=many, key_column="id", max_items_per_task=50, seed=2)
    assert again.tasks == c.tasks
    with pytest.raises(ValueError):
        C.load_corpus("jsonl", path=many, max_items_per_task=0)
    with pytest.raises(ValueError):
        C.load_corpus("jsonl", path=many, heldout_fraction=1.5)


def test_task_filtering_and_unknown_task(many):
    c = C.load_corpus("jsonl", path=many, tasks=["cc", "aa"])
    assert c.task_names == ["cc", "aa"]
    assert C.load_corpus("jsonl", path=many, tasks="bb").task_names == ["bb"]
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['zz'\].*available tasks: aa, bb, cc"):
        C.load_corpus("jsonl", path=many, tasks=["aa", "zz"])


def test_stats_and_cli(many, capsys):
    c = C.load_corpus("jsonl", path=many, key_column="id")
    st = c.stats()["aa"]
    assert st["train_items"] + st["heldout_items"] == 300
    assert cli.main(["corpus", "jsonl", "--option", f"path={many}", "--option", "key_column=id",
                     "--tasks", "aa"]) == 0
    out = capsys.readouterr().out
    assert "jsonl: 1 tasks" in out and "aa" in out
    assert cli.main(["corpus", "jsonl", "--option", f"path={many}", "--tasks", "zz"]) == 2


# --------------------------------------------------------------------------- real sources
_guide_installed = Path(C.GUIDE_ROOT, "en").is_dir()


@pytest.mark.skipif(not _guide_installed,
                    reason=f"Debian installation guide not installed ({C.GUIDE_ROOT})")
def test_real_default_corpus():
    c = C.load_corpus("default")
    assert c.name == C.DEFAULT_SOURCE
    assert len(c.tasks) >= 10
    for lang, s in c.tasks.items():
        assert s.train and s.heldout, lang
        assert sum(map(len, s.train)) > 50_000, lang
    # parallel: a section is held out in every language or in none (a language may lack
    # a section whose paragraphs were all left untranslated, hence <=)
    def sections(ids):
        return {i.rsplit("#", 1)[0] for i in ids}

    held = sections(c.tasks["en"].heldout_ids)
    train = sections(c.tasks["en"].train_ids)
    for lang, s in c.tasks.items():
        assert sections(s.heldout_ids) <= held and sections(s.train_ids) <= train, lang
        assert len(sections(s.heldout_ids)) >= 0.7 * len(held), lang  # vi: 17 of 22


def _django_installed() -> bool:
    try:
        import django  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _django_installed(), reason="Django is not installed")
def test_real_django_catalogues():
    tasks = C.available_tasks("django")
    assert len(tasks) >= 50 and {"fr", "de", "ja"} <= set(tasks)
    c = C.load_corpus("django", tasks=["fr", "de"], heldout_fraction=0.2)
    for s in c.tasks.values():
        assert len(s.train) > 300 and s.heldout
    fr, de = c.tasks["fr"], c.tasks["de"]
    de_all = set(de.train_ids) | set(de.heldout_ids)
    shared_heldout = [i for i in fr.heldout_ids if i in de_all]
    assert shared_heldout and set(shared_heldout) <= set(de.heldout_ids)
