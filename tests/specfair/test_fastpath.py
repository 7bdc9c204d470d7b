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
