"""`torchrun --nproc_per_node 2 -m specfair.audit ...` (gloo, two CPU processes) writes the
report one process writes: the teacher-forced windows are shared among the ranks batch by
batch and their per-window sums gathered, so every teacher-forced figure, its bootstrap
interval and the unfairness figures are equal bit for bit; rank 0 alone generates (same seed,
same tokens and acceptance) and writes.  Timing-based figures (seconds, measured speed-up,
the cost ratio c and the predictions made with it) are measured afresh and not compared."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
WORDS = {"aa": "the quick brown fox jumps over the lazy dog and runs far away from home",
         "bb": "ein schneller brauner fuchs springt ueber den faulen hund und laeuft weit weg"}
TEACHER_FORCED = ("task", "heldout_tokens", "alpha", "kl", "ce", "entropy", "verifier_ppl", "drafter_ppl",
                  "alpha_ci95", "kl_ci95", "ce_ci95")
GENERATED = ("prompts", "generated_tokens", "steps", "realised_acceptance", "generation_expected_acceptance")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-ranks")
    rng = np.random.default_rng(0)
    rows = []
    for t, s in WORDS.items():
        words = s.split()
        for i in range(150):
            rows.append({"task": t, "id": i, "text": " ".join(rng.permutation(words)[:rng.integers(8, 14)]) + f" {i}"})
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    tok = tiny_tokenizer([r["text"] for r in rows], specials=("<pad>", "<s>", "</s>"), padding_side="right")
    for role, (hidden, layers, seed, scale) in {"verifier": (32, 2, 1, 12.0), "drafter": (16, 1, 2, 8.0)}.items():
        model = tiny_llama(len(tok), seed, hidden=hidden, layers=layers, heads=4, kv_heads=4, max_pos=64,
                           logit_scale=scale, tie=True, pad=tok.pad_token_id, bos=tok.bos_token_id,
                           eos=tok.eos_token_id)
        model.save_pretrained(root / role)
        tok.save_pretrained(root / role)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audit(assets, out, launcher):
    # ~15 held-out paragraphs per task in windows of 8 tokens: several batches of 16 for both ranks
    args = ["-m", "specfair.audit", "--drafter", str(assets / "drafter"), "--verifier", str(assets / "verifier"),
            "--corpus", "jsonl", "--corpus-option", f"path={assets / 'corpus.jsonl'}", "--corpus-option",
            "key_column=id", "--num-prompts", "2", "--prompt-tokens", "4",
            "--max-new-tokens", "5", "--num-draft", "2", "--context-length", "8", "--teacher-forced-tokens", "400",
            "--bootstrap", "100", "--repeats", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "audit.json").read_text(encoding="utf-8")), sorted(p.name for p in out.iterdir())


def test_two_gloo_ranks_write_the_single_process_report(assets, tmp_path):
    one, files_one = _audit(assets, tmp_path / "one", [])
    two, files_two = _audit(assets, tmp_path / "two", ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                                                       "--master_addr", "127.0.0.1", "--master_port",
                                                       str(_free_port())])
    assert files_one == files_two
    assert (one["environment"]["ranks"], two["environment"]["ranks"]) == (1, 2)
    assert sum(t["heldout_tokens"] for t in one["tasks"]) > 16 * 8 * 2     # more than 2 batches: both ranks work
    assert len(one["tasks"]) == len(two["tasks"]) == 2
    for a, b in zip(one["tasks"], two["tasks"]):
        for k in TEACHER_FORCED + GENERATED:
            assert a[k] == b[k], (a["task"], k)
    for k in ("U_ce", "U_kl", "alpha_variance", "alpha_max_min_ratio"):
        assert one["summary"]["unfairness"][k] == two["summary"]["unfairness"][k], k
    for k in ("CE vs alpha", "KL vs alpha"):
        assert one["summary"]["correlations"][k] == two["summary"]["correlations"][k], k
