"""The fixed-shape step (``fixed_step=True``, `specfair.step_graph`): greedy output equal to
Hugging Face's, the same counts as the default loop, exact per-row rollback and in-place
compaction, sampled output distributed as the verifier's (chi-square), a step that reads
nothing back from the device (the condition for capturing it), clear errors; and, on a GPU
only, the captured step giving the eager step's tokens."""
from __future__ import annotations

import pytest
import torch
from lossless_checks import V_SMALL, chi_square_pvalue, exact_three_token_distribution, sample_three
from tiny_models import left_padded_prompts, nan_logits_at_forward, perturbed_copy, tiny_llama
from torch.overrides import TorchFunctionMode

import specfair_kernels as sk
from specfair import step_graph
from specfair.generator import SpeculativeGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair():
    verifier = tiny_llama(64, 2, hidden=32, layers=2, heads=4, kv_heads=2, max_pos=256, logit_scale=8.0, pad=0)
    return perturbed_copy(verifier, 0.3, 4), verifier


def fixed(drafter, verifier, **kw):
    kw.setdefault("temperature", 0)
    return SpeculativeGenerator(drafter, verifier, cache="static", fixed_step=True, **kw)


@pytest.mark.parametrize("K", [1, 3])
def test_greedy_equals_hf_and_counts_equal_the_default_loop(pair, K):
    drafter, verifier = pair
    ids, mask = left_padded_prompts()
    want = verifier.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    out = fixed(drafter, verifier, num_draft=K).generate(ids, mask, max_new_tokens=20, eos_token_id=[], seed=0)
    assert torch.equal(out.sequences, want)
    # an EOS ends rows at different steps: finished rows run on, and their counts are taken back out
    eos = int(want[1, ids.shape[1] + 5])
    for eos_ids in ([], [eos]):
        got = fixed(drafter, verifier, num_draft=K).generate(ids, mask, max_new_tokens=20, eos_token_id=eos_ids,
                                                             seed=0)
        ref = SpeculativeGenerator(drafter, verifier, num_draft=K, temperature=0).generate(
            ids, mask, max_new_tokens=20, eos_token_id=eos_ids, seed=0)
        assert torch.equal(got.sequences, ref.sequences)
        assert got.num_new_tokens.tolist() == ref.num_new_tokens.tolist()
        assert got.row_steps.tolist() == ref.row_steps.tolist() and got.steps == ref.steps
        assert torch.equal(got.stats.counts, ref.stats.counts) and torch.equal(got.stats.hist, ref.stats.hist)
        torch.testing.assert_close(got.stats.sums, ref.stats.sums, rtol=1e-5, atol=1e-5)
    assert len(set(got.num_new_tokens.tolist())) > 1
    acc = float(got.stats.acceptance_rate()[0])
    assert 0.05 < acc < 0.95, acc   # both the accept and the reject rollback ran
    assert got.timings["step"] > 0 and got.timings["draft"] == 0


def test_rollback_and_compaction_are_exact_under_random_per_row_rejections(pair, monkeypatch):
    """The drafter is the verifier itself and `verify` is told a random number of valid
    drafts per row, so rows keep random prefixes of their drafts.  The caches are made small
    enough that the holes force in-place compactions.  A slot rolled back, compacted or
    positioned wrong would make the drafter's q differ from the verifier's p: alpha < 1."""
    _, verifier = pair
    real_verify, real_compact = sk.verify, step_graph.SlotCache.compact
    g = torch.Generator().manual_seed(0)
    compactions = []

    def random_cut(target_logits, draft_logits, draft_tokens, num_draft=None, **kw):
        cut = torch.randint(0, draft_tokens.shape[1] + 1, num_draft.shape, generator=g)
        return real_verify(target_logits, draft_logits, draft_tokens, num_draft=torch.minimum(num_draft, cut), **kw)

    def counted_compact(self):
        compactions.append(self.S)
        real_compact(self)

    monkeypatch.setattr(sk, "verify", random_cut)
    monkeypatch.setattr(step_graph.SlotCache, "compact", counted_compact)
    monkeypatch.setattr(step_graph, "fixed_cache_len", lambda P, N, K: P + N + 3 * (K + 1))
    ids, mask = left_padded_prompts(lengths=(3, 9, 5, 1))
    out = fixed(verifier, verifier, num_draft=3, temperature=1.0).generate(ids, mask, max_new_tokens=30,
                                                                          eos_token_id=[], seed=5)
    hist = out.stats.hist[0].tolist()
    assert hist[0] > 5 and hist[3] > 5 and hist[1] + hist[2] > 5, hist   # none, all, and some drafts kept
    assert float(out.stats.expected_acceptance()[0]) > 0.9999
    assert len(compactions) >= 2, compactions
    assert out.num_new_tokens.tolist() == [30] * 4


@pytest.fixture(scope="module")
def small_vocab_pair():
    verifier = tiny_llama(V_SMALL, 3, hidden=32, logit_scale=40.0, layers=2, heads=4, max_pos=128, pad=0)
    return perturbed_copy(verifier, 0.5, 4), verifier


@pytest.mark.parametrize("temperature,top_k,top_p,draft", [(1.0, None, None, "sample"), (0.7, 3, None, "sample"),
                                                          (1.0, 4, 0.8, "argmax")])
def test_sampled_output_is_distributed_as_the_verifier(small_vocab_pair, temperature, top_k, top_p, draft):
    """3 new tokens at K = 2: rows finish after one, two or three steps and run on finished."""
    drafter, verifier = small_vocab_pair
    prompt_a, prompt_b = [5, 1, 6, 3, 2], [7, 4]
    gen = fixed(drafter, verifier, num_draft=2, temperature=temperature, top_k=top_k, top_p=top_p, draft=draft,
                pad_token_id=0)
    counts, out = sample_three(gen, [prompt_a, prompt_b], 3000, seed=1234)
    acc = float(out.stats.acceptance_rate()[0])
    assert 0.2 < acc < 0.95, acc
    assert int(out.stats.counts[0, sk.stats.COUNT_EMITTED]) == 3 * 6000   # nothing counted for finished rows
    for prompt, c in zip((prompt_a, prompt_b), counts):
        p = chi_square_pvalue(c, exact_three_token_distribution(verifier, prompt, temperature, top_k, top_p))
        assert p > 1e-4, (prompt, p)


def test_every_verify_backend_gives_the_same_tokens_and_counts(pair, any_backend):
    """The step calls `verify` with device tensors for the step index and the draft counts
    and without value checks; every backend (the Triton interpreter on a CPU included) gives
    the reference's tokens and counts with one seed."""
    drafter, verifier = (m.to(any_backend.device) for m in pair)
    ids, mask = (t.to(any_backend.device) for t in left_padded_prompts())
    outs = [fixed(drafter, verifier, num_draft=2, temperature=1.0, backend=b).generate(
        ids, mask, max_new_tokens=8, eos_token_id=[], seed=1) for b in ("torch", any_backend.name)]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert torch.equal(outs[0].stats.counts, outs[1].stats.counts)
    assert torch.equal(outs[0].stats.hist, outs[1].stats.hist)


def test_same_seed_same_tokens(pair):
    drafter, verifier = pair
    ids, mask = left_padded_prompts()
    gen = fixed(drafter, verifier, num_draft=2, temperature=1.0)
    a, b, c = (gen.generate(ids, mask, max_new_tokens=12, eos_token_id=[], seed=s) for s in (3, 3, 4))
    assert torch.equal(a.sequences, b.sequences) and not torch.equal(a.sequences, c.sequences)


T = torch.Tensor
HOST_READS = {T.item, T.tolist, T.__bool__, T.cpu, T.numpy, T.__int__, T.__float__, T.__index__, torch.nonzero,
              T.nonzero, torch.masked_select, T.masked_select, torch.unique, T.unique}


class HostReads(TorchFunctionMode):
    """Records every torch call that reads a tensor's values back to the host (a device
    synchronisation on a GPU, and a capture error): .item/.tolist/bool(), .cpu, nonzero,
    boolean-mask indexing and other data-dependent shapes."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.seen.append(func.__name__)
        if func is T.__getitem__:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self.seen.append("boolean index")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("temperature,top_p,eos", [(0.0, None, []), (1.0, 0.9, [5])])
def test_a_step_reads_nothing_back_from_the_device(pair, monkeypatch, temperature, top_p, eos):
    """What CUDA-graph capture needs, checked on the CPU: no torch call inside `_step` reads
    a value back (the HF forwards, sampling, `verify` and the commit included).  Negative
    control: one `.item()` slipped into the step is caught."""
    drafter, verifier = pair
    ids, mask = left_padded_prompts()
    real_step = step_graph.FixedStep._step
    seen, steps = [], []

    def watched(self):
        with HostReads() as mode:
            real_step(self)
        seen.extend(mode.seen)
        steps.append(1)

    monkeypatch.setattr(step_graph.FixedStep, "_step", watched)
    gen = fixed(drafter, verifier, num_draft=3, temperature=temperature, top_p=top_p)
    out = gen.generate(ids, mask, max_new_tokens=16, eos_token_id=eos, seed=0)
    assert len(steps) == out.steps > 4 and seen == []
    monkeypatch.setattr(step_graph.FixedStep, "_commit", lambda self, out, drafts, active: (
        out.num_accepted.max().item(), self.done.fill_(True), self.flags[0].fill_(1)))
    gen.generate(ids, mask, max_new_tokens=4, eos_token_id=eos, seed=0)
    assert seen == ["item"]


def _state_addresses(fixed: step_graph.FixedStep) -> dict[str, int]:
    """The storage address of every tensor a step reads or writes: the loop's state, both
    slot masks and positions, and every cache layer's keys, values and write pointer."""
    out = {name: t.data_ptr() for name, t in vars(fixed).items() if isinstance(t, torch.Tensor)}
    for m_name, m in (("drafter", fixed.d), ("verifier", fixed.v)):
        out.update({f"{m_name}.{a}": getattr(m, a).data_ptr() for a in ("mask", "pos", "slots")})
        for i, layer in enumerate(m.cache.layers):
            for a in ("keys", "values", "cumulative_length"):
                out[f"{m_name}.layer{i}.{a}"] = getattr(layer, a).data_ptr()
    return out


def test_a_step_keeps_every_buffer_in_place(pair, monkeypatch):
    """The other condition for capture: a replay reads and writes the addresses the capture
    saw, so from the second step on no step may rebind a state tensor (``self.last = ...``)
    or reallocate a cache buffer; it must write into them.  Negative control: a step that
    rebinds one tensor is caught."""
    drafter, verifier = pair
    ids, mask = left_padded_prompts()
    real_step = step_graph.FixedStep._step
    moved, steps = [], []

    def watched(self):
        before = _state_addresses(self) if int(self.step_no) else None   # a call's first step allocates the caches
        real_step(self)
        steps.append(1)
        if before is not None:
            after = _state_addresses(self)
            moved.extend(k for k in before if after.get(k) != before[k])

    monkeypatch.setattr(step_graph.FixedStep, "_step", watched)
    out = fixed(drafter, verifier, num_draft=3, temperature=1.0).generate(ids, mask, max_new_tokens=16,
                                                                         eos_token_id=[5], seed=0)
    assert out.steps > 4 and moved == []
    real_commit = step_graph.FixedStep._commit

    def rebinding(self, out, drafts, active):
        real_commit(self, out, drafts, active)
        self.last = self.last.clone()

    monkeypatch.setattr(step_graph.FixedStep, "_commit", rebinding)
    fixed(drafter, verifier, num_draft=3, temperature=1.0).generate(ids, mask, max_new_tokens=6, eos_token_id=[],
                                                                     seed=0)
    assert set(moved) == {"last"}


def test_invalid_logits_raise_naming_the_row_and_counts_match_the_default_loop(pair):
    drafter, verifier = pair
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    counts = []
    for fixed_step in (True, False):
        gen = SpeculativeGenerator(drafter, verifier, num_draft=2, temperature=0, cache="static",
                                   fixed_step=fixed_step)
        stats = sk.TaskStats(2, 2)
        # steps 0 (which reads the prompt too), 1, 2; step 3 is the 4th forward
        with nan_logits_at_forward(verifier, 4), pytest.raises(RuntimeError, match=r"rows \[1\] at step 3"):
            gen.generate(ids, max_new_tokens=16, eos_token_id=[], seed=0, task_ids=[0, 1], stats=stats)
        counts.append(stats.counts.clone())
    assert torch.equal(counts[0], counts[1])
    assert counts[0][:, sk.stats.COUNT_INVALID].tolist() == [0, 1]


def test_bad_arguments_name_what_is_missing(pair):
    drafter, verifier = pair
    gpt2 = pytest.importorskip("transformers").GPT2LMHeadModel(pytest.importorskip("transformers").GPT2Config(
        vocab_size=64, n_positions=64, n_embd=16, n_layer=1, n_head=2))
    cases = [
        (dict(num_draft=2, fixed_step=1), TypeError, "fixed_step must be a bool"),
        (dict(num_draft=2, fixed_step=True), ValueError, "fixed_step=True needs cache='static'"),
        (dict(num_draft="auto", cache="static", fixed_step=True), ValueError, "needs an int num_draft"),
        (dict(num_draft=2, cache="static", fixed_step=True, compile="aot_eager"), ValueError,
         "compile='aot_eager' is not built for fixed_step"),
        (dict(num_draft=2, cache="static", fixed_step=True, pad_verify=True), ValueError, "pad_verify=True"),
        (dict(num_draft=2, cache="static", fixed_step=True, cuda_graph=True), ValueError,
         "cuda_graph=True needs the models on a CUDA device"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            SpeculativeGenerator(drafter, verifier, **kwargs)
    with pytest.raises(ValueError, match="needs a drafter that reads a ready-made 4-D mask.*'gpt2'"):
        SpeculativeGenerator(gpt2, verifier, num_draft=2, cache="static", fixed_step=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_captured_step_gives_the_eager_steps_tokens(pair, temperature):
    """On a GPU: the whole step captured once and replayed gives, with one seed, the tokens
    and counts of the same step run eagerly; greedy, Hugging Face's."""
    drafter, verifier = (m.to("cuda") for m in pair)
    ids, mask = (t.to("cuda") for t in left_padded_prompts())
    outs = [fixed(drafter, verifier, num_draft=3, temperature=temperature, cuda_graph=capture).generate(
        ids, mask, max_new_tokens=24, eos_token_id=[], seed=7) for capture in (False, True)]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert torch.equal(outs[0].stats.counts, outs[1].stats.counts)
    if temperature == 0:
        want = verifier.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        assert torch.equal(outs[1].sequences, want)
