"""Models spread over devices by a ``device_map`` (accelerate's dispatch): `load_pair`
places them, and the generator and the teacher-forced pass give exactly what the same models
give undispatched.

On a CPU-only machine a map whose entries are all "cpu" is not dispatched at all (transformers
just loads the model there), so the split used here puts one decoder layer on "disk": accelerate
then attaches its hooks to every block, keeps that layer's weights on the meta device and
streams them in at each forward, and moves each block's inputs to its execution device -- the
path a model split over GPUs takes.  The CUDA variant splits the layers between the CPU and a
GPU."""
from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama, tiny_tokenizer

from specfair import teacher_forced as tf
from specfair.generator import SpeculativeGenerator
from specfair.models import load_pair, model_device

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = ["the quick brown fox jumps over the lazy dog", "le renard brun saute par dessus le chien paresseux",
        "der schnelle braune fuchs springt ueber den faulen hund"] * 6


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-map")
    tok = tiny_tokenizer(TEXT, specials=("<pad>", "<s>", "</s>"), padding_side="right")
    for role, (hidden, seed, scale) in {"verifier": (32, 0, 8.0), "drafter": (16, 1, 4.0)}.items():
        model = tiny_llama(len(tok), seed, hidden=hidden, layers=2, heads=4, kv_heads=2, max_pos=64,
                           logit_scale=scale, pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id)
        model.save_pretrained(root / role)
        tok.save_pretrained(root / role)
    return root


def _split(second):
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": second, "model.norm": "cpu", "lm_head": "cpu"}


SPLITS = [pytest.param("disk", id="cpu+disk"), pytest.param(0, id="cpu+cuda", marks=pytest.mark.cuda)]


def _load(root, **kw):
    return load_pair(root / "drafter", root / "verifier", **kw)


@pytest.fixture(scope="module")
def plain(pair_dirs):
    return _load(pair_dirs, device="cpu")


@pytest.mark.parametrize("second", SPLITS)
def test_dispatched_pair_generates_the_same_tokens(pair_dirs, plain, tmp_path, second):
    d, v, tok = _load(pair_dirs, device_map=_split(second), offload_folder=str(tmp_path / "offload"))
    for m in (d, v):
        assert m.hf_device_map["model.layers.1"] == second
        assert hasattr(m.model.layers[1], "_hf_hook")          # accelerate's dispatch is in the path
    assert model_device(v) == torch.device("cpu")             # inputs go to the embedding's device
    prompts = [tok(t).input_ids[:6] for t in TEXT[:3]]
    outs = []
    for drafter, verifier in ((plain[0], plain[1]), (d, v)):
        gen = SpeculativeGenerator(drafter, verifier, num_draft=3, pad_token_id=tok.pad_token_id)
        outs.append(gen.generate(prompts, max_new_tokens=10, seed=7))
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert outs[0].sequences.shape[1] > 6
    assert outs[0].steps == outs[1].steps
    assert torch.equal(outs[0].num_new_tokens, outs[1].num_new_tokens)
    assert outs[0].stats.to_dict() == outs[1].stats.to_dict()      # same acceptance and divergences


@pytest.mark.parametrize("second", SPLITS)
def test_dispatched_pair_teacher_forced_figures_are_the_same(pair_dirs, plain, tmp_path, second):
    d, v, tok = _load(pair_dirs, device_map=_split(second), offload_folder=str(tmp_path / "offload"))
    windows = tf.token_windows(tok, {"a": TEXT[0::3], "b": TEXT[1::3]}, context_length=16)
    ref = tf.evaluate(plain[1], plain[0], windows, batch_size=2)
    got = tf.evaluate(v, d, windows, batch_size=2, device=model_device(v))
    for k in ("alpha_sum", "kl_sum", "ce_sum", "entropy_sum", "verifier_nll_sum", "drafter_nll_sum"):
        assert torch.equal(getattr(got, k), getattr(ref, k)), k


def test_device_map_arguments_are_checked(pair_dirs):
    with pytest.raises(ValueError, match="device or device_map"):
        _load(pair_dirs, device="cpu", device_map="auto")
    with pytest.raises(TypeError, match="device_map"):
        _load(pair_dirs, device_map=3)
