"""A dense safetensors copy of every GGUF file `specfair.models.load_pair` dequantises, so the
dequantisation (60-90 s for a 1.5B Q4_K_M verifier on a 2-core CPU) is paid once per file.

Where: ``cache_dir`` if given, else ``$SPECFAIR_CACHE/gguf``, else
``$XDG_CACHE_HOME/specfair/gguf`` (``~/.cache/specfair/gguf`` when XDG_CACHE_HOME is unset).
One entry per file, named by the SHA-256 of the GGUF file's bytes: ``<root>/<sha256>/`` holds
the model (``save_pretrained`` with safetensors), its tokenizer and ``specfair-cache.json``.

Hashing: the file is read in 8 MiB chunks.  So that a multi-GB file is not re-read at every
load, the digest is remembered in ``<root>/hashes.json`` keyed by the file's resolved path, size
and modification time (ns); a file rewritten in place gets a new size or mtime and is hashed
again.

Trust: an entry is built in a temporary directory ``<root>/.tmp-*`` and renamed into place only
when complete, ``specfair-cache.json`` (the digest and every file's size) written last.  An
entry without that marker, with a file missing or of another size, or with another digest is
not used: it is removed and rebuilt.  Sizes, not contents, are checked at load (hashing the
dense copy would cost what the cache saves)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ._util import write_json

MARKER = "specfair-cache.json"
HASH_INDEX = "hashes.json"
CHUNK = 8 << 20
FORMAT = 1


def cache_root(cache_dir=None) -> Path:
    """The GGUF cache directory (see the module docstring); not created here."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SPECFAIR_CACHE")
    if env:
        return Path(env) / "gguf"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "specfair" / "gguf"


def sha256_file(path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path, root: Path) -> str:
    """`sha256_file`, remembered in ``root/hashes.json`` by (resolved path, size, mtime_ns)."""
    p = Path(path).resolve()
    st = p.stat()
    index_path = root / HASH_INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    known = index.get(str(p))
    if isinstance(known, dict) and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return known["sha256"]
    digest = sha256_file(p)
    index[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_json(index_path, index)
    except OSError:
        pass  # a read-only cache still works; the file is hashed again next time
    return digest


def _trusted(entry: Path, digest: str) -> bool:
    try:
        marker = json.loads((entry / MARKER).read_text(encoding="utf-8"))
        if marker.get("format") != FORMAT or marker.get("sha256") != digest or not marker.get("files"):
            return False
        return all((entry / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def lookup(gguf_path, cache_dir=None) -> tuple[Path, Path | None]:
    """(entry directory for this file, the entry if complete and trusted else None).  An
    untrusted entry (half-written, truncated, foreign) is removed."""
    root = cache_root(cache_dir)
    entry = root / file_digest(gguf_path, root)
    if _trusted(entry, entry.name):
        return entry, entry
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    return entry, None


def store(entry: Path, model, tokenizer, source) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` as the cache ``entry``, atomically: built
    in a temporary sibling directory, the marker written last, then renamed into place.
    Returns ``entry``.  If another process completed the same entry first, its copy is kept."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        write_json(tmp / MARKER, {"format": FORMAT, "sha256": entry.name, "source": str(source), "files": files})
        try:
            os.replace(tmp, entry)
        except OSError:
            if not _trusted(entry, entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
