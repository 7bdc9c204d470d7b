"""A user's corpus file that is not UTF-8 fails with its file and line, in every format."""
from __future__ import annotations

import pytest

from specfair import corpus as corpus_mod
from specfair.corpus_formats import CorpusError, read_utf8


@pytest.mark.parametrize("fmt, head, bad", [
    ("jsonl", b'{"task": "a", "text": "one"}\n{"task": "a", "text": "two"}\n', '{"task": "a", "text": "caf\u00e9"}\n'),
    ("csv", b"task,text\na,one\n", "a,caf\u00e9\n"),
])
def test_table_source_not_utf8(tmp_path, fmt, head, bad):
    p = tmp_path / f"c.{fmt}"
    p.write_bytes(head + bad.encode("latin-1"))
    line = head.count(b"\n") + 1
    with pytest.raises(CorpusError, match=rf"c\.{fmt}:{line}: not UTF-8 \(byte 0xe9 at column \d+\)"):
        corpus_mod.load_corpus(fmt, path=str(p))


def test_mgsm_tsv_not_utf8(tmp_path):
    (tmp_path / "mgsm_fr.tsv").write_bytes("q1\t1\nq\u00e9\t2\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"mgsm_fr\.tsv:2: not UTF-8 \(byte 0xe9 at column 2\)"):
        corpus_mod.load_corpus("mgsm", data_dir=str(tmp_path))


def test_utf8_with_bom_reads(tmp_path):
    p = tmp_path / "b.csv"
    p.write_bytes("\ufefftask,text\na,caf\u00e9\n".encode("utf-8"))
    assert read_utf8(p) == "task,text\na,caf\u00e9\n"
