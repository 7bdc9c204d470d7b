"""The `specfair` command line: one KEY=VALUE parser for every command, so a corpus option
reaches the corpus with the same type whichever command passes it."""
from __future__ import annotations

import argparse

import pytest

from specfair import cli
from specfair import corpus as corpus_mod
from specfair._util import parse_key_value


def test_parse_key_value_types():
    assert parse_key_value("drop_untranslated=false") == ("drop_untranslated", False)
    assert parse_key_value("drop_untranslated=True") == ("drop_untranslated", True)
    assert parse_key_value("min_chars=-3") == ("min_chars", -3)
    assert parse_key_value("path=a=b.jsonl") == ("path", "a=b.jsonl")
    assert parse_key_value("root=") == ("root", "")
    for bad in ("novalue", "=x"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_key_value(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_key_value("novalue", argparse.ArgumentTypeError)


@pytest.mark.parametrize("argv", [
    ["audit", "--no-progress"],
    ["scdf", "--no-progress", "--no-eval"],
    ["train-pair", "--preset", "micro", "--no-progress"],
], ids=["audit", "scdf", "train-pair"])
def test_drop_untranslated_false_reaches_the_corpus_as_false(argv, monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_load_corpus(source="default", tasks=None, heldout_fraction=0.1, seed=0, max_items_per_task=None,
                         validation_fraction=0.0, **options):
        seen.update(options)
        raise corpus_mod.CorpusError("stopped by the test after reading the options")

    monkeypatch.setattr(corpus_mod, "load_corpus", fake_load_corpus)
    rc = cli.main([*argv, "--out", str(tmp_path / "out"), "--corpus-option", "drop_untranslated=false",
                   "--corpus-option", "min_chars=5"])
    assert rc == 2 and "stopped by the test" in capsys.readouterr().err
    assert seen == {"drop_untranslated": False, "min_chars": 5}


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["audit", "--corpus-option", "novalue"])
    assert e.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_corpus_command_lists_split_sizes(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text('{"task": "aa", "text": "one"}\n{"task": "bb", "text": "two"}\n', encoding="utf-8")
    assert cli.main(["corpus", "jsonl", "--option", f"path={data}"]) == 0
    out = capsys.readouterr().out
    assert "jsonl: 2 tasks" in out and "aa" in out and "bb" in out
