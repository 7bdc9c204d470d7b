"""`specfair audit` on a tiny pair saved to disk and a JSONL corpus: the JSON
schema, the figures against values computed directly, the plots, determinism, and bad
input; plus one small run on the shipped default pair and corpus."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from tiny_models import tiny_llama, tiny_tokenizer  # noqa: E402

from specfair import audit as audit_mod  # noqa: E402
from specfair import cli  # noqa: E402

TASKS = ["aa", "bb", "cc"]
SENTENCES = {
    "aa": "the quick brown fox jumps over the lazy dog and runs far away from home",
    "bb": "ein schneller brauner fuchs springt ueber den faulen hund und laeuft weit weg",
    "cc": "быстрая коричневая лиса прыгает через ленивую собаку и убегает далеко",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A JSONL corpus with three tasks and a tiny verifier/drafter pair, saved in Hugging
    Face format with a shared BPE tokenizer."""
    root = tmp_path_factory.mktemp("audit")
    rows = []
    rng = np.random.default_rng(0)
    for t, s in SENTENCES.items():
        words = s.split()
        for i in range(40):
            k = rng.integers(8, len(words) + 1)
            rows.append({"task": t, "id": i, "text": " ".join(rng.permutation(words)[:k]) + f" {i}"})
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")

    hf = tiny_tokenizer([r["text"] for r in rows], specials=("<pad>", "<s>", "</s>"), padding_side="right")
    paths = {}
    for role, (hidden, layers, seed) in {"verifier": (48, 2, 1), "drafter": (24, 1, 2)}.items():
        # sharper, more distinct distributions than the default init
        model = tiny_llama(len(hf), seed, hidden=hidden, layers=layers, heads=4, kv_heads=4, max_pos=128,
                           logit_scale=20.0 if role == "verifier" else 12.0, tie=True, pad=hf.pad_token_id,
                           bos=hf.bos_token_id, eos=hf.eos_token_id)
        paths[role] = root / role
        model.save_pretrained(paths[role])
        hf.save_pretrained(paths[role])
    return {"root": root, "corpus": corpus, **paths}


def _args(tiny, out, *extra):
    return ["audit", "--drafter", str(tiny["drafter"]), "--verifier", str(tiny["verifier"]),
            "--corpus", "jsonl", "--corpus-option", f"path={tiny['corpus']}",
            "--corpus-option", "key_column=id", "--num-prompts", "3", "--prompt-tokens", "4",
            "--max-new-tokens", "6", "--num-draft", "3", "--context-length", "32",
            "--teacher-forced-tokens", "400", "--bootstrap", "200", "--seed", "3", "--no-progress",
            "--repeats", "2",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def report(tiny):
    out = tiny["root"] / "out"
    rc = cli.main(_args(tiny, out))
    assert rc == 0
    return out, json.loads((out / "audit.json").read_text(encoding="utf-8"))


def test_json_schema(report):
    out, r = report
    assert r["schema"] == "specfair.audit/1"
    assert set(r) == {"schema", "summary", "tasks", "config", "environment"}
    assert [t["task"] for t in r["tasks"]] == TASKS
    for t in r["tasks"]:
        for k in ("alpha", "kl", "ce", "entropy", "verifier_ppl", "drafter_ppl", "predicted_speedup",
                  "realised_acceptance", "tokens_per_step", "measured_speedup", "speculative_seconds",
                  "verifier_seconds", "generated_tokens", "heldout_tokens"):
            assert isinstance(t[k], (int, float)) and math.isfinite(t[k]), (t["task"], k, t[k])
        assert 0 <= t["alpha"] <= 1 and 0 <= t["realised_acceptance"] <= 1
        assert t["alpha_ci95"][0] <= t["alpha"] <= t["alpha_ci95"][1]
        assert t["generated_tokens"] == 3 * 6     # no EOS given: every prompt runs to max_new_tokens
    s = r["summary"]
    for k in ("U_ce", "U_kl", "alpha_variance", "alpha_max_min_ratio", "predicted_speedup_variance",
              "measured_speedup_variance", "measured_speedup_max_min_ratio"):
        assert k in s["unfairness"], k
    assert {"CE vs alpha", "KL vs alpha", "alpha vs measured speed-up",
            "realised acceptance vs measured speed-up"} <= set(s["correlations"])
    assert s["fastest_task"] in TASKS and s["slowest_task"] in TASKS
    assert r["config"]["num_draft"] == 3 and r["config"]["max_new_tokens"] == 6
    assert r["environment"]["torch"] == torch.__version__
    csv_lines = (out / "audit.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) == 1 + len(TASKS) and csv_lines[0].startswith("task,")
    md = (out / "audit.md").read_text(encoding="utf-8")
    assert f"Fastest task: {s['fastest_task']}" in md and "| task |" in md
    assert ("Break-even acceptance at K = 3" in md) == s["speculation_can_pay"]
    assert ("Speculation cannot pay at K = 3" in md) == (not s["speculation_can_pay"])


def test_figures_equal_direct_computation(report, tiny):
    """alpha, KL, CE, H(p) per task recomputed with plain torch on the same windows; the
    unfairness figures, the correlation and the disparity ratio recomputed from the rows."""
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specfair import corpus as corpus_mod
    from specfair.teacher_forced import token_windows
    from specfair_kernels.stats import speedup

    _, r = report
    ver = AutoModelForCausalLM.from_pretrained(tiny["verifier"]).eval()
    dra = AutoModelForCausalLM.from_pretrained(tiny["drafter"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["verifier"])
    corpus = corpus_mod.load_corpus("jsonl", path=str(tiny["corpus"]), key_column="id")
    w = token_windows(tok, {t: corpus.tasks[t].heldout for t in TASKS}, context_length=32,
                      max_tokens_per_task=400)
    with torch.no_grad():
        lp = torch.log_softmax(ver(input_ids=w.input_ids).logits.double(), -1)
        lq = torch.log_softmax(dra(input_ids=w.input_ids).logits.double(), -1)
    p = lp.exp()
    alpha = torch.minimum(p, lq.exp()).sum(-1)
    kl = (p * (lp - lq)).sum(-1)
    ce = -(p * lq).sum(-1)
    ent = -(p * lp).sum(-1)
    rows = {t["task"]: t for t in r["tasks"]}
    for i, t in enumerate(TASKS):
        m = w.mask & (w.task[:, None] == i)
        for name, v in (("alpha", alpha), ("kl", kl), ("ce", ce), ("entropy", ent)):
            assert rows[t][name] == pytest.approx(float(v[m].mean()), rel=2e-5, abs=2e-6), (t, name)
        assert rows[t]["heldout_tokens"] == int(m.sum())
        c = r["summary"]["cost_ratio"]
        r_k = r["summary"]["verify_cost"]
        assert r_k > 0 and rows[t]["predicted_speedup_rk1"] == pytest.approx(speedup(rows[t]["alpha"], 3, c),
                                                                             rel=1e-12)
        assert rows[t]["predicted_speedup"] == pytest.approx(
            (1 - rows[t]["alpha"] ** 4) / (1 - rows[t]["alpha"]) / (3 * c + r_k), rel=1e-9)
        assert rows[t]["measured_over_predicted"] == pytest.approx(
            rows[t]["measured_speedup"] / rows[t]["predicted_speedup"], rel=1e-9)
        assert rows[t]["measured_over_predicted_rk1"] == pytest.approx(
            rows[t]["measured_speedup"] / rows[t]["predicted_speedup_rk1"], rel=1e-9)
        # break-even: E[tokens](alpha*) = K c + r_K, or none (null) when K c + r_K > K + 1
        cost = 3 * c + r_k
        assert r["summary"]["speculation_can_pay"] == (cost <= 4)
        even = rows[t]["break_even_acceptance"]
        if cost > 4:
            assert even is None and rows[t]["acceptance_margin"] is None
        else:
            assert (1 - even ** 4) / (1 - even) == pytest.approx(max(cost, 1.0), rel=1e-9)
            assert rows[t]["acceptance_margin"] == pytest.approx(rows[t]["alpha"] - even, rel=1e-12)
        assert rows[t]["num_draft_used"] == 3 and str(3) in r["summary"]["generation"]["break_even_acceptance"]
    ces = np.array([rows[t]["ce"] for t in TASKS])
    al = np.array([rows[t]["alpha"] for t in TASKS])
    meas = np.array([rows[t]["measured_speedup"] for t in TASKS])
    u = r["summary"]["unfairness"]
    assert u["U_ce"]["uncorrected"] == pytest.approx(float(np.var(ces)), rel=1e-9)
    assert u["alpha_variance"]["uncorrected"] == pytest.approx(float(np.var(al)), rel=1e-9)
    for k in ("U_ce", "U_kl", "alpha_variance", "predicted_speedup_variance"):
        # corrected for within-task noise: below the variance of the task means, clipped at 0,
        # and every interval contains its estimate
        assert 0 <= u[k]["value"] <= u[k]["uncorrected"], k
        assert u[k]["value"] == max(u[k]["value_unclipped"], 0.0)
        assert u[k]["ci95"][0] <= u[k]["value"] <= u[k]["ci95"][1], k
    mm = u["alpha_max_min_ratio"]
    assert mm["ci95"][0] <= mm["value"] <= mm["ci95"][1]
    assert "corrected for within-task noise" in r["summary"]["spread_estimator"]["variances"]
    assert u["alpha_max_min_ratio"]["value"] == pytest.approx(al.max() / al.min(), rel=1e-9)
    assert r["summary"]["correlations"]["CE vs alpha"]["rho"] == pytest.approx(spearmanr(ces, al).statistic)
    assert r["summary"]["disparity_ratio"] == pytest.approx(meas.max() / meas.min(), rel=1e-9)
    assert r["summary"]["fastest_task"] == TASKS[int(meas.argmax())]
    for t in TASKS:   # the measured speed-up is the ratio of the two measured times
        assert rows[t]["measured_speedup"] == pytest.approx(
            rows[t]["verifier_seconds"] / rows[t]["speculative_seconds"], rel=1e-9)


def test_plots_written_and_readable(report):
    import matplotlib.image as mpimg

    out, _ = report
    for name in ("acceptance_speedup.png", "divergence_speedup.png"):
        f = out / name
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(f)
        assert img.shape[0] > 300 and img.shape[1] > 500
        assert float(img[..., :3].std()) > 0.05      # not a blank canvas


def test_same_seed_same_report(report, tiny):
    """Everything but wall-clock times is identical for a fixed seed."""
    out2 = tiny["root"] / "out2"
    assert cli.main(_args(tiny, out2)) == 0
    a = report[1]
    b = json.loads((out2 / "audit.json").read_text(encoding="utf-8"))
    timing = {"speculative_seconds", "verifier_seconds", "measured_speedup", "predicted_speedup",
              "measured_over_predicted", "measured_over_predicted_rk1", "predicted_speedup_rk1",
              "predicted_speedup_generation", "predicted_speedup_verify_cost", "seconds_draft",
              "seconds_verify_forward", "seconds_kernel", "break_even_acceptance", "acceptance_margin",
              "break_even_acceptance_generation", "acceptance_margin_generation"}
    for ra, rb in zip(a["tasks"], b["tasks"]):
        for k in ra:
            if k not in timing:
                assert ra[k] == rb[k], k


# --- bad input: a clear message, exit status 2, nothing written -------------------------

def _fails(capsys, argv, *needles):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "\nerror: " in "\n" + err and all(n in err for n in needles), err
    return err


def test_unknown_task(tiny, capsys, tmp_path):
    _fails(capsys, _args(tiny, tmp_path / "o", "--tasks", "aa,zz"), "zz", "available tasks")
    assert not (tmp_path / "o" / "audit.json").exists()


def test_corpus_not_installed(tiny, capsys, tmp_path):
    argv = ["audit", "--drafter", str(tiny["drafter"]), "--verifier", str(tiny["verifier"]),
            "--corpus-option", f"root={tmp_path / 'no-such-guide'}", "--out", str(tmp_path / "o"),
            "--no-progress"]
    _fails(capsys, argv, "no-such-guide", "apt-get install -y installation-guide-amd64")
    assert not (tmp_path / "o" / "audit.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_requested_where_there_is_none(tiny, capsys, tmp_path):
    _fails(capsys, _args(tiny, tmp_path / "o", "--device", "cuda"), "cuda", "no CUDA GPU")


def test_output_directory_not_writable(tiny, capsys, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("keep me")
    _fails(capsys, _args(tiny, f), "exists and is not a directory")
    assert f.read_text() == "keep me"
    if os.geteuid() != 0:      # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        _fails(capsys, _args(tiny, ro / "sub"), "not writable")


def test_bad_numbers(tiny, capsys, tmp_path):
    _fails(capsys, _args(tiny, tmp_path / "o", "--num-draft", "two"), "--num-draft")
    _fails(capsys, _args(tiny, tmp_path / "o", "--num-prompts", "0"), "num_prompts")
    _fails(capsys, _args(tiny, tmp_path / "o", "--temperature", "-1"), "temperature")


def _old_report(path):
    path.mkdir()
    (path / "audit.json").write_text("old")
    return path


def _untouched(path):
    assert sorted(p.name for p in path.iterdir()) == ["audit.json"]
    assert (path / "audit.json").read_text() == "old"


def test_lengths_beyond_the_models_context(tiny, capsys, tmp_path):
    """The tiny pair has 128 positions: --context-length, and the prompt with the generated
    tokens, are checked against both models before any pass, naming the flag."""
    out = _old_report(tmp_path / "o")
    _fails(capsys, _args(tiny, out, "--context-length", "100000"), "--context-length", "128 positions")
    _untouched(out)
    _fails(capsys, _args(tiny, out, "--max-new-tokens", "200"), "--max-new-tokens", "128 positions")
    _untouched(out)
    err = _fails(capsys, _args(tiny, out, "--context-length", "127", "--prompt-tokens", "125"),
                 "--prompt-tokens 125", "--max-new-tokens")
    assert "drafter" in err or "verifier" in err
    _untouched(out)


def test_corpus_not_utf8(tiny, capsys, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    lines = (tiny["corpus"]).read_bytes().splitlines(keepends=True)
    bad.write_bytes(b"".join(lines[:2]) + '{"task": "aa", "id": 99, "text": "caf\u00e9"}\n'.encode("latin-1")
                    + b"".join(lines[2:]))
    out = _old_report(tmp_path / "o")
    argv = _args(tiny, out)
    argv[argv.index(f"path={tiny['corpus']}")] = f"path={bad}"
    _fails(capsys, argv, f"{bad}:3:", "not UTF-8")
    _untouched(out)


def test_one_window_per_task_gives_no_interval(tiny, capsys, tmp_path):
    """--teacher-forced-tokens 32 with --context-length 32: one window per task, so every
    interval is n/a (null), never zero-width, with a warning naming each task and the tokens
    it needs."""
    out = tmp_path / "o"
    assert cli.main(_args(tiny, out, "--teacher-forced-tokens", "32", "--no-generation", "--bootstrap", "50")) == 0
    err = capsys.readouterr().err
    r = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    for t in r["tasks"]:
        assert t["alpha_ci95"] == [None, None] and t["kl_ci95"] == [None, None]
        assert f"warning: task {t['task']!r} has 1 teacher-forced window" in err
    assert "more than 32 tokens" in err
    for k, v in r["summary"]["unfairness"].items():
        assert v["ci95"] == [None, None], k
    assert len(r["summary"]["warnings"]) == len(TASKS)
    md = (out / "audit.md").read_text(encoding="utf-8")
    assert "**Warning:** task 'aa'" in md


def test_failure_midway_leaves_no_result(tiny, tmp_path, monkeypatch):
    """A crash while the files are written leaves the old results untouched and no new file."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "audit.json").write_text("old")

    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def boom(self, *a, **k):  # the second plot fails, after the tables and the first plot were written
        if saved:
            raise RuntimeError("disk full")
        saved.append(a[0])
        return real_savefig(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(_args(tiny, out, "--no-generation"))
    assert sorted(p.name for p in out.iterdir()) == ["audit.json"]
    assert (out / "audit.json").read_text() == "old"
    assert saved    # the failure came midway, not before any file was written


def test_python_api_returns_the_report(tiny):
    rep = audit_mod.run(drafter=str(tiny["drafter"]), verifier=str(tiny["verifier"]), corpus="jsonl",
                        corpus_options={"path": str(tiny["corpus"]), "key_column": "id"}, generative=False,
                        context_length=32, teacher_forced_tokens=200, bootstrap=50, out=None, progress=False)
    assert isinstance(rep, audit_mod.AuditReport) and rep.files == {}
    assert [t["task"] for t in rep.tasks] == TASKS and "measured_speedup" not in rep.tasks[0]
    assert "fastest:" in rep.table()
    with pytest.raises(audit_mod.AuditError, match="both drafter and verifier"):
        audit_mod.run(drafter=str(tiny["drafter"]), out=None)


def _guide_installed() -> bool:
    return Path("/usr/share/doc/installation-guide-amd64/en").is_dir()


@pytest.mark.skipif(not _guide_installed() and os.environ.get("CI") != "true",
                    reason="Debian installation guide not installed (CI installs it)")
def test_default_pair_and_corpus(tmp_path, capsys):
    """The main job's path (shipped pair, default corpus), cut down to two languages."""
    rc = cli.main(["audit", "--tasks", "fr,ko", "--num-prompts", "2", "--max-new-tokens", "8",
                   "--teacher-forced-tokens", "512", "--bootstrap", "100", "--no-progress",
                   "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads((tmp_path / "o" / "audit.json").read_text(encoding="utf-8"))
    rows = {t["task"]: t for t in r["tasks"]}
    assert rows["fr"]["alpha"] > rows["ko"]["alpha"] + 0.1     # the shipped pair's disparity
    assert "fastest:" in out


def test_audit_reads_gguf_files(tiny, tmp_path, capsys, monkeypatch):
    """The audit loads GGUF drafter and verifier files (real ones, written with the gguf
    package from the tiny pair) and gives the figures of the pair they were written from;
    with --no-cache it keeps no dense copy, without it the copy is made once and a second
    audit read from it gives the same figures."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPECFAIR_CACHE", str(cache))
    gguf_files = pytest.importorskip("gguf_files")
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for role in ("verifier", "drafter"):
        gguf_files.write_llama_gguf(tmp_path / f"{role}.gguf", AutoModelForCausalLM.from_pretrained(tiny[role]),
                                    AutoTokenizer.from_pretrained(tiny[role]))
    outs = {}
    gguf = (tmp_path / "drafter.gguf", tmp_path / "verifier.gguf")
    for kind, (d, v), extra in (("hf", (tiny["drafter"], tiny["verifier"]), ()), ("no-cache", gguf, ("--no-cache",)),
                                ("gguf", gguf, ()), ("cached", gguf, ())):
        argv = _args(tiny, tmp_path / kind, "--no-generation", *extra)
        argv[argv.index("--drafter") + 1], argv[argv.index("--verifier") + 1] = str(d), str(v)
        assert cli.main(argv) == 0, capsys.readouterr().err
        outs[kind] = json.loads((tmp_path / kind / "audit.json").read_text(encoding="utf-8"))
        entries = [p for p in (cache / "gguf").glob("*") if p.is_dir()] if cache.exists() else []
        assert len(entries) == (0 if kind in ("hf", "no-cache") else 2), kind
    assert outs["no-cache"]["config"]["gguf_cache"] is False
    for a, b, c in zip(outs["no-cache"]["tasks"], outs["gguf"]["tasks"], outs["cached"]["tasks"]):
        for k in ("alpha", "kl", "ce"):
            assert a[k] == b[k] == c[k], k           # dequantised or read from the cache: the same weights
    for a, b in zip(outs["hf"]["tasks"], outs["gguf"]["tasks"]):
        assert a["task"] == b["task"] and a["heldout_tokens"] == b["heldout_tokens"]
        assert b["alpha"] == pytest.approx(a["alpha"], abs=1e-5) and b["kl"] == pytest.approx(a["kl"], abs=1e-4)


# --- drafting variants: argmax drafts, the n-gram drafter, the verify rule ----------------

def test_argmax_drafting_and_ngram_rows(tiny, tmp_path):
    out = tmp_path / "o"
    extra = ["--draft", "argmax", "--ngram", "--ngram-max", "2", "--verify-method", "both"]
    assert cli.main(_args(tiny, out, *extra)) == 0
    r = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    K = 3
    for t in r["tasks"]:
        assert t["draft"] == "argmax" and 0 < t["alpha_argmax"] < 1
        assert t["expected_acceptance_drafting"] == t["alpha_argmax"]
        # the prediction follows the drafting: p(argmax q), not sum min(p, q)
        a, c, r_k = t["alpha_argmax"], r["summary"]["cost_ratio"], r["summary"]["verify_cost"]
        assert t["predicted_speedup"] == pytest.approx((1 - a ** 4) / (1 - a) / (3 * c + r_k), rel=1e-9)
        for prefix in ("", "ngram_", "block_"):
            h = t[f"{prefix}accept_length_histogram"]
            assert len(h) == K + 1
            if prefix == "":
                assert sum(h) == t["steps"]  # one entry per verification step
            # engine format: sum_j j * h_j accepted drafts, one emitted token more per step
            assert t[f"{prefix}tokens_per_step"] == pytest.approx((sum(j * n for j, n in enumerate(h)) + sum(h))
                                                                   / sum(h), rel=1e-9)
            assert t[f"{prefix}measured_speedup"] == pytest.approx(
                t[f"{prefix}verifier_seconds"] / t[f"{prefix}speculative_seconds"], rel=1e-9)
    d = r["summary"]["drafting"]
    meas = np.array([t["ngram_measured_speedup"] for t in r["tasks"]])
    assert d["ngram"]["measured_speedup"]["variance"] == pytest.approx(float(np.var(meas)), rel=1e-9)
    assert d["ngram"]["measured_speedup"]["max_min_ratio"] == pytest.approx(meas.max() / meas.min(), rel=1e-9)
    assert d["ngram"]["fastest_task"] == TASKS[int(meas.argmax())]
    md = (out / "audit.md").read_text(encoding="utf-8")
    assert "n-gram (prompt lookup)" in md and "p(argmax q)" in md
    header, *lines = (out / "audit.csv").read_text(encoding="utf-8").splitlines()
    cols = header.split(",")
    assert "ngram_measured_speedup" in cols and "alpha_argmax" in cols
    h = lines[0].split(",")[cols.index("accept_length_histogram")]
    assert [int(x) for x in h.split(";")] == r["tasks"][0]["accept_length_histogram"]
    gain = d["block_minus_token"][TASKS[0]]["realised_acceptance"]
    t0 = r["tasks"][0]
    assert gain == pytest.approx(t0["block_realised_acceptance"] - t0["realised_acceptance"])
    assert "block verification" in md


def test_drafting_options_are_checked(tiny, capsys, tmp_path):
    _fails(capsys, _args(tiny, tmp_path / "o", "--ngram", "--ngram-max", "1", "--ngram-min", "2"), "min_ngram")
    _fails(capsys, _args(tiny, tmp_path / "o", "--ngram", "--num-draft", "auto"), "ngram")
    assert not (tmp_path / "o" / "audit.json").exists()
