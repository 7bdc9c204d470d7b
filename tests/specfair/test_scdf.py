"""s-CDF on a tiny random pair and a tiny JSONL corpus, on the CPU: the weights,
every method, the frozen verifier, LoRA, temperature folding, bitwise resume after a
simulated kill, the comparison report, and DDP under torchrun with 2 gloo processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from scdf_assets import CTX, SENTENCES, config, load, write_assets  # noqa: E402

from specfair import cli, scdf_config  # noqa: E402
from specfair.scdf import ScdfError, train  # noqa: E402
from specfair.scdf_config import task_probabilities  # noqa: E402
from specfair.training import fingerprint  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("scdf"))


# ----------------------------------------------------------------------------- weights
def test_task_probabilities():
    d = torch.tensor([1.0, 1.5, 3.0, 1.0])
    p = task_probabilities("scdf", d, None, uniform_mix=0.2)
    w = torch.tensor([0.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(p, 0.8 * w / w.sum() + 0.2 / 4, rtol=0, atol=1e-15)
    assert float(p.sum()) == pytest.approx(1.0)
    assert p[0] == p[3] == pytest.approx(0.05)          # best tasks: only the floor
    assert float(task_probabilities("scdf", d, None, 0.0)[0]) == 0.0
    flat = torch.full((4,), 0.25, dtype=torch.float64)
    assert torch.equal(task_probabilities("scdf", torch.ones(4), None, 0.1), flat)   # all equal
    assert torch.equal(task_probabilities("balanced", d, None, 0.1), flat)
    assert torch.equal(task_probabilities("temperature", d, None, 0.1), flat)
    u = task_probabilities("uniform", d, torch.tensor([10.0, 30.0, 40.0, 20.0]), 0.1)
    torch.testing.assert_close(u, torch.tensor([0.1, 0.3, 0.4, 0.2], dtype=torch.float64))


def test_running_divergence_keeps_unseen_tasks():
    r = scdf_config.RunningDivergence(3, decay=0.5)
    r.update(torch.tensor([[2.0, 1.0], [6.0, 3.0], [0.0, 0.0]], dtype=torch.float64),
             torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64))
    m = r.mean()
    assert m[0].tolist() == [1.0, 0.5] and m[1].tolist() == [2.0, 1.0] and bool(m[2].isnan().all())
    r.update(torch.tensor([[8.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64),
             torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    m = r.mean()
    assert m[0, 0] == pytest.approx((0.5 * 2 + 8) / (0.5 * 2 + 2))   # EMA of task 0
    assert m[1].tolist() == [2.0, 1.0]                                # task 1 not drawn: unchanged


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", ["uniform", "balanced", "scdf"])
def test_methods_train_the_drafter_only(assets, tmp_path, method):
    ver0 = load(assets / "verifier")
    dra0 = load(assets / "drafter")
    res = train(config(assets, tmp_path / method, method=method))
    assert res.report["verifier_unchanged"] and res.report["verifier_fingerprint"] == fingerprint(ver0)
    assert res.report["training_tokens"] == 6 * 4 * CTX
    assert sum(res.report["tokens_per_task"].values()) == 6 * 4 * CTX
    saved = load(tmp_path / method / "drafter")
    assert fingerprint(saved) != fingerprint(dra0)
    assert fingerprint(saved) == fingerprint(res.drafter)
    h = res.report["heldout"]
    assert set(h["per_task"]) == set(SENTENCES)
    # the distillation works: the held-out KL to the verifier falls on average
    kl_b = sum(r["kl_before"] for r in h["per_task"].values())
    kl_a = sum(r["kl_after"] for r in h["per_task"].values())
    assert kl_a < kl_b
    # the sampling probabilities are the method's function of the estimates it saw
    for rec in res.history:
        p = task_probabilities(method, torch.tensor(rec["divergence"], dtype=torch.float64),
                               torch.tensor([1.0] * 3), 0.5 if method == "scdf" else 0.1)
        if method == "scdf":
            torch.testing.assert_close(torch.tensor(rec["probabilities"], dtype=torch.float64), p)
        if method == "balanced":
            assert rec["probabilities"] == [1 / 3] * 3


@pytest.mark.parametrize("loss", ["neg_log_alpha", "kl_tv"])
def test_lk_objectives_train_the_drafter_and_report_throughput(assets, tmp_path, loss):
    res = train(config(assets, tmp_path / loss, loss=loss, task_losses={"ru": "kl"}, steps=6))
    h = res.report["heldout"]
    assert h["after"]["mean_alpha"] > h["before"]["mean_alpha"]      # acceptance-based losses raise alpha
    if loss == "kl_tv":
        lams = [r["lambda_kl_tv"] for r in res.history]
        assert all(0 < x <= 1 for x in lams) and len(set(lams)) > 1  # adaptive: changes with alpha
    tp = res.report["throughput"]
    assert tp["steps_timed"] == 6 and tp["tokens_per_second"] > 0
    assert 0 < tp["weight_fraction"] < 1 and tp["weight_seconds_total"] < tp["step_seconds_total"]
    assert tp["tokens_per_second"] == pytest.approx(6 * 4 * CTX / tp["step_seconds_total"])
    with pytest.raises(ScdfError, match="task_losses"):
        train(config(assets, tmp_path / "bad", loss=loss, task_losses={"xx": "kl"}))


def test_scdf_draws_the_worst_task_most(assets, tmp_path):
    res = train(config(assets, tmp_path / "w", method="scdf", steps=8, evaluate=False, uniform_mix=0.0))
    rec = res.history[0]
    d = rec["divergence"]
    worst, best = d.index(max(d)), d.index(min(d))
    assert rec["probabilities"][best] == 0.0 and rec["probabilities"][worst] == max(rec["probabilities"])
    assert best not in rec["batch_tasks"]


def test_temperature_method_fits_and_folds_one_scalar(assets, tmp_path):
    res = train(config(assets, tmp_path / "t", method="temperature", temperature_lr=0.2, evaluate=False))
    tau = res.report["drafter_temperature"]
    assert tau != 1.0
    orig, tuned = load(assets / "drafter"), load(tmp_path / "t" / "drafter")
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(tuned(input_ids=x).logits, orig(input_ids=x).logits / tau, rtol=1e-5, atol=1e-5)
    so, st = orig.state_dict(), tuned.state_dict()
    assert [k for k in so if not torch.equal(so[k], st[k])] == ["model.norm.weight"]


def test_lora_is_merged_into_a_plain_drafter(assets, tmp_path):
    pytest.importorskip("peft")
    res = train(config(assets, tmp_path / "l", lora_rank=4, lr=5e-2, evaluate=False))
    d = load(tmp_path / "l" / "drafter")
    assert type(d).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in d.state_dict())
    orig = load(assets / "drafter").state_dict()
    changed = [k for k, v in d.state_dict().items() if not torch.equal(v, orig[k])]
    assert changed and all(any(t in k for t in scdf_config.LORA_TARGETS) for k in changed)
    assert res.report["verifier_unchanged"]


def test_resume_after_a_kill_is_bitwise_the_uninterrupted_run(assets, tmp_path):
    full = train(config(assets, tmp_path / "full", steps=8, evaluate=False))
    killed = train(config(assets, tmp_path / "part", steps=8, evaluate=False, stop_after=5))
    assert killed.drafter is None and killed.report == {"stopped_after": 5}
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["config"]["steps"] == 8 and ck["rng"][0]["sampler"] is not None
    assert not [p for p in (tmp_path / "part").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ScdfError, match="lr"):
        train(config(assets, tmp_path / "part", steps=8, evaluate=False, resume=True, lr=0.5))
    resumed = train(config(assets, tmp_path / "part", steps=8, evaluate=False, resume=True))
    a, b = full.drafter.state_dict(), resumed.drafter.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == full.history
    other = train(config(assets, tmp_path / "seed1", steps=8, evaluate=False, seed=1))
    assert fingerprint(other.drafter) != fingerprint(full.drafter)


def test_bad_config(assets, tmp_path):
    for kw, match in (({"method": "dro"}, "method"), ({"loss": "alpha"}, "loss"),
                      ({"uniform_mix": 1.5}, "uniform_mix"), ({"method": "temperature", "lora_rank": 2}, "lora")):
        with pytest.raises(ScdfError, match=match):
            train(config(assets, tmp_path / "bad", **kw))


def test_cli_bad_input_exits_2_with_a_message(assets, tmp_path, capsys):


    rc = cli.main(["scdf", "--uniform-mix", "1.5", "--out", str(tmp_path / "o"), "--verifier",
                   str(assets / "verifier"), "--drafter", str(assets / "drafter"), "--no-progress"])
    assert rc == 2 and "uniform_mix" in capsys.readouterr().err
    for bad in (["--method", "dro"], ["--loss", "lk"], ["--task-loss", "en=lk"], ["--task-loss", "en"],
                ["--search", "lr=fast"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["scdf", *bad])
        assert e.value.code == 2


def test_compare_cli_writes_the_report(assets, tmp_path, capsys):


    argv = (["--compare", "--methods", "balanced,scdf", "--seeds", "0", "--out", str(tmp_path / "r"),
                       "--prefix", "scdf_t", "--verifier", str(assets / "verifier"), "--drafter",
                       str(assets / "drafter"), "--corpus", "jsonl", "--corpus-option",
                       f"path={assets / 'corpus.jsonl'}", "--corpus-option", "key_column=id",
                       "--heldout-fraction", "0.25", "--validation-fraction", "0.25", "--search-budget", "1",
                       "--steps", "3", "--batch-size", "4", "--context-length",
                       str(CTX), "--eval-tokens-per-task", "64", "--no-progress", "--generate-prompts", "1",
                       "--generate-prompt-tokens", "4", "--generate-new-tokens", "3", "--generate-repeats", "1",
                       "--ood-corpus", "none"])
    assert cli.main(["scdf", *argv]) == 0        # `specfair scdf ...`
    rep = json.loads((tmp_path / "r" / "scdf_t.json").read_text())
    assert [r["method"] for r in rep["runs"]] == ["balanced", "scdf"]
    for r in rep["runs"]:
        f = r["figures"]
        assert f["after"]["alpha_variance"] == pytest.approx(
            sum((x["alpha_after"] - f["after"]["mean_alpha"]) ** 2 for x in f["per_task"].values()) / 3)
        ci = r["intervals"]["alpha_variance_change"]
        assert ci["low"] <= ci["high"]
    md = (tmp_path / "r" / "scdf_t.md").read_text()
    assert "| scdf | 0 |" in md and "| balanced | 0 |" in md
    assert "## Measured generation" in md and "Not measured (--ood-corpus none: skipped)" in md
    assert rep["measure"]["num_prompts"] == 1 and rep["ood"] is None
    assert all(set(r["generation"]["per_task"]) == set(SENTENCES) for r in rep["runs"])
    assert (tmp_path / "r" / "scdf_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "original drafter" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_under_torchrun(assets, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "specfair", "scdf", "--out", str(out),
           "--verifier", str(assets / "verifier"), "--drafter", str(assets / "drafter"), "--corpus", "jsonl",
           "--corpus-option", f"path={assets / 'corpus.jsonl'}", "--corpus-option", "key_column=id",
           "--heldout-fraction", "0.25", "--steps", "4", "--batch-size", "3", "--context-length", str(CTX),
           "--checkpoint-every", "4", "--eval-tokens-per-task", "64", "--no-progress", "--lr", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((out / "scdf_report.json").read_text())
    assert rep["world_size"] == 2 and rep["verifier_unchanged"]
    assert rep["training_tokens"] == 4 * 3 * CTX * 2
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    local = ck["tokens_local"]
    assert len(local) == 2 and not torch.equal(local[0], local[1])     # each rank drew its own windows
    torch.testing.assert_close(local[0] + local[1], ck["tokens_global"], rtol=0, atol=0)   # all-reduced
    assert float(ck["tokens_global"].sum()) == 4 * 3 * CTX * 2
    assert len({json.dumps(x["sampler"].tolist()) for x in ck["rng"]}) == 2


def _torchrun(assets, out, *extra, steps=4, report=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "specfair", "scdf", "--out", str(out),
           "--verifier", str(assets / "verifier"), "--drafter", str(assets / "drafter"), "--corpus", "jsonl",
           "--corpus-option", f"path={assets / 'corpus.jsonl'}", "--corpus-option", "key_column=id",
           "--heldout-fraction", "0.25", "--steps", str(steps), "--batch-size", "3", "--context-length", str(CTX),
           "--checkpoint-every", "2", "--eval-tokens-per-task", "64", "--no-progress", "--lr", "1e-2", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "scdf_report.json").read_text()) if report else None


def test_fsdp2_two_gloo_processes_matches_ddp(assets, tmp_path):
    """FSDP2 (fully_shard per decoder layer) under torchrun with 2 gloo processes: the same
    windows, all-reduced per-task statistics and (up to float summation order) the same
    drafter as DDP; its checkpoint holds full tensors, and a resume from it continues."""
    ddp = _torchrun(assets, tmp_path / "ddp")
    fsdp = _torchrun(assets, tmp_path / "fsdp", "--shard", "fsdp")
    assert fsdp["shard"] == "fsdp" and ddp["shard"] == "ddp" and fsdp["world_size"] == 2
    assert fsdp["rank0_parameter_elements"] < 0.6 * ddp["rank0_parameter_elements"]   # rank 0 holds about half
    assert fsdp["tokens_per_task"] == ddp["tokens_per_task"]           # same draws, all-reduced
    assert [h["batch_tasks"] for h in fsdp["history"]] == [h["batch_tasks"] for h in ddp["history"]]
    for a, b in zip(fsdp["history"], ddp["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["divergence"] == pytest.approx(b["divergence"], rel=1e-4)
    da, db = load(tmp_path / "fsdp" / "drafter"), load(tmp_path / "ddp" / "drafter")
    moved = 0.0
    for (n, pa), (_, pb) in zip(da.state_dict().items(), db.state_dict().items()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=n)
    for pa, p0 in zip(da.parameters(), load(assets / "drafter").parameters()):
        moved = max(moved, float((pa - p0).detach().abs().max()))
    assert moved > 1e-3                                            # it trained
    ck = torch.load(tmp_path / "fsdp" / "checkpoint.pt", weights_only=False)
    assert all(not hasattr(v, "full_tensor") for v in ck["student"].values())
    assert {k: v.shape for k, v in ck["student"].items()} == \
        {k: v.shape for k, v in torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["student"].items()}
    _torchrun(assets, tmp_path / "killed", "--shard", "fsdp", "--stop-after", "2", report=False)     # a simulated kill
    assert not (tmp_path / "killed" / "scdf_report.json").exists()
    resumed = _torchrun(assets, tmp_path / "killed", "--shard", "fsdp", "--resume")
    assert resumed["history"] == fsdp["history"]
    for (n, pa), (_, pb) in zip(load(tmp_path / "killed" / "drafter").state_dict().items(), da.state_dict().items()):
        assert torch.equal(pa, pb), n                              # bitwise the uninterrupted run


def test_shard_argument_handling(assets, tmp_path, capsys):
    for kw, match in (({"shard": "zero3"}, "shard"), ({"shard": "fsdp", "lora_rank": 2}, "fsdp"),
                      ({"shard": "fsdp", "method": "temperature"}, "fsdp")):
        with pytest.raises(ScdfError, match=match):
            train(config(assets, tmp_path / "bad", **kw))
    with pytest.raises(SystemExit) as e:
        cli.main(["scdf", "--shard", "zero3"])
    assert e.value.code == 2
    # one process: nothing to shard, fsdp trains the plain module exactly as ddp does
    a = train(config(assets, tmp_path / "one_fsdp", shard="fsdp", evaluate=False, steps=3))
    b = train(config(assets, tmp_path / "one_ddp", evaluate=False, steps=3))
    assert fingerprint(a.drafter) == fingerprint(b.drafter) and a.report["shard"] is None


def test_exported_corpus_has_the_same_splits(assets, tmp_path):
    from specfair.corpus import export_jsonl, load_corpus

    opts = {"path": str(assets / "corpus.jsonl"), "key_column": "id"}
    p = export_jsonl(tmp_path / "c.jsonl", "jsonl", **opts)
    a = load_corpus("jsonl", heldout_fraction=0.4, seed=3, **opts)
    b = load_corpus("jsonl", heldout_fraction=0.4, seed=3, path=str(p), key_column="key")
    assert a.task_names == b.task_names
    for t in a.task_names:
        assert a.tasks[t].train == b.tasks[t].train and a.tasks[t].heldout == b.tasks[t].heldout
        assert a.tasks[t].heldout     # the check is not vacuous


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_cli_fine_tunes_a_gguf_drafter(assets, tmp_path, capsys, monkeypatch, lora_rank):
    """`specfair scdf` loads GGUF files through the same loader as the audit: a real GGUF
    drafter and verifier (written with the gguf package from the tiny pair), fully or with
    LoRA merged back, so the saved drafter is a plain Hugging Face model either way."""
    gguf_files = pytest.importorskip("gguf_files")
    pytest.importorskip("gguf")
    if lora_rank:
        pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specfair.models import load_pair

    cache = tmp_path / "cache"
    monkeypatch.setenv("SPECFAIR_CACHE", str(cache))
    for role in ("verifier", "drafter"):
        gguf_files.write_llama_gguf(tmp_path / f"{role}.gguf", AutoModelForCausalLM.from_pretrained(assets / role),
                                    AutoTokenizer.from_pretrained(assets / role))
    out = tmp_path / "run"
    rc = cli.main(["scdf", "--drafter", str(tmp_path / "drafter.gguf"), "--verifier", str(tmp_path / "verifier.gguf"),
                   "--corpus", "jsonl", "--corpus-option", f"path={assets / 'corpus.jsonl'}", "--corpus-option",
                   "key_column=id", "--heldout-fraction", "0.25", "--steps", "2", "--batch-size", "2",
                   "--context-length", str(CTX), "--eval-tokens-per-task", "32", "--out", str(out), "--no-progress",
                   "--no-cache", "--lora-rank", str(lora_rank), "--lr", "5e-2"])
    assert rc == 0, capsys.readouterr().err
    assert not (cache / "gguf").exists()         # --no-cache: no dense copy kept
    rep = json.loads((out / "scdf_report.json").read_text())
    assert rep["verifier_unchanged"] and rep["steps"] == 2 and "heldout" in rep
    # the verifier the run held is bit for bit the GGUF file's, loaded afresh
    drafter0, verifier0, _ = load_pair(str(tmp_path / "drafter.gguf"), str(tmp_path / "verifier.gguf"), cache=False)
    assert rep["verifier_fingerprint"] == fingerprint(verifier0)
    tuned = AutoModelForCausalLM.from_pretrained(out / "drafter")     # saved as a plain Hugging Face model
    assert type(tuned).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in tuned.state_dict())
    orig = drafter0.state_dict()
    assert tuned.state_dict().keys() == orig.keys()
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, orig[k])]
    assert changed
    if lora_rank:       # LoRA touches only the adapted projections, merged into their weights
        assert all(any(t in k for t in scdf_config.LORA_TARGETS) for k in changed)


# ----------------------------------------------------------------------------- selection on validation
def test_candidates_give_every_method_the_same_budget():
    from specfair.scdf_select import SEARCH_SPACE, candidates, merge_space

    for budget in (1, 2, 4):
        picked = {m: candidates(m, budget, merge_space(m, None)) for m in SEARCH_SPACE}
        assert {len(v) for v in picked.values()} == {budget}
        assert picked == {m: candidates(m, budget, merge_space(m, None)) for m in SEARCH_SPACE}   # deterministic
        for m, cands in picked.items():
            assert all(set(c) == set(SEARCH_SPACE[m]) for c in cands)
            assert len({tuple(sorted(c.items())) for c in cands}) == budget                     # distinct
    # coverage first: with 2 candidates a 2-valued knob gets both values, even beside a second knob
    two = candidates("scdf", 2, merge_space("scdf", {"lr": [1e-3, 2e-3], "uniform_mix": [0.3, 0.5, 0.7]}))
    assert sorted(c["lr"] for c in two) == [1e-3, 2e-3] and len({c["uniform_mix"] for c in two}) == 2
    four = candidates("scdf", 4, merge_space("scdf", None))
    assert {c["lr"] for c in four} == set(SEARCH_SPACE["scdf"]["lr"])
    assert {c["uniform_mix"] for c in four} == set(SEARCH_SPACE["scdf"]["uniform_mix"])
    assert merge_space("scdf", {"lr": [1e-3]})["lr"] == (1e-3,)
    assert "lr" not in merge_space("temperature", {"lr": [1e-3]})
    with pytest.raises(ScdfError, match="unknown knob"):
        merge_space("scdf", {"epsilon": [0.5]}, ScdfError)


def test_selection_score_prefers_guarded_then_low_variance():
    from specfair.scdf_select import selection_score

    def fig(var, mean, worst):
        return {"alpha_variance_after": var, "mean_alpha_change": mean, "worst_alpha_change": worst}

    low_var_harmful = fig(1e-4, 0.01, -0.02)      # a task loses 2 points
    guarded = fig(2e-3, 0.005, -0.002)
    guarded_lower = fig(1e-3, 0.001, 0.0)
    assert selection_score(guarded) > selection_score(low_var_harmful)
    assert selection_score(guarded_lower) > selection_score(guarded)
    assert selection_score(fig(1e-3, 0.0, -0.005)) > selection_score(fig(1e-4, 0.0, -0.03))
    assert selection_score(fig(float("nan"), 0.0, 0.0)) < selection_score(guarded)


def test_seed_interval():
    from scipy.stats import t as student_t

    from specfair.spread import seed_interval

    iv = seed_interval([1.0, 2.0, 4.0])
    half = student_t.ppf(0.975, 2) * torch.tensor([1.0, 2.0, 4.0]).std().item() / 3 ** 0.5
    assert iv["mean"] == pytest.approx(7 / 3) and iv["high"] - iv["mean"] == pytest.approx(half)
    assert iv["n"] == 3 and iv["low"] < iv["mean"] < iv["high"]
    one = seed_interval([0.5])
    assert one["mean"] == 0.5 and one["low"] != one["low"]      # NaN: no interval from one seed


def test_compare_chooses_on_validation_and_reports_only_heldout(assets, tmp_path, monkeypatch):
    """Candidate A looks best on validation, B on held-out (forced by rewriting the
    evaluations): the comparison must choose A, never measure B on held-out, read held-out only
    after every validation run, and report the held-out figures of A."""
    import dataclasses as dc

    from specfair import scdf_compare
    from specfair.scdf_measure import MeasureOptions

    LR_A, LR_B = 2e-3, 1e-2
    real = scdf_compare.evaluate_drafter
    calls = []

    def flat(res, value):
        return dc.replace(res, alpha={t: value for t in res.task_names})

    def fake(cfg, drafter, ec, device):
        res = real(cfg, drafter, ec, device)
        lr = cfg.lr if cfg.method == "balanced" else None      # None: the original drafter (base config)
        calls.append((ec["split"], lr))
        if ec["split"] == "validation" and lr == LR_A:
            return flat(res, 0.99)              # zero variance, high mean: best on validation
        if ec["split"] == "heldout" and lr == LR_B:
            return flat(res, 0.99)              # would be best on held-out
        return res

    monkeypatch.setattr(scdf_compare, "evaluate_drafter", fake)
    base = config(assets, tmp_path / "cmp", steps=2, checkpoint_every=2)
    rep = scdf_compare.run_comparison(base, methods=["balanced"], seeds=[0, 1], budget=2, n_boot=20,
                                      search={"lr": [LR_A, LR_B], "balance_mix": [1.0]},
                                      work_dir=str(tmp_path / "runs"),
                                      measure=MeasureOptions(generate=False, ood_corpus=None))
    sel = rep["selection"]["balanced"]
    assert sel["split"] == "validation" and sel["chosen"] == {"lr": LR_A, "balance_mix": 1.0}
    assert [c["knobs"]["lr"] for c in sel["candidates"]] == [LR_A, LR_B]
    assert ("heldout", LR_B) not in calls                        # the loser is never measured on held-out
    first_held = calls.index(next(c for c in calls if c[0] == "heldout"))
    assert all(c[0] == "validation" for c in calls[:first_held])  # held-out read only after choosing
    assert rep["split"] == "heldout" and [r["seed"] for r in rep["runs"]] == [0, 1]
    for r in rep["runs"]:
        assert r["split"] == "heldout" and r["knobs"]["lr"] == LR_A
        assert r["figures"]["after"]["mean_alpha"] != pytest.approx(0.99)    # not the validation figure
    # the reported figures are the real held-out evaluation of the chosen drafter, recomputed here
    from transformers import AutoTokenizer

    from specfair.scdf import evaluate_drafter, load_task_corpus, prepare_eval_cache

    corpus = load_task_corpus(base)
    names = [t for t in corpus.task_names if corpus.tasks[t].train]
    ec = prepare_eval_cache({}, base, load(assets / "verifier"), AutoTokenizer.from_pretrained(assets / "verifier"),
                            corpus, names, "cpu")
    seed0 = evaluate_drafter(base, load(tmp_path / "runs" / "balanced-c0-seed0" / "drafter"), ec, "cpu")
    run0 = rep["runs"][0]["figures"]
    assert run0["after"]["mean_alpha"] == pytest.approx(seed0.summary()["mean_alpha"], rel=1e-6)
    assert run0["before"]["mean_alpha"] == pytest.approx(rep["before"]["summary"]["mean_alpha"])
    agg = rep["aggregate"]["balanced"]["seed_intervals"]["mean_alpha_change"]
    assert agg["n"] == 2 and agg["low"] <= agg["mean"] <= agg["high"]
    md = (tmp_path / "cmp" / "scdf_compare.md").read_text()
    assert "lr = 0.002" in md and f"{run0['after']['mean_alpha']:.4f}" in md and "0.9900" not in md
