"""specfair.teacher_forced against plain torch (log_softmax, softmax) on a tiny random pair."""
from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from tiny_models import tiny_llama  # noqa: E402

import specfair_kernels as sk  # noqa: E402
from specfair import teacher_forced as tf  # noqa: E402
from specfair.spread import paired_bootstrap  # noqa: E402
from specfair.train_pair import hf_tokenizer, train_tokenizer  # noqa: E402

TEXTS = {
    "en": ["The installer asks a few questions before it partitions the disk.",
           "Choose a mirror close to you so that packages download quickly.",
           "The boot loader is installed on the first hard disk by default."],
    "ru": ["Программа установки задаёт несколько вопросов перед разметкой диска.",
           "Выберите ближайшее к вам зеркало, чтобы пакеты загружались быстро."],
    "ja": ["インストーラはディスクを分割する前にいくつか質問します。"],
}


@pytest.fixture(scope="module")
def tok():
    texts = [t for v in TEXTS.values() for t in v]
    return hf_tokenizer(train_tokenizer(texts, vocab_size=300), 64)


@pytest.fixture(scope="module")
def pair(tok):
    return (tiny_llama(len(tok), 1, hidden=48, layers=2, logit_scale=10.0),
            tiny_llama(len(tok), 2, logit_scale=10.0))


def test_windows_cover_each_stream_without_overlap(tok):
    streams = tf.token_streams(tok, TEXTS)
    for lang, texts in TEXTS.items():
        s = streams[lang].tolist()
        assert s[0] == tok.bos_token_id and s[-1] == tok.eos_token_id
        assert s.count(tok.bos_token_id) == len(texts) == s.count(tok.eos_token_id)
        assert tok.decode(s, skip_special_tokens=True) == "".join(texts)
    w = tf.token_windows(tok, TEXTS, context_length=16, max_tokens_per_task=None)
    for ti, lang in enumerate(TEXTS):
        rows = (w.task == ti).nonzero().flatten()
        s = streams[lang]
        got_x = torch.cat([w.input_ids[r][w.mask[r]] for r in rows])
        got_y = torch.cat([w.targets[r][w.mask[r]] for r in rows])
        assert torch.equal(got_x, s[:-1]) and torch.equal(got_y, s[1:])
        assert bool(w.mask[rows[:-1]].all())      # only the last window of a task is padded
    assert w.tokens_per_task() == {l: len(streams[l]) - 1 for l in TEXTS}
    capped = tf.token_windows(tok, TEXTS, context_length=16, max_tokens_per_task=20)
    assert capped.tokens_per_task() == {l: min(20, len(streams[l]) - 1) for l in TEXTS}


def reference(ver, dra, w: tf.Windows, T: float):
    """Per-task means in float64 with nothing but torch."""
    with torch.no_grad():
        lp = ver(input_ids=w.input_ids).logits.double()
        lq = dra(input_ids=w.input_ids).logits.double()
    logp, logq = torch.log_softmax(lp / T, -1), torch.log_softmax(lq / T, -1)
    p, q = logp.exp(), logq.exp()
    per_tok = {"alpha": torch.minimum(p, q).sum(-1), "kl": (p * (logp - logq)).sum(-1),
               "ce": -(p * logq).sum(-1), "entropy": -(p * logp).sum(-1),
               "vnll": -torch.log_softmax(lp, -1).gather(-1, w.targets[..., None])[..., 0],
               "dnll": -torch.log_softmax(lq, -1).gather(-1, w.targets[..., None])[..., 0]}
    win = {k: (v * w.mask).sum(1) for k, v in per_tok.items()}
    out = {}
    for ti, lang in enumerate(w.task_names):
        sel = w.task == ti
        n = int(w.mask[sel].sum())
        out[lang] = {k: float(v[sel].sum()) / n for k, v in win.items()}
    return out, win


@pytest.mark.parametrize("T", [1.0, 0.7])
def test_evaluate_matches_plain_torch(tok, pair, T):
    ver, dra = pair
    w = tf.token_windows(tok, TEXTS, context_length=16, max_tokens_per_task=None)
    res = tf.evaluate(ver, dra, w, temperature=T, batch_size=3)
    ref, win = reference(ver, dra, w, T)
    assert res.task_names == list(TEXTS)
    for lang in TEXTS:
        r = ref[lang]
        assert res.tokens[lang] == int(w.mask[w.task == list(TEXTS).index(lang)].sum())
        for k in ("alpha", "kl", "ce", "entropy"):
            assert getattr(res, k)[lang] == pytest.approx(r[k], rel=1e-5, abs=1e-6), (lang, k)
        assert res.verifier_ppl[lang] == pytest.approx(math.exp(r["vnll"]), rel=1e-5)
        assert res.drafter_ppl[lang] == pytest.approx(math.exp(r["dnll"]), rel=1e-5)
    for k, name in (("alpha", "alpha_sum"), ("kl", "kl_sum"), ("ce", "ce_sum"), ("entropy", "entropy_sum")):
        torch.testing.assert_close(getattr(res, name), win[k], rtol=1e-5, atol=1e-4)
    assert torch.equal(res.window_tokens, w.mask.sum(1))
    # the pair is not degenerate: the figures differ between tasks and alpha is far from 0 and 1
    alphas = list(res.alpha.values())
    assert 0.05 < min(alphas) < max(alphas) < 0.95


def test_precomputed_target_logits_and_modes_restored(tok, pair):
    ver, dra = pair
    w = tf.token_windows(tok, TEXTS, context_length=16, max_tokens_per_task=None)
    dra.train()
    direct = tf.evaluate(ver, dra, w, batch_size=4)
    assert dra.training and not ver.training
    dra.eval()
    cached = tf.evaluate(None, dra, w, batch_size=2, target_logits=tf.verifier_logits(ver, w, batch_size=5))
    for k in ("alpha", "kl", "ce", "entropy", "verifier_ppl", "drafter_ppl"):
        for lang in TEXTS:
            assert getattr(cached, k)[lang] == pytest.approx(getattr(direct, k)[lang], rel=1e-6)
    with pytest.raises(ValueError, match="target_logits must have shape"):
        tf.evaluate(None, dra, w, target_logits=torch.zeros(1, 16, len(tok)))


def test_summary_and_to_dict(tok, pair):
    from specfair_kernels.stats import speedup

    ver, dra = pair
    w = tf.token_windows(tok, TEXTS, context_length=16)
    res = tf.evaluate(ver, dra, w)
    a = [res.alpha[l] for l in TEXTS]
    c = [res.ce[l] for l in TEXTS]
    var = lambda v: sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)  # noqa: E731
    s = res.summary(num_draft=3, cost_ratio=0.2)
    assert s["mean_alpha"] == pytest.approx(sum(a) / 3)
    assert s["alpha_variance"] == pytest.approx(var(a))
    assert s["U_ce"] == pytest.approx(var(c))
    assert s["alpha_max_min_ratio"] == pytest.approx(max(a) / min(a))
    sp = [speedup(x, 3, 0.2) for x in a]
    assert s["speedup_variance"] == pytest.approx(var(sp))
    d = res.to_dict(num_draft=3, cost_ratio=0.2, windows=True)
    import json

    json.dumps(d)
    assert d["per_task"]["speedup"]["en"] == pytest.approx(speedup(res.alpha["en"], 3, 0.2))
    assert len(d["windows"]["alpha_sum"]) == len(w)


def test_bootstrap_is_paired_and_brackets_the_estimate(tok, pair):
    ver, dra = pair
    w = tf.token_windows(tok, TEXTS, context_length=8)
    res = tf.evaluate(ver, dra, w)
    other = tf.evaluate(ver, tiny_llama(len(tok), 3, logit_scale=10.0), w)

    def mean_alpha(r):
        return sum(r["alpha"]) / len(r["alpha"])

    ci = paired_bootstrap([res], mean_alpha, n_boot=200, seed=1)
    assert ci["estimate"] == pytest.approx(res.summary()["mean_alpha"])
    assert ci["low"] < ci["estimate"] < ci["high"]
    # paired: the same resample goes to both results, so a difference of a result with
    # itself is exactly 0 in every replicate
    same = paired_bootstrap([res, res], lambda a, b: mean_alpha(a) - mean_alpha(b), n_boot=50)
    assert same["low"] == same["high"] == 0.0
    diff = paired_bootstrap([res, other], lambda a, b: mean_alpha(a) - mean_alpha(b), n_boot=100)
    assert diff["low"] < diff["high"]
    w2 = tf.token_windows(tok, TEXTS, context_length=16)
    with pytest.raises(ValueError, match="same windows"):
        paired_bootstrap([res, tf.evaluate(ver, dra, w2)], lambda a, b: 0.0, n_boot=2)


@pytest.mark.parametrize("T", [1.0, 0.6])
def test_alpha_argmax_is_p_at_the_drafters_argmax(tok, pair, T):
    """p(argmax q) per task and per window against plain torch, and against the kernel's
    sum min(p, q) for a one-hot q at the drafter's argmax (the same quantity)."""
    ver, dra = pair
    w = tf.token_windows(tok, TEXTS, context_length=16, max_tokens_per_task=None)
    res = tf.evaluate(ver, dra, w, temperature=T, batch_size=3)
    with torch.no_grad():
        lp, lq = ver(input_ids=w.input_ids).logits.double(), dra(input_ids=w.input_ids).logits.double()
    pa = torch.softmax(lp / T, -1).gather(-1, lq.argmax(-1, keepdim=True))[..., 0]
    torch.testing.assert_close(res.alpha_argmax_sum, torch.where(w.mask, pa, 0).sum(1), rtol=1e-5, atol=1e-5)
    for i, lang in enumerate(TEXTS):
        m = w.mask & (w.task[:, None] == i)
        assert res.alpha_argmax[lang] == pytest.approx(float(pa[m].mean()), rel=1e-5)
    # the same figure through the kernel: alpha of a one-hot drafter at q's argmax
    onehot = torch.full_like(lq, -1e4).scatter(-1, lq.argmax(-1, keepdim=True), 1e4).float()
    a1 = sk.token_divergence(onehot, lp.float(), kind="alpha", temperature=T, reduction="none", mask=w.mask)
    torch.testing.assert_close(tf.p_of_draft_argmax(lp.float(), lq.float(), T) * w.mask, a1 * w.mask,
                               rtol=1e-4, atol=1e-5)
    assert res.to_dict()["per_task"]["alpha_argmax"] == res.alpha_argmax
