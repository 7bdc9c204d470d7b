"""The static-cache decode path (``cache="static"``) and its compiled form: the same tokens
as Hugging Face's greedy decoding, with batched prompts of different lengths, per-row
rollback, finished rows dropped and compaction; and its option checks.  (The eager static
path also runs in test_generator.py's greedy, rollback and chi-square tests.)"""
from __future__ import annotations

import pytest
import torch
from tiny_models import left_padded_prompts, perturbed_copy, tiny_llama

from specfair.decoding import CachedModel
from specfair.generator import SpeculativeGenerator


@pytest.fixture(scope="module")
def pair():
    verifier = tiny_llama(64, 2, hidden=32, layers=2, heads=4, kv_heads=2, max_pos=256, logit_scale=8.0, pad=0)
    return perturbed_copy(verifier, 0.5, 4), verifier


def _hf_greedy(verifier, ids, mask, n):
    return verifier.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("compile_backend", [False, "aot_eager"])
def test_static_cache_greedy_equals_hf(pair, compile_backend, one_thread):
    drafter, verifier = pair
    ids, mask = left_padded_prompts()
    want = _hf_greedy(verifier, ids, mask, 20)
    gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=0, cache="static",
                               compile=compile_backend, compact_threshold=0.0)
    for _ in range(2):   # the second call reuses the compiled model
        out = gen.generate(ids, mask, max_new_tokens=20, eos_token_id=[], seed=0)
        assert torch.equal(out.sequences, want)
    acc = float(out.stats.acceptance_rate()[0])
    assert 0.05 < acc < 0.95, acc   # rejections exercise the in-place rollback
    # rows finishing at different steps (an EOS) are dropped from the static caches too
    eos = int(want[1, ids.shape[1] + 5])
    dyn = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=0)
    got = gen.generate(ids, mask, max_new_tokens=20, eos_token_id=[eos], seed=0)
    ref = dyn.generate(ids, mask, max_new_tokens=20, eos_token_id=[eos], seed=0)
    assert torch.equal(got.sequences, ref.sequences) and got.num_new_tokens.tolist() == ref.num_new_tokens.tolist()
    assert len(set(got.num_new_tokens.tolist())) > 1


@pytest.mark.slow
def test_inductor_compiled_static_cache_greedy_equals_hf(pair, one_thread):
    """torch.compile's default (inductor) backend: minutes of compilation on a CPU."""
    drafter, verifier = pair
    ids, mask = left_padded_prompts()
    gen = SpeculativeGenerator(drafter, verifier, num_draft=2, temperature=0, cache="static", compile=True)
    out = gen.generate(ids, mask, max_new_tokens=12, eos_token_id=[], seed=0)
    assert torch.equal(out.sequences, _hf_greedy(verifier, ids, mask, 12))


def test_static_cache_is_written_in_place_and_compacts(pair, one_thread):
    """Cropping moves the write pointer back; a forward that would overflow compacts first
    (the valid slots gathered into the same buffers) and gives the logits the dynamic cache
    gives; a cache full of valid slots refuses with a clear error."""
    _, verifier = pair
    cpu = torch.device("cpu")
    static, dynamic = CachedModel(verifier, 64, static_len=9), CachedModel(verifier, 64)
    holes = torch.tensor([[True, False, True, False], [True, False, True, True]])
    logits = []
    for m in (static, dynamic):
        m.reset(2, cpu)
        m.forward(torch.tensor([[5, 6, 7], [8, 9, 10]]), None, keep=1)
        m.crop_end(1)
        m.pos = m.pos - 1
        m.forward(torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]]), holes, keep=1)
        logits.append(m.forward(torch.tensor([[19, 20, 21, 22], [23, 24, 25, 26]]), None, keep=None))
    layer = static.cache.layers[0]
    assert layer.keys.shape[-2] == 9 and int(layer.cumulative_length) == 9   # compacted 6 -> 5, then + 4
    assert static.mask.shape[1] == 9 and static.mask.sum(1).tolist() == [8, 9]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    keys = layer.keys
    with pytest.raises(RuntimeError, match="static KV cache of 9 slots is full"):
        static.forward(torch.tensor([[1], [2]]), None, keep=1)
    assert layer.keys is keys   # the buffers never moved


def test_static_cache_options_are_checked(pair):
    drafter, verifier = pair
    with pytest.raises(ValueError, match="cache must be one of"):
        SpeculativeGenerator(drafter, verifier, cache="paged")
    with pytest.raises(ValueError, match="compile=True needs cache='static'"):
        SpeculativeGenerator(drafter, verifier, compile=True)
    with pytest.raises(TypeError, match="compile must be"):
        SpeculativeGenerator(drafter, verifier, cache="static", compile=1)
