"""The dense safetensors cache of dequantised GGUF files (`specfair.gguf_cache` through
`load_pair`): the second load reads the cache instead of dequantising, gives the same logits
and tokenizer, ``cache=False`` / ``--no-cache`` skip it, and a half-written, truncated or
foreign entry is never trusted."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gguf")

import gguf_files  # noqa: E402  (tests/support)
from tiny_models import tiny_llama, tiny_tokenizer  # noqa: E402

from specfair import gguf_cache, models  # noqa: E402
from specfair.models import load_pair  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = ["the quick brown fox jumps over the lazy dog", "speculative decoding drafts tokens and verifies them",
        "le renard brun saute par dessus le chien", "der schnelle braune fuchs springt", "numbers 0 1 2 3"] * 4


def logits(model, tok):
    enc = tok(TEXT[:5], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-cache")
    tok = tiny_tokenizer(TEXT, specials=("<pad>", "<s>", "</s>"), padding_side="right")
    src = {"verifier": tiny_llama(len(tok), 0, hidden=32, layers=2, heads=4, kv_heads=2, max_pos=64,
                                  pad=tok.pad_token_id),
           "drafter": tiny_llama(len(tok), 1, hidden=32, layers=1, heads=4, kv_heads=2, max_pos=64,
                                 pad=tok.pad_token_id)}
    paths = {r: gguf_files.write_llama_gguf(root / f"{r}.gguf", m, tok, qtype="Q8_0") for r, m in src.items()}
    return paths, tok


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = models.dequantise_gguf

    def counting(src, gguf, kw):
        calls.append(gguf)
        return real(src, gguf, kw)

    monkeypatch.setattr(models, "dequantise_gguf", counting)
    return calls


def _load(pair, **kw):
    paths, _ = pair
    return load_pair(paths["drafter"], paths["verifier"], device="cpu", **kw)


def test_second_load_reads_the_cache_with_the_same_logits(pair, tmp_path, counted):
    d0, v0, t0 = _load(pair, cache=False)
    assert sorted(counted) == ["drafter.gguf", "verifier.gguf"] and not list(tmp_path.iterdir())
    counted.clear()
    d1, v1, t1 = _load(pair, cache_dir=tmp_path)
    assert sorted(counted) == ["drafter.gguf", "verifier.gguf"]       # first load: dequantised and stored
    entries = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(entries) == 2 and all(len(p.name) == 64 for p in entries)
    for p in entries:
        assert (p / "model.safetensors").is_file() and (p / gguf_cache.MARKER).is_file()
        assert json.loads((p / gguf_cache.MARKER).read_text())["sha256"] == p.name
    assert {gguf_cache.sha256_file(f) for f in pair[0].values()} == {p.name for p in entries}
    counted.clear()
    d2, v2, t2 = _load(pair, cache_dir=tmp_path)
    assert counted == []                                                  # second load: the cache only
    assert t2.get_vocab() == t0.get_vocab()
    for text in TEXT[:5]:
        assert t2(text).input_ids == t0(text).input_ids
    for a, b, c in ((d0, d1, d2), (v0, v1, v2)):
        ref = logits(a, t0)
        assert torch.equal(logits(b, t0), ref) and torch.equal(logits(c, t2), ref)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_default_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECFAIR_CACHE", str(tmp_path / "c"))
    assert gguf_cache.cache_root() == tmp_path / "c" / "gguf"
    monkeypatch.delenv("SPECFAIR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert gguf_cache.cache_root() == tmp_path / "x" / "specfair" / "gguf"
    assert gguf_cache.cache_root(tmp_path / "given") == tmp_path / "given"


def test_hash_is_remembered_by_path_size_and_mtime(pair, tmp_path, monkeypatch):
    path = pair[0]["drafter"]
    reads = []
    real = gguf_cache.sha256_file
    monkeypatch.setattr(gguf_cache, "sha256_file", lambda p: reads.append(p) or real(p))
    first = gguf_cache.file_digest(path, tmp_path)
    assert gguf_cache.file_digest(path, tmp_path) == first and len(reads) == 1
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes())
    assert gguf_cache.file_digest(copy, tmp_path) == first and len(reads) == 2
    with open(copy, "ab") as f:       # the file changes: size and mtime differ, hashed again
        f.write(b"\0")
    assert gguf_cache.file_digest(copy, tmp_path) != first and len(reads) == 3


@pytest.mark.parametrize("damage", ["no_marker", "truncated", "missing_file", "other_digest"])
def test_a_damaged_entry_is_not_trusted_and_is_rebuilt(pair, tmp_path, counted, damage):
    _load(pair, cache_dir=tmp_path)
    entry = tmp_path / gguf_cache.sha256_file(pair[0]["verifier"])
    if damage == "no_marker":          # a crash before the marker: what a half cache looks like
        (entry / gguf_cache.MARKER).unlink()
    elif damage == "truncated":
        w = entry / "model.safetensors"
        w.write_bytes(w.read_bytes()[:-100])
    elif damage == "missing_file":
        (entry / "tokenizer.json").unlink()
    else:
        m = json.loads((entry / gguf_cache.MARKER).read_text())
        m["sha256"] = "0" * 64
        (entry / gguf_cache.MARKER).write_text(json.dumps(m))
    counted.clear()
    _, v, t = _load(pair, cache_dir=tmp_path)
    assert counted == ["verifier.gguf"]      # the damaged entry was not read: dequantised again
    assert json.loads((entry / gguf_cache.MARKER).read_text())["sha256"] == entry.name
    ref = load_pair(pair[0]["drafter"], pair[0]["verifier"], device="cpu", cache=False)[1]
    assert torch.equal(logits(v, t), logits(ref, t))


def test_a_crash_while_storing_leaves_no_entry(pair, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_cache, "write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _load(pair, cache_dir=tmp_path)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []      # no entry, no temporary directory


def test_bad_cache_arguments(pair):
    with pytest.raises(TypeError, match="cache must be a bool"):
        _load(pair, cache="no")
    with pytest.raises(TypeError, match="cache_dir"):
        _load(pair, cache_dir=3)
