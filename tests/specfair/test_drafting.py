"""Drafting modes of the generator: argmax drafts (one-hot q, as engines draft), the n-gram
(prompt-lookup) drafter, and the verify rule keyword.  Each is lossless: greedy output equals
the verifier alone token for token; sampled output passes a chi-square test against the
verifier's exact distribution (the generator's negative control shows the test can fail)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("scipy.stats")

from lossless_checks import V_SMALL, chi_square_pvalue, exact_three_token_distribution, sample_three  # noqa: E402
from tiny_models import perturbed_copy, tiny_llama  # noqa: E402

import specfair_kernels as sk  # noqa: E402
from specfair.generator import SpeculativeGenerator  # noqa: E402
from specfair.ngram import NgramConfig, ngram_drafts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 1, 6, 5, 1, 6, 3, 2], [7, 4, 7, 4]]  # repeats, so the n-gram drafter finds matches


@pytest.fixture(scope="module")
def pair():
    verifier = tiny_llama(V_SMALL, 3, hidden=32, logit_scale=40.0, layers=2, heads=4, max_pos=128, pad=0)
    return perturbed_copy(verifier, 0.5, 4), verifier


def make(pair, mode, temperature, **kw):
    drafter, verifier = pair
    if mode == "ngram":
        return SpeculativeGenerator(None, verifier, ngram=NgramConfig(3, 1), temperature=temperature,
                                    pad_token_id=0, **kw)
    return SpeculativeGenerator(drafter, verifier, draft=mode, temperature=temperature, pad_token_id=0, **kw)


# --- the n-gram match logic ---------------------------------------------------------------

def test_ngram_drafts_the_tokens_after_the_most_recent_longest_match():
    h = torch.tensor([[0, 0, 5, 1, 6, 5, 1, 7, 9, 5, 1],     # row text from col 2; suffix "5 1"
                      [3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3],     # "4 3" ... most recent "3 4 3" at col 6
                      [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0],     # no repeat at all -> nothing
                      [0, 0, 0, 8, 2, 8, 0, 0, 0, 0, 0]])    # padding must not match: text is cols 3..5
    start, end = torch.tensor([2, 0, 0, 3]), torch.tensor([11, 11, 9, 6])
    d, c = ngram_drafts(h, start, end, 3, NgramConfig(3, 1))
    assert c.tolist() == [3, 2, 0, 2]
    assert d[0].tolist() == [7, 9, 5]      # after the earlier "5 1" (cols 5-6), not the one at col 2
    assert d[1, :2].tolist() == [4, 3]     # after "3 4 3" at cols 6-8: only two tokens follow
    assert d[3, :2].tolist() == [2, 8]     # unigram "8" at col 3 (the padding 0s never count)
    assert int(d[2].abs().sum()) == 0 and int(d[1, 2]) == 0
    # only n = 3 allowed: row 0's suffix "6 5 1"... "5 9 5 1"? no earlier trigram "9 5 1" -> nothing
    d3, c3 = ngram_drafts(h, start, end, 3, NgramConfig(3, 3))
    assert c3.tolist() == [0, 2, 0, 0]
    assert ngram_drafts(h, start, end, 0, NgramConfig())[0].shape == (4, 0)


def test_ngram_config_and_generator_arguments_are_checked(pair):
    with pytest.raises(ValueError, match="min_ngram"):
        NgramConfig(1, 2)
    with pytest.raises(ValueError, match="max_ngram"):
        NgramConfig(0, 0)
    drafter, verifier = pair
    with pytest.raises(ValueError, match="drafter=None"):
        SpeculativeGenerator(drafter, verifier, ngram=NgramConfig())
    with pytest.raises(ValueError, match="num_draft='auto'"):
        SpeculativeGenerator(None, verifier, ngram=NgramConfig(), num_draft="auto")
    with pytest.raises(TypeError, match="ngram"):
        SpeculativeGenerator(None, verifier, ngram=3)
    with pytest.raises(ValueError, match="drafter is None"):
        SpeculativeGenerator(None, verifier)
    with pytest.raises(ValueError, match="draft must be"):
        SpeculativeGenerator(drafter, verifier, draft="beam")
    with pytest.raises(ValueError, match="verify_method"):
        SpeculativeGenerator(drafter, verifier, verify_method="tree")


# --- exactness ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["argmax", "ngram"])
def test_greedy_output_equals_the_verifier_alone(pair, mode):
    _, verifier = pair
    gen = make(pair, mode, 0.0, num_draft=3)
    out = gen.generate(PROMPTS, max_new_tokens=14, eos_token_id=[], seed=0)
    for i, p in enumerate(PROMPTS):
        ref = verifier.generate(input_ids=torch.tensor([p]), max_new_tokens=14, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(p):]
        assert out.sequences[i, -14:].tolist() == ref.tolist(), (mode, i)
    assert float(out.stats.acceptance_rate()[0]) > 0.2  # drafts were accepted, not only rejected


@pytest.mark.parametrize("mode,temperature", [("argmax", 1.0), ("argmax", 0.7), ("ngram", 1.0)])
def test_sampled_output_is_distributed_as_the_verifier(pair, mode, temperature):
    _, verifier = pair
    gen = make(pair, mode, temperature, num_draft=2)
    counts, out = sample_three(gen, PROMPTS, 3000, seed=99)
    acc = float(out.stats.acceptance_rate()[0])
    assert 0.1 < acc < 0.95, acc  # both accept and reject paths produce the samples
    for prompt, c in zip(PROMPTS, counts):
        p = chi_square_pvalue(c, exact_three_token_distribution(verifier, prompt, temperature, None, None))
        assert p > 1e-4, (mode, prompt, p)


def test_ngram_negative_control_accepting_every_draft_is_detected(pair, monkeypatch):
    _, verifier = pair
    real_verify = sk.verify

    def accept_every_draft(target_logits, draft_logits, draft_tokens, **kw):
        K = draft_tokens.shape[1]
        forced = torch.full_like(target_logits[:, :K], -1e4).scatter(-1, draft_tokens[..., None], 1e4)
        return real_verify(torch.cat([forced, target_logits[:, K:]], 1), draft_logits, draft_tokens, **kw)

    monkeypatch.setattr(sk, "verify", accept_every_draft)
    counts, _ = sample_three(make(pair, "ngram", 1.0, num_draft=2), PROMPTS[:1], 3000, seed=99)
    try:
        p = chi_square_pvalue(counts[0], exact_three_token_distribution(verifier, PROMPTS[0], 1.0, None, None))
    except AssertionError:  # it emitted a sequence the verifier never would: detected outright
        p = 0.0
    assert p < 1e-6, p


@pytest.mark.parametrize("mode", ["sample", "argmax"])
def test_block_verification_greedy_equals_token_and_is_lossless_sampled(pair, mode):
    _, verifier = pair
    greedy = [make(pair, mode, 0.0, num_draft=3, verify_method=m).generate(PROMPTS, max_new_tokens=10,
                                                                           eos_token_id=[], seed=0)
              for m in ("token", "block")]
    assert torch.equal(greedy[0].sequences, greedy[1].sequences)
    gen = make(pair, mode, 1.0, num_draft=2, verify_method="block")
    counts, _ = sample_three(gen, PROMPTS, 3000, seed=7)
    for prompt, c in zip(PROMPTS, counts):
        assert chi_square_pvalue(c, exact_three_token_distribution(verifier, prompt, 1.0, None, None)) > 1e-4
