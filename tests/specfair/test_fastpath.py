"""The decode fast paths of `specfair.fastpath`: the ready-made 4-D attention mask gives the
very logits Hugging Face's own mask construction gives (with holes in the slot mask, on both
cache kinds; a mask without its causal part is caught), which models get it, and the
``cuda_graph`` option: checked on every device, and on CUDA the same tokens as Hugging
Face's greedy decoding."""
from __future__ import annotations

import pytest
import torch
from tiny_models import left_padded_prompts, perturbed_copy, tiny_llama

import specfair.decoding as decoding
import specfair.fastpath as fastpath
from specfair.decoding import CachedModel
from specfair.generator import SpeculativeGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def verifier():
    return tiny_llama(64, 2, hidden=32, layers=2, heads=4, kv_heads=2, max_pos=256, logit_scale=8.0, pad=0)


def _run(model, static_len, use_4d, monkeypatch, causal=True):
    """Prefill a left-padded batch, then decode forwards of widths 3, 1 and 2 with invalid
    slots in them (holes, as a per-row rollback leaves); the logits of every forward."""
    monkeypatch.setattr(decoding, "takes_4d_mask", lambda m: use_4d)
    if not causal:   # a broken mask: every query sees every valid slot, its future included
        def no_causal(mask, width, static_len):
            total = static_len or mask.shape[1]
            return torch.nn.functional.pad(mask, (0, total - mask.shape[1]))[:, None, None, :].expand(-1, 1, width, -1)

        monkeypatch.setattr(decoding, "slot_attention_mask", no_causal)
    g = torch.Generator().manual_seed(0)
    m = CachedModel(model, 64, static_len=static_len)
    m.reset(3, "cpu")
    prompt = torch.randint(3, 64, (3, 6), generator=g)
    pmask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    outs = [m.forward(prompt.masked_fill(~pmask, 0), pmask, keep=1)]
    for W, valid in ((3, [[1, 1, 1], [1, 0, 1], [0, 1, 1]]), (1, None), (2, [[1, 0], [1, 1], [0, 1]])):
        tokens = torch.randint(3, 64, (3, W), generator=g)
        outs.append(m.forward(tokens, None if valid is None else torch.tensor(valid, dtype=torch.bool), keep=None))
    return outs


@pytest.mark.parametrize("static_len", [None, 64])
def test_ready_made_mask_gives_the_logits_of_hugging_faces_mask(verifier, static_len, monkeypatch):
    assert fastpath.takes_4d_mask(verifier)
    want = _run(verifier, static_len, False, monkeypatch)
    got = _run(verifier, static_len, True, monkeypatch)
    for a, b in zip(got, want):
        assert torch.equal(a, b)   # the same mask reaches SDPA: bit for bit
    # negative control: the same 4-D path with a mask that lets a query see later slots
    broken = _run(verifier, static_len, True, monkeypatch, causal=False)
    assert not torch.allclose(broken[1], want[1], atol=1e-3)


def test_which_models_take_the_ready_made_mask():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    eager = tiny_llama(16, 0, attn_implementation="eager")
    assert not fastpath.takes_4d_mask(eager)
    kw = dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, attn_implementation="sdpa")
    assert fastpath.takes_4d_mask(Qwen2ForCausalLM(Qwen2Config(**kw)))
    sliding = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1, **kw))
    assert not fastpath.takes_4d_mask(sliding)
    assert not fastpath.takes_4d_mask(torch.nn.Linear(2, 2))


def test_cuda_graph_option_is_checked_on_every_device(verifier):
    drafter = perturbed_copy(verifier, 0.5, 4)
    with pytest.raises(TypeError, match="cuda_graph must be a bool"):
        SpeculativeGenerator(drafter, verifier, cache="static", cuda_graph="yes")
    with pytest.raises(ValueError, match="cuda_graph=True needs cache='static'"):
        SpeculativeGenerator(drafter, verifier, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True compiles with the inductor backend"):
        SpeculativeGenerator(drafter, verifier, cache="static", compile="aot_eager", cuda_graph=True)
    if not torch.cuda.is_available() or next(verifier.parameters()).device.type != "cuda":
        with pytest.raises(ValueError, match="cuda_graph=True needs the models on a CUDA device"):
            SpeculativeGenerator(drafter, verifier, cache="static", cuda_graph=True)
    gen = SpeculativeGenerator(drafter, verifier, cache="static")   # the eager default
    assert (gen.compile, gen.compile_mode) == (None, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_greedy_equals_hf_on_cuda(verifier):
    """Batched prompts of different lengths, rejections (in-place rollback), two calls (the
    second replays the captured graphs), rows finishing at different steps."""
    dev = torch.device("cuda")
    ver = tiny_llama(64, 2, hidden=32, layers=2, heads=4, kv_heads=2, max_pos=256, logit_scale=8.0, pad=0).to(dev)
    dra = perturbed_copy(ver, 0.5, 4).to(dev)
    ids, mask = left_padded_prompts()
    P = ids.shape[1]
    ids, mask = ids.to(dev), mask.to(dev)
    want = ver.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                        pad_token_id=0)
    gen = SpeculativeGenerator(dra, ver, num_draft=3, temperature=0, cache="static", cuda_graph=True,
                               compact_threshold=0.0)
    for _ in range(2):
        out = gen.generate(ids, mask, max_new_tokens=20, eos_token_id=[], seed=0)
        assert torch.equal(out.sequences, want)
    assert 0.05 < float(out.stats.acceptance_rate()[0]) < 0.95
    eos = int(want[1, P + 5])
    got = gen.generate(ids, mask, max_new_tokens=20, eos_token_id=[eos], seed=0)
    ref = SpeculativeGenerator(dra, ver, num_draft=3, temperature=0).generate(ids, mask, max_new_tokens=20,
                                                                              eos_token_id=[eos], seed=0)
    assert torch.equal(got.sequences, ref.sequences)


def test_greedy_step_without_drafts_is_what_verify_returns():
    """A greedy step that drafted nothing skips the kernel (`greedy_verify_without_drafts`):
    the same tokens, accepted and emitted counts as `verify` on every backend here, and the
    same TaskStats counts, histogram and sums -- ties (first maximal index), a NaN row, a
    +inf row, an all -inf row and -inf entries included; an unknown task id still fails."""
    import specfair_kernels as sk

    g = torch.Generator().manual_seed(3)
    B, V = 7, 50
    logits = torch.randn(B, 1, V, generator=g)
    logits[0, 0, [4, 9]] = 10.0                      # a tie: the first maximal index
    logits[1, 0, 3] = float("nan")
    logits[2, 0, 5] = float("inf")
    logits[3, 0] = float("-inf")
    logits[4, 0, :20] = float("-inf")
    tasks = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    mine = sk.TaskStats(3, 4)
    got = fastpath.greedy_verify_without_drafts(logits, tasks, mine)
    assert got.tokens[:5, 0].tolist() == [4, -1, -1, -1, int(logits[4, 0].argmax())]
    for backend in sk.available_backends():
        ref = sk.TaskStats(3, 4)
        want = sk.verify(logits, None, torch.empty(B, 0, dtype=torch.int64), temperature=0.0, task_ids=tasks,
                         stats=ref, seed=torch.arange(B), backend=backend)
        assert torch.equal(got.tokens, want.tokens), backend
        assert torch.equal(got.num_accepted.long(), want.num_accepted.long()), backend
        assert torch.equal(got.num_emitted.long(), want.num_emitted.long()), backend
        assert torch.equal(mine.counts, ref.counts) and torch.equal(mine.hist, ref.hist), backend
        assert torch.equal(mine.sums, ref.sums), backend
    with pytest.raises((IndexError, RuntimeError)):
        fastpath.greedy_verify_without_drafts(logits, torch.full((B,), 5), sk.TaskStats(3, 4))


@pytest.mark.parametrize("static_len", [None, 64])
def test_a_padded_verifier_forward_is_the_narrow_one(verifier, static_len):
    """`CachedModel.forward_padded`: a forward over W tokens run at a wider width gives the W
    positions' logits (to float rounding: the matrix shapes differ) and leaves the cache,
    slot mask and positions exactly as the narrow forward does, so the next forward agrees
    too."""
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, 64, (2, 6), generator=g)
    step = torch.randint(3, 64, (2, 3), generator=g)
    after = torch.randint(3, 64, (2, 2), generator=g)
    runs = []
    for width in (3, 5):
        m = CachedModel(verifier, 64, static_len=static_len)
        m.reset(2, "cpu")
        m.forward(prompt, None, keep=1)
        logits = m.forward_padded(step, width)
        runs.append((logits, m.mask.clone(), m.pos.clone(), m.forward(after, None, keep=None)))
    (narrow, mask_n, pos_n, next_n), (wide, mask_w, pos_w, next_w) = runs
    assert wide.shape == narrow.shape == (2, 3, 64)
    torch.testing.assert_close(wide, narrow, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask_w, mask_n) and torch.equal(pos_w, pos_n)
    torch.testing.assert_close(next_w, next_n, rtol=1e-5, atol=1e-5)
    # negative control: without dropping the filler the next forward would see it
    m = CachedModel(verifier, 64, static_len=static_len)
    m.reset(2, "cpu")
    m.forward(prompt, None, keep=1)
    m.forward(torch.cat([step, step[:, -1:].expand(-1, 2)], 1), None, keep=None)
    assert not torch.allclose(m.forward(after, None, keep=None), next_n, atol=1e-3)


def test_pad_verify_runs_the_cheaper_width_with_the_same_tokens(verifier, monkeypatch):
    """Measured costs in which 3 tokens cost more than 4 or 5 (r_2 = 2.0, r_3 = 1.2,
    r_4 = 1.5): a K = 2 generator with ``pad_verify=True`` runs its verifier forwards at
    width 4, and its greedy tokens are Hugging Face's; without padding, width 3."""
    from specfair import costs

    def fake(drafter, verifier, batch_size=1, max_draft=0, **kw):
        r = [1.0, 1.9, 2.0, 1.2, 1.5] + [1.5 + 0.1 * k for k in range(max_draft - 4)]
        return {"cost_ratio": 0.2, "verify_cost": r, "measured_widths": [1, 2, 3, 4, 5, max_draft + 1],
                "verifier_step_s": 1.0, "drafter_step_s": 0.2, "batch_size": batch_size}

    costs.clear_cost_cache()
    monkeypatch.setattr(costs, "measure_costs", fake)
    drafter = perturbed_copy(verifier, 0.3, 7)
    ids, mask = left_padded_prompts()
    want = verifier.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    widths = []
    real = CachedModel.forward

    def spy(self, tokens, valid, keep):
        if self.model is verifier and self.mask.shape[1]:
            widths.append(tokens.shape[1])
        return real(self, tokens, valid, keep)

    monkeypatch.setattr(CachedModel, "forward", spy)
    for pad, width in ((True, 4), (False, 3)):
        widths.clear()
        gen = SpeculativeGenerator(drafter, verifier, num_draft=2, temperature=0, pad_verify=pad)
        assert gen.verify_widths(3)[0][2] == width and gen.verify_cost(3)[2] == (1.2 if pad else 2.0)
        out = gen.generate(ids, mask, max_new_tokens=12, eos_token_id=[], seed=0)
        assert torch.equal(out.sequences, want), pad
        other = 3 if pad else 4   # (steps near the token budget draft fewer: widths 1-2 without padding)
        assert width in widths and other not in widths, (pad, widths)
    auto = SpeculativeGenerator(drafter, verifier, num_draft="auto", max_draft=4, temperature=0)
    assert auto.pad_verify and auto.verify_widths(3)[0][:4] == [1, 4, 4, 4]
    assert not SpeculativeGenerator(drafter, verifier, num_draft="auto", cost_ratio=0.2).pad_verify
    with pytest.raises(TypeError, match="pad_verify must be None or a bool"):
        SpeculativeGenerator(drafter, verifier, pad_verify="yes")
    costs.clear_cost_cache()
