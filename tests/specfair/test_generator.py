"""The speculative generator: loading a pair, losslessness (greedy token for token
against Hugging Face's own greedy decoding; sampling by chi-square against the verifier's
exact distribution, with a negative control), cache rollback under per-row acceptance,
adaptive K, the verifier-only baseline and the measured speed-up, and bad input."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
scipy_stats = pytest.importorskip("scipy.stats")

from lossless_checks import V_SMALL, chi_square_pvalue, exact_three_token_distribution, sample_three  # noqa: E402
from tiny_models import perturbed_copy, tiny_llama  # noqa: E402
from tiny_models import tiny_tokenizer as train_tokenizer  # noqa: E402

import specfair  # noqa: E402
import specfair_kernels as sk  # noqa: E402
from specfair.baseline import generate_verifier_only, measure_speedup  # noqa: E402
from specfair.costs import (  # noqa: E402
    AUTO_PRIOR_ACCEPTANCE,
    break_even_acceptance,
    choose_num_draft,
    expected_tokens,
    measure_costs,
)
from specfair.decoding import SECTIONS, process_logits  # noqa: E402
from specfair.generator import SpeculativeGenerator  # noqa: E402
from specfair.models import load_pair, output_vocab_size  # noqa: E402
from specfair_kernels.stats import speedup as model_speedup  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog", "speculative decoding drafts tokens and verifies them",
        "a small drafter and a large verifier share one tokenizer", "le renard brun saute par dessus le chien",
        "der schnelle braune fuchs springt", "numbers 0 1 2 3 4 5 6 7 8 9 10 11 12"] * 4


# --- tiny models saved to disk and loaded through from_pretrained --------------------------

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tok = train_tokenizer(TEXT)
    V = len(tok)
    paths = {}
    verifier = tiny_llama(V, 0, hidden=48, logit_scale=60.0, layers=2, heads=4, max_pos=128, pad=0)
    for name, vocab in (("verifier", V), ("drafter", V), ("drafter_padded", V + 8), ("drafter_small", V - 4)):
        model = verifier if name == "verifier" else perturbed_copy(verifier, 0.2, 1)
        if vocab != V:
            model.resize_token_embeddings(vocab)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
    other = train_tokenizer([t[::-1] for t in TEXT])
    other_model = tiny_llama(len(other), 1, logit_scale=60.0, layers=2, heads=4, max_pos=128, pad=0)
    other_model.save_pretrained(root / "drafter_other_tok")
    other.save_pretrained(root / "drafter_other_tok")
    paths["drafter_other_tok"] = root / "drafter_other_tok"
    return paths


@pytest.fixture(scope="module")
def tiny_pair(tiny_dirs):
    return load_pair(tiny_dirs["drafter"], tiny_dirs["verifier"], device="cpu")


@pytest.fixture(scope="module")
def default_pair():
    return load_pair(specfair.default_pair_path("drafter"), specfair.default_pair_path("verifier"), device="cpu")


def prompts(tok, texts):
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def hf_greedy(model, ids, mask, n, eos=None, pad=0):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          eos_token_id=eos, pad_token_id=pad)


# --- load_pair -----------------------------------------------------------------------------

def test_load_pair_loads_models_and_the_shared_tokenizer(tiny_dirs, tiny_pair):
    drafter, verifier, tok = tiny_pair
    assert type(drafter).__name__ == type(verifier).__name__ == "LlamaForCausalLM"
    assert not drafter.training and not verifier.training
    assert verifier.config.hidden_size == drafter.config.hidden_size == 48
    assert not torch.equal(verifier.lm_head.weight, drafter.lm_head.weight)
    assert tok.get_vocab() == train_tokenizer(TEXT).get_vocab()


def test_load_pair_accepts_embedding_padding_and_generates_over_the_shared_vocabulary(tiny_dirs):
    drafter, verifier, tok = load_pair(tiny_dirs["drafter_padded"], tiny_dirs["verifier"], device="cpu",
                                       dtype="float32")
    assert output_vocab_size(drafter) == len(tok) + 8
    gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=0)
    assert gen.vocab_size == len(tok)
    ids, mask = prompts(tok, ["the quick", "a small drafter and"])
    out = gen.generate(ids, mask, max_new_tokens=12, eos_token_id=[], seed=0)
    assert torch.equal(out.sequences, hf_greedy(verifier, ids, mask, 12))


def test_load_pair_rejects_different_tokenizers_and_small_embeddings(tiny_dirs):
    with pytest.raises(ValueError, match="tokenizers differ"):
        load_pair(tiny_dirs["drafter_other_tok"], tiny_dirs["verifier"], device="cpu")
    with pytest.raises(ValueError, match="drafter's output embedding has"):
        load_pair(tiny_dirs["drafter_small"], tiny_dirs["verifier"], device="cpu")


def test_load_pair_gguf_arguments(tiny_dirs, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="drafter: GGUF file .*missing.gguf does not exist"):
        load_pair(tmp_path / "missing.gguf", tiny_dirs["verifier"])
    with pytest.raises(FileNotFoundError, match="verifier_gguf_file"):
        load_pair(tiny_dirs["drafter"], tiny_dirs["verifier"], verifier_gguf_file="nope.gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"verifier: .*model.gguf needs the `gguf` package.*pip install"):
        load_pair(tiny_dirs["drafter"], fake)
    with pytest.raises(ImportError, match="drafter: .*needs the `gguf` package"):
        load_pair(tmp_path, tiny_dirs["verifier"], drafter_gguf_file="model.gguf")


# --- greedy: token for token the verifier's own greedy decoding -----------------------------

@pytest.mark.parametrize("num_draft,compact,cache", [(1, 0.5, "dynamic"), (4, 0.0, "dynamic"), (4, None, "dynamic"),
                                                    (1, 0.5, "static"), (4, 0.0, "static"), (4, None, "static")])
def test_greedy_equals_hf_greedy_batched_with_different_prompt_lengths(tiny_pair, num_draft, compact, cache):
    drafter, verifier, tok = tiny_pair
    ids, mask = prompts(tok, ["the", "speculative decoding drafts tokens", "numbers 0 1 2", "le renard brun"])
    assert len(set(mask.sum(1).tolist())) > 1
    gen = SpeculativeGenerator(drafter, verifier, num_draft=num_draft, temperature=0, compact_threshold=compact,
                               cache=cache)
    out = gen.generate(ids, mask, max_new_tokens=30, eos_token_id=[], seed=0)
    assert torch.equal(out.sequences, hf_greedy(verifier, ids, mask, 30))
    assert out.num_new_tokens.tolist() == [30] * 4
    acc = float(out.stats.acceptance_rate()[0])
    assert 0.05 < acc < 0.95, acc  # rejections and acceptances both happen: rollback is exercised
    assert out.steps < 30 and out.stats.counts[0, sk.stats.COUNT_STEPS] == int(out.row_steps.sum())


def test_greedy_batch_one_default_pair_and_eos(default_pair):
    drafter, verifier, tok = default_pair
    ids, mask = prompts(tok, ["Die Installation von Debian"])
    ref = hf_greedy(verifier, ids, mask, 40, pad=tok.pad_token_id)
    gen = SpeculativeGenerator(drafter, verifier, num_draft=5, temperature=0)
    out = gen.generate(ids, mask, max_new_tokens=40, eos_token_id=[], seed=0)
    assert torch.equal(out.sequences, ref)
    # Stop at a token the output contains in its middle, as HF does with that EOS.
    P = ids.shape[1]
    eos = int(ref[0, P + 17])
    first = (ref[0, P:] == eos).nonzero()[0, 0].item()
    out = gen.generate(ids, mask, max_new_tokens=40, eos_token_id=eos, seed=0)
    assert int(out.num_new_tokens[0]) == first + 1
    assert torch.equal(out.sequences, hf_greedy(verifier, ids, mask, 40, eos=eos, pad=tok.pad_token_id))


def test_greedy_batched_eos_per_row_pads_after_it(default_pair):
    drafter, verifier, tok = default_pair
    ids, mask = prompts(tok, ["The installer", "Программа установки", "Le système", "El programa de instalación"])
    P = ids.shape[1]
    free = hf_greedy(verifier, ids, mask, 24, pad=tok.pad_token_id)
    eos = int(free[1, P + 6])  # some row stops early, the others later or never
    ref = hf_greedy(verifier, ids, mask, 24, eos=eos, pad=tok.pad_token_id)
    gen = SpeculativeGenerator(drafter, verifier, num_draft=4, temperature=0)
    out = gen.generate(ids, mask, max_new_tokens=24, eos_token_id=eos, seed=0)
    assert torch.equal(out.sequences, ref)
    lengths = out.num_new_tokens.tolist()
    assert len(set(lengths)) > 1 and min(lengths) <= 7
    for b, n in enumerate(lengths):
        assert (out.sequences[b, P + n:] == tok.pad_token_id).all()


def test_verifier_only_greedy_and_teacher_forced_reproduce_outputs(default_pair):
    drafter, verifier, tok = default_pair
    ids, mask = prompts(tok, ["The installer", "Программа установки", "Le"])
    free = generate_verifier_only(verifier, ids, mask, 16, eos_token_id=[], temperature=0)
    assert torch.equal(free.sequences, hf_greedy(verifier, ids, mask, 16, pad=tok.pad_token_id))
    assert free.steps == 16 and free.row_steps.tolist() == [16] * 3
    gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=1.0)
    spec = gen.generate(ids, mask, max_new_tokens=16, eos_token_id=2, seed=3)
    forced = generate_verifier_only(verifier, ids, mask, 16, eos_token_id=2, temperature=1.0, seed=3, forced=spec)
    assert torch.equal(forced.sequences, spec.sequences)
    assert forced.row_steps.tolist() == spec.num_new_tokens.tolist()  # one forward per token
    for kw, msg in (({"temperature": -1.0}, "temperature must be finite and >= 0"),
                    ({"temperature": 1.0, "top_k": 0}, "top_k must be None or an int >= 1"),
                    ({"temperature": 1.0, "top_p": 1.5}, r"top_p must be None or a float in \(0, 1\]")):
        with pytest.raises(ValueError, match=msg):   # the generator's own checks, before any forward
            generate_verifier_only(verifier, ids, mask, 4, **kw)


# --- sampling: seeded, and distributed as the verifier -------------------------------------

def test_same_seed_same_tokens_different_seed_different(default_pair):
    drafter, verifier, tok = default_pair
    ids, mask = prompts(tok, ["The installer", "Программа установки"])
    gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=1.0, top_p=0.95)
    a = gen.generate(ids, mask, max_new_tokens=16, eos_token_id=[], seed=11)
    b = gen.generate(ids, mask, max_new_tokens=16, eos_token_id=[], seed=11)
    c = gen.generate(ids, mask, max_new_tokens=16, eos_token_id=[], seed=12)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)


@pytest.mark.parametrize("compact,cache", [(0.0, "dynamic"), (None, "dynamic"), (0.0, "static"), (None, "static")])
def test_caches_roll_back_exactly_under_random_per_row_rejections(tiny_pair, monkeypatch, compact, cache):
    """The drafter is the verifier itself, and `verify` is told a random number of valid
    drafts per row, so rows keep random prefixes of their drafts (some all K, some none).
    If either cache, mask or position id were rolled back wrong, the drafter's q would differ
    from the verifier's p at later positions and alpha = sum min(p, q) would drop below 1."""
    _, verifier, tok = tiny_pair
    real_verify = sk.verify
    g = torch.Generator().manual_seed(0)

    def random_cut(target_logits, draft_logits, draft_tokens, num_draft=None, **kw):
        cut = torch.randint(0, draft_tokens.shape[1] + 1, num_draft.shape, generator=g)
        return real_verify(target_logits, draft_logits, draft_tokens, num_draft=torch.minimum(num_draft, cut), **kw)

    monkeypatch.setattr(sk, "verify", random_cut)
    ids, mask = prompts(tok, ["the", "speculative decoding drafts tokens and", "numbers 0 1", "le renard"])
    gen = SpeculativeGenerator(verifier, verifier, num_draft=3, temperature=1.0, compact_threshold=compact,
                               cache=cache)
    out = gen.generate(ids, mask, max_new_tokens=30, eos_token_id=[], seed=5)
    st = out.stats
    hist = st.hist[0].tolist()
    assert hist[0] > 5 and hist[3] > 5 and hist[1] + hist[2] > 5   # none, all, and some drafts kept
    assert float(st.expected_acceptance()[0]) > 0.9999
    assert int(st.counts[0, sk.stats.COUNT_ACCEPTED]) == int(st.counts[0, sk.stats.COUNT_TESTED])
    # The same check sees a genuinely different drafter.
    monkeypatch.setattr(sk, "verify", real_verify)
    other = SpeculativeGenerator(tiny_pair[0], verifier, num_draft=3, temperature=1.0)
    assert float(other.generate(ids, mask, max_new_tokens=30, eos_token_id=[], seed=5)
                 .stats.expected_acceptance()[0]) < 0.95



@pytest.fixture(scope="module")
def small_vocab_pair():
    verifier = tiny_llama(V_SMALL, 3, hidden=32, logit_scale=40.0, layers=2, heads=4, max_pos=128, pad=0)
    return perturbed_copy(verifier, 0.5, 4), verifier


LOSSLESS_CASES = [(1.0, None, None), (0.7, 3, None), (1.3, None, 0.75), (1.0, 4, 0.8)]


@pytest.mark.parametrize("temperature,top_k,top_p,cache", [c + ("dynamic",) for c in LOSSLESS_CASES]
                         + [LOSSLESS_CASES[0] + ("static",)])
def test_sampled_output_is_distributed_as_the_verifier(small_vocab_pair, temperature, top_k, top_p, cache):
    drafter, verifier = small_vocab_pair
    prompt_a, prompt_b = [5, 1, 6, 3, 2], [7, 4]  # two lengths in one batch: left padding
    gen = SpeculativeGenerator(drafter, verifier, num_draft=2, temperature=temperature, top_k=top_k, top_p=top_p,
                               pad_token_id=0, cache=cache)
    counts, out = sample_three(gen, [prompt_a, prompt_b], 3000, seed=1234)
    acc = float(out.stats.acceptance_rate()[0])
    assert 0.2 < acc < 0.9, acc  # both accept and reject paths produce the samples
    for prompt, c in zip((prompt_a, prompt_b), counts):
        p = chi_square_pvalue(c, exact_three_token_distribution(verifier, prompt, temperature, top_k, top_p))
        assert p > 1e-4, (prompt, p)


def test_negative_control_always_accepting_drafts_is_detected(small_vocab_pair, monkeypatch):
    drafter, verifier = small_vocab_pair
    real_verify = sk.verify

    def accept_every_draft(target_logits, draft_logits, draft_tokens, **kw):
        K = draft_tokens.shape[1]
        target = torch.cat([draft_logits.to(target_logits.dtype), target_logits[:, K:]], 1)  # p := q
        return real_verify(target, draft_logits, draft_tokens, **kw)

    monkeypatch.setattr(sk, "verify", accept_every_draft)
    gen = SpeculativeGenerator(drafter, verifier, num_draft=2, temperature=1.0, pad_token_id=0)
    counts, _ = sample_three(gen, [[5, 1, 6, 3, 2]], 3000, seed=1234)
    p = chi_square_pvalue(counts[0], exact_three_token_distribution(verifier, [5, 1, 6, 3, 2], 1.0, None, None))
    assert p < 1e-6, p


def test_process_logits_matches_hugging_face_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    for T, k, p in [(0.7, 5, None), (1.0, None, 0.9), (1.5, 10, 0.6), (1.0, 1, None)]:
        ours = process_logits(logits, T, k, p) / T
        hf = TemperatureLogitsWarper(T)(None, logits.clone())
        if k is not None:
            hf = TopKLogitsWarper(k)(None, hf)
        if p is not None:
            hf = TopPLogitsWarper(p)(None, hf)
        assert torch.equal(torch.isinf(ours), torch.isinf(hf))
        assert torch.allclose(ours[~torch.isinf(ours)], hf[~torch.isinf(hf)])


# --- adaptive K ------------------------------------------------------------------------------

def test_choose_num_draft_maximises_the_model_speedup():
    for c in (0.0, 0.05, 0.2, 0.6):
        alphas = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0]
        chosen = choose_num_draft(torch.tensor(alphas), c, 8)
        for a, k in zip(alphas, chosen):
            best = max(model_speedup(a, j, c) for j in range(1, 9))
            assert math.isclose(model_speedup(a, k, c), best, rel_tol=1e-12)
            assert all(model_speedup(a, j, c) < best for j in range(1, k))  # ties go to the smaller K
    assert choose_num_draft([0.95, 0.1], 0.1, 8) == [8, 1]
    assert choose_num_draft([float("nan")], 0.1, 8) == choose_num_draft([AUTO_PRIOR_ACCEPTANCE], 0.1, 8)
    # A verifier forward that costs 1 + K/2 steps over K+1 tokens favours short drafts.
    r = [1 + k / 2 for k in range(9)]
    for a in (0.5, 0.8, 0.95):
        k = choose_num_draft([a], 0.1, 8, verify_cost=r)[0]
        gains = [expected_tokens(a, j) / (j * 0.1 + r[j]) for j in range(1, 9)]
        assert gains[k - 1] == max(gains)
        assert k <= choose_num_draft([a], 0.1, 8)[0]
    assert choose_num_draft([0.5], 0.1, 8, verify_cost=[1.0] * 9) == choose_num_draft([0.5], 0.1, 8)
    with pytest.raises(ValueError, match="verify_cost must have"):
        choose_num_draft([0.5], 0.1, 8, verify_cost=[1.0] * 4)


def test_auto_num_draft_per_task_in_one_batch_is_lossless(default_pair):
    drafter, verifier, tok = default_pair
    stats = sk.TaskStats(num_tasks=2, max_draft=6)
    # History: task 0 drafts are nearly always accepted, task 1's nearly never (greedy: the
    # realised accepted / tested rate is what auto reads).
    stats.counts[:, sk.stats.COUNT_DRAFTED] = stats.counts[:, sk.stats.COUNT_TESTED] = 10_000
    stats.counts[:, sk.stats.COUNT_ACCEPTED] = torch.tensor([9_600, 500])
    ids, mask = prompts(tok, ["The installer", "Программа установки", "Le système", "El programa"])
    gen = SpeculativeGenerator(drafter, verifier, num_draft="auto", max_draft=6, cost_ratio=0.05, temperature=0)
    before = stats.counts.clone()
    out = gen.generate(ids, mask, max_new_tokens=20, eos_token_id=[], task_ids=[0, 1, 0, 1], stats=stats, seed=0)
    assert torch.equal(out.sequences, hf_greedy(verifier, ids, mask, 20, pad=tok.pad_token_id))
    assert out.num_draft == [6, 1]
    d = stats.counts - before
    drafted, steps = d[:, sk.stats.COUNT_DRAFTED], d[:, sk.stats.COUNT_STEPS]
    assert drafted[1] <= steps[1]            # K = 1 for task 1's rows ...
    assert drafted[0] > 4 * steps[0]         # ... and up to 6 for task 0's, in the same batch


# --- timing and measured speed-up --------------------------------------------------------------

def test_timings_and_measure_speedup_report(default_pair):
    drafter, verifier, tok = default_pair
    ids, mask = prompts(tok, ["The installer", "Программа установки", "Le système", "El programa"])
    gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=0)
    out = gen.generate(ids, mask, max_new_tokens=8, eos_token_id=[], seed=0)
    assert set(out.timings) == set(SECTIONS)
    parts = sum(v for k, v in out.timings.items() if k != "total")
    assert 0 < parts <= out.timings["total"] * (1 + 1e-9)
    rep = measure_speedup(gen, ids, mask, task_ids=[0, 1, 0, 1], num_tasks=2, max_new_tokens=8, seed=0,
                          cost_ratio=0.25, eos_token_id=[])
    assert set(rep["per_task"]) == {0, 1}
    for r in rep["per_task"].values():
        assert r["rows"] == 2 and r["tokens"] == 16 and r["num_draft"] == 3
        assert r["measured_speedup"] == pytest.approx(r["verifier_seconds"] / r["spec_seconds"])
        assert r["predicted_speedup"] == pytest.approx(model_speedup(r["acceptance"], 3, 0.25))
        # given c (no measured r_K): break-even of S(alpha; 3, 0.25, 1), 1 + a + a^2 + a^3 = 1.75
        assert r["break_even_acceptance"] == pytest.approx(break_even_acceptance(3, 0.25, 1.0))
        assert expected_tokens(r["break_even_acceptance"], 3) == pytest.approx(1.75, rel=1e-9)
        assert r["acceptance_margin"] == pytest.approx(r["acceptance"] - r["break_even_acceptance"])
        assert 1.0 <= r["tokens_per_step"] <= 4.0
    assert set(rep["break_even_acceptance"]) == {3}
    assert rep["stats"]["per_task"]["steps"] == [int(x) for x in rep["stats"]["per_task"]["steps"]]
    # Interleaved repeats time the same work again: identical tokens and statistics (only the
    # first run adds into them), sampled rows and auto K included.
    samp = SpeculativeGenerator(drafter, verifier, num_draft="auto", max_draft=3, temperature=1.0, cost_ratio=0.3)
    one = measure_speedup(samp, ids, mask, task_ids=[0, 1, 0, 1], num_tasks=2, max_new_tokens=8, seed=5,
                          eos_token_id=[], repeats=1)
    three = measure_speedup(samp, ids, mask, task_ids=[0, 1, 0, 1], num_tasks=2, max_new_tokens=8, seed=5,
                            eos_token_id=[], repeats=3)
    assert one["stats"]["per_task"] == three["stats"]["per_task"]
    for t in (0, 1):
        for k in ("tokens", "acceptance", "realised_acceptance", "tokens_per_step", "num_draft"):
            assert one["per_task"][t][k] == three["per_task"][t][k], k
    with pytest.raises(ValueError, match="repeats"):
        measure_speedup(samp, ids, mask, max_new_tokens=2, repeats=0)
    costs = measure_costs(drafter, verifier, batch_size=2, max_draft=3, context=8, repeats=3)
    assert costs["cost_ratio"] > 0 and len(costs["verify_cost"]) == 4 and costs["verify_cost"][0] == 1.0
    assert all(x > 0 for x in costs["verify_cost"])
    auto = SpeculativeGenerator(drafter, verifier, num_draft="auto", max_draft=3, temperature=0)
    out = auto.generate(ids, mask, max_new_tokens=8, eos_token_id=[], seed=0)  # measures its costs
    assert set(auto.costs) == {4} and auto.verify_cost(4) == auto.costs[4]["verify_cost"]
    assert 0 <= out.num_draft[0] <= 3   # 0 where these measured costs say no K pays at its acceptance


# --- bad input ---------------------------------------------------------------------------------

def test_max_new_tokens_zero_returns_the_prompts(tiny_pair):
    drafter, verifier, tok = tiny_pair
    ids, mask = prompts(tok, ["the", "numbers 0 1 2"])
    out = SpeculativeGenerator(drafter, verifier).generate(ids, mask, max_new_tokens=0)
    assert torch.equal(out.sequences, ids) and out.num_new_tokens.tolist() == [0, 0] and out.steps == 0


def test_bad_input_raises_clear_errors(tiny_pair):
    drafter, verifier, tok = tiny_pair
    gen = SpeculativeGenerator(drafter, verifier, num_draft=2)
    ids, mask = prompts(tok, ["the", "numbers 0 1 2"])
    cases = [
        (dict(input_ids=ids[:, :0]), ValueError, "input_ids holds empty prompts"),
        (dict(input_ids=[[5, 6], []]), ValueError, "input_ids holds an empty prompt"),
        (dict(input_ids=ids, attention_mask=torch.zeros_like(mask)), ValueError, "empty prompt"),
        (dict(input_ids=ids, attention_mask=mask.flip(1)), ValueError, "attention_mask must be left-padded"),
        (dict(input_ids=ids, attention_mask=mask[:, 1:]), ValueError, "attention_mask must have the shape"),
        (dict(input_ids=ids.float()), TypeError, "input_ids must be an integer tensor"),
        (dict(input_ids=ids + 10_000), ValueError, "input_ids must lie in"),
        (dict(input_ids=torch.ones(1, 200, dtype=torch.long)), ValueError, "input_ids: the longest prompt has 200"),
        (dict(input_ids=ids, max_new_tokens=127), ValueError, "max_new_tokens=127 .* exceeds"),
        (dict(input_ids=ids, max_new_tokens=-1), ValueError, "max_new_tokens must be >= 0"),
        (dict(input_ids=ids, max_new_tokens=2.0), TypeError, "max_new_tokens must be an int"),
        (dict(input_ids=ids, task_ids=[0, 3], num_tasks=2), ValueError, r"task_ids must lie in \[0, num_tasks\)"),
        (dict(input_ids=ids, task_ids=[0, -1]), ValueError, "task_ids must lie in"),
        (dict(input_ids=ids, task_ids=[0]), ValueError, r"task_ids must have shape \[B\]"),
        (dict(input_ids=ids, stats=sk.TaskStats(2, 1)), ValueError, "stats has max_draft=1"),
        (dict(input_ids=ids, task_ids=[0, 1], num_tasks=3, stats=sk.TaskStats(2, 2)), ValueError, "num_tasks=3"),
        (dict(input_ids=ids, eos_token_id="x"), TypeError, "eos_token_id must be"),
        (dict(input_ids=ids, seed=1.5), TypeError, "seed must be an int"),
    ]
    for kwargs, exc, msg in cases:
        kwargs.setdefault("max_new_tokens", 4)
        with pytest.raises(exc, match=msg):
            gen.generate(**kwargs)


def test_bad_constructor_arguments(tiny_pair):
    drafter, verifier, _ = tiny_pair
    cases = [
        (dict(num_draft=0), ValueError, "num_draft must be >= 1"),
        (dict(num_draft="fixed"), TypeError, "num_draft must be an int >= 1 or 'auto'"),
        (dict(temperature=-0.5), ValueError, "temperature must be finite and >= 0"),
        (dict(top_k=0), ValueError, "top_k must be None or an int >= 1"),
        (dict(top_p=1.5), ValueError, r"top_p must be None or a float in \(0, 1\]"),
        (dict(num_draft="auto", max_draft=0), ValueError, "max_draft must be"),
        (dict(cost_ratio=-1.0), ValueError, "cost_ratio must be"),
        (dict(vocab_size=10**6), ValueError, "vocab_size must be"),
        (dict(compact_threshold=2), ValueError, "compact_threshold must be"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            SpeculativeGenerator(drafter, verifier, **kwargs)
    with pytest.raises(TypeError, match="drafter must be a transformers causal LM"):
        SpeculativeGenerator("gpt2", verifier)
    meta = tiny_llama(verifier.config.vocab_size, 1, layers=2, heads=4, max_pos=128, pad=0).to("meta")
    with pytest.raises(ValueError, match="drafter is on meta but verifier is on cpu"):
        SpeculativeGenerator(meta, verifier)
