"""The shipped default drafter/verifier pair: it loads through the same
``from_pretrained`` path as any user model, generates on the CPU, and its committed report
is what the committed weights give on the held-out split."""
from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import specfair  # noqa: E402
from specfair import corpus as corpus_mod  # noqa: E402
from specfair.teacher_forced import token_streams  # noqa: E402
from specfair.train_pair import TrainPairConfig, evaluate_pair  # noqa: E402

PAIR = specfair.default_pair_path()


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ver = AutoModelForCausalLM.from_pretrained(specfair.default_pair_path("verifier"))
    dra = AutoModelForCausalLM.from_pretrained(specfair.default_pair_path("drafter"))
    tok = AutoTokenizer.from_pretrained(specfair.default_pair_path("verifier"))
    return ver.eval(), dra.eval(), tok


@pytest.fixture(scope="module")
def report():
    return json.loads((PAIR / "pair_report.json").read_text(encoding="utf-8"))


def test_at_most_30_mb_in_hugging_face_format():
    total = sum(f.stat().st_size for f in PAIR.rglob("*") if f.is_file())
    assert total <= 30 * 10**6, total
    for role in ("verifier", "drafter"):
        names = {f.name for f in (PAIR / role).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names, names


def test_loads_shares_its_tokenizer_and_generates_on_cpu(pair):
    from transformers import AutoTokenizer

    ver, dra, tok = pair
    assert type(ver).__name__ == type(dra).__name__ == "LlamaForCausalLM"
    n_ver = sum(p.numel() for p in ver.parameters())
    n_dra = sum(p.numel() for p in dra.parameters())
    assert n_dra * 4 < n_ver, (n_dra, n_ver)        # "several times smaller"
    tok_d = AutoTokenizer.from_pretrained(specfair.default_pair_path("drafter"))
    assert tok.get_vocab() == tok_d.get_vocab()
    assert ver.config.vocab_size == dra.config.vocab_size == len(tok)
    enc = tok(["The installer", "Программа установки"], return_tensors="pt", padding=True)
    assert enc.input_ids.device.type == "cpu"
    tok.padding_side = "left"
    enc = tok(["The installer", "Программа установки"], return_tensors="pt", padding=True)
    for model in (ver, dra):
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape == (2, enc.input_ids.shape[1] + 8)
        text = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        assert all(isinstance(t, str) for t in text)


def test_report_meets_the_issue_targets(report):
    acc = report["acceptance"]
    assert acc["alpha_mean_well_represented"] >= 0.5
    assert acc["alpha_mean_under_represented"] < acc["alpha_mean_well_represented"] - 0.1
    under = set(report["mixtures"]["drafter"]) - {
        l for l, w in report["mixtures"]["drafter"].items() if w == max(report["mixtures"]["drafter"].values())}
    assert under == {"el", "ja", "ko", "ru", "vi"}
    for l in report["languages"]:     # the verifier learned every language: far below vocab-size perplexity
        assert report["eval"]["verifier_ppl"][l] < 60, l


def _guide_installed() -> bool:
    try:
        corpus_mod.load_corpus("default", tasks=["en"], max_items_per_task=1)
    except corpus_mod.SourceNotAvailableError:
        return False
    return True


@pytest.mark.skipif(os.environ.get("CI") != "true" and not _guide_installed(),
                    reason="Debian installation guide not installed (CI installs it)")
def test_committed_figures_are_what_the_committed_weights_give(pair, report):
    """Re-evaluate two languages (one well-, one under-represented) on the CPU: perplexity
    and alpha must match the report made on the GPU at training time."""
    ver, dra, tok = pair
    cfg = TrainPairConfig.from_dict(json.loads((PAIR / "train_pair_config.json").read_text()))
    langs = ["fr", "ko"]
    corpus = corpus_mod.load_corpus(cfg.corpus_source, tasks=langs, heldout_fraction=cfg.heldout_fraction,
                                    seed=cfg.corpus_seed)
    streams = token_streams(tok, {l: corpus.tasks[l].heldout for l in langs})
    ev = evaluate_pair(ver, dra, streams, langs, cfg, torch.device("cpu"))
    for l in langs:
        assert ev["tokens"][l] == report["eval"]["tokens"][l]
        assert ev["verifier_ppl"][l] == pytest.approx(report["eval"]["verifier_ppl"][l], rel=1e-3)
        assert ev["drafter_ppl"][l] == pytest.approx(report["eval"]["drafter_ppl"][l], rel=1e-3)
        assert ev["alpha"][l] == pytest.approx(report["eval"]["alpha"][l], abs=1e-3)
    assert ev["alpha"]["fr"] > ev["alpha"]["ko"] + 0.1
