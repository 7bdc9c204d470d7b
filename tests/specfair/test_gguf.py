"""Real GGUF files (written by ``tests/support/gguf_files.py`` in llama.cpp's converter layout)
read back through transformers' GGUF loader: the file's layout, F32 weights and logits equal to
the source model's, Q8_0 weights exactly the format's rounding of the source's, the tokenizer's
ids, and ``load_pair`` on ``.gguf`` paths with its tokenizer check (and a negative control)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

import gguf_files  # noqa: E402  (tests/support, on pytest's pythonpath)
import tiny_models  # noqa: E402

from specfair.models import load_pair  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog", "speculative decoding drafts tokens and verifies them",
        "a small drafter and a large verifier share one tokenizer", "le renard brun saute par dessus le chien",
        "der schnelle braune fuchs springt", "numbers 0 1 2 3 4 5 6 7 8 9 10 11 12"] * 4
# Text the vocabulary never saw, special tokens inside text, and awkward whitespace.
PROBES = TEXT[:6] + ["<s>a</s> b<pad>c<unk>", "a<|sep|>b <think>c", "wörld ünïcode 日本語 ✓ 🙂",
                     "  two  spaces\n\ttab  ", "x<|endoftext|>y", ""]
# "<|sep|>" is special with no role (the file marks it CONTROL, nothing else names it); "<think>" an
# added token that is not special (USER_DEFINED): both must stay whole in text.
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|sep|>"]
USER_DEFINED = "<think>"
# GPT-2-family vocabularies (GPT-2, Qwen2, ...) carry this token; see test_load_pair_vocab_without_endoftext.
ENDOFTEXT = "<|endoftext|>"
Q8_0_BLOCK = 32


def byte_bpe(texts, extra_specials=(ENDOFTEXT,), vocab_size=300):
    """A byte-level BPE tokenizer like ``specfair.train_pair.train_tokenizer``'s: GPT-2's
    pre-tokenizer, BOS added in front of every text by a template post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + list(extra_specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tk.add_tokens([USER_DEFINED])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=False)


def tiny_llama(vocab, seed, hidden=32, layers=2, tie=False, intermediate=None):
    """Grouped-query attention (4 query heads on 2 KV heads) so the K permutation differs from the
    Q one; a RoPE base and RMSNorm weights off transformers' defaults, so a loader that dropped
    either would give different logits."""
    return tiny_models.tiny_llama(vocab, seed, hidden=hidden, layers=layers, heads=4, kv_heads=2, max_pos=128,
                                  tie=tie, pad=3, intermediate=intermediate, rope_theta=5000.0, random_norms=True,
                                  rms_norm_eps=1e-5)


def load_gguf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def load_gguf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def logits(model, tok, texts=TEXT[:6]):
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def q8_0_round(weight: torch.Tensor) -> torch.Tensor:
    """Q8_0 from the format's definition, independently of the gguf package: per block of 32 along
    a row, ``d = max|x| / 127`` stored as fp16 and ``q = round(x / d)`` (halves away from zero, as
    ggml's reference quantiser), read back as ``q * d`` in fp32."""
    blocks = weight.float().reshape(-1, Q8_0_BLOCK)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    y = blocks * torch.where(d == 0, torch.zeros_like(d), 1 / d)
    a = y.abs()
    q = torch.sign(y) * (a.floor() + (2 * (a - a.floor())).floor())
    return (q * d.half().float()).reshape(weight.shape)


def q8_0_bound(weight: torch.Tensor) -> torch.Tensor:
    """Per element, the most Q8_0 can move a weight: half a step ``d / 2`` from rounding ``q``, plus
    ``|q| <= 127`` times the error of storing ``d`` in fp16 (relative 2^-11, or 2^-25 absolute
    below fp16's normal range), plus the fp32 rounding of ``x / d`` (relative 2^-24 of ``|q|``)."""
    blocks = weight.float().reshape(-1, Q8_0_BLOCK)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    per_block = 0.5 * d + 127 * torch.clamp(d * 2.0**-11, min=2.0**-25) + 127 * d * 2.0**-24
    return per_block.expand_as(blocks).reshape(weight.shape)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return byte_bpe(TEXT)


@pytest.fixture(scope="module")
def source(tok):
    return tiny_llama(len(tok), 0)


@pytest.fixture(scope="module")
def written(tmp_path_factory, source, tok):
    root = tmp_path_factory.mktemp("gguf")
    return {q: gguf_files.write_llama_gguf(root / f"tiny-{q}.gguf", source, tok, qtype=q) for q in ("F32", "Q8_0")}


@pytest.fixture(scope="module")
def loaded(written):
    return {q: load_gguf_model(path) for q, path in written.items()}


# --- the file -------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_file_has_the_converters_names_types_and_metadata(written, source, tok, qtype):
    reader = gguf.GGUFReader(written[qtype])

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == source.config.num_hidden_layers
    assert field("llama.attention.head_count_kv") == source.config.num_key_value_heads
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.tokens") == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert field("tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert field("tokenizer.ggml.add_bos_token") is True
    file_type = gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0
    assert field("general.file_type") == int(file_type)

    # names: what gguf-py's own tensor map (the converter's) gives for each Hugging Face tensor
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, source.config.num_hidden_layers)
    expected = {name_map.get_name(k, try_suffixes=(".weight",)): v for k, v in source.state_dict().items()}
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected)
    for name, t in tensors.items():
        ndim = expected[name].ndim
        want = gguf.GGMLQuantizationType.F32 if ndim == 1 or qtype == "F32" else gguf.GGMLQuantizationType.Q8_0
        assert t.tensor_type == want, name
        assert [int(n) for n in t.shape] == list(reversed(expected[name].shape)), name  # ggml order


def test_tied_embeddings_leave_output_out_and_load_tied(tmp_path, tok):
    model = tiny_llama(len(tok), 2, tie=True)
    path = gguf_files.write_llama_gguf(tmp_path / "tied.gguf", model, tok)
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(path).tensors}
    back = load_gguf_model(path)
    assert back.config.tie_word_embeddings
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(logits(back, tok), logits(model, tok), rtol=1e-6, atol=1e-6)


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks(tmp_path, tok):
    model = tiny_llama(len(tok), 3, intermediate=48)  # ffn_down's rows: 48 = 1.5 Q8_0 blocks
    path = gguf_files.write_llama_gguf(tmp_path / "odd.gguf", model, tok, qtype="Q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    back = load_gguf_model(path)
    w = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(back.model.layers[0].mlp.down_proj.weight, w.half().float())


# --- model: F32 and Q8_0 --------------------------------------------------------------------

def test_f32_loads_the_same_weights_and_logits(source, loaded, tok):
    back = loaded["F32"]
    # transformers dequantises into plain fp32 nn.Linear layers: no packed GGUF modules
    assert type(back.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    cfg = back.config
    assert cfg.rope_parameters["rope_theta"] == 5000.0
    assert cfg.rms_norm_eps == float(np.float32(1e-5))  # GGUF stores it as f32
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 8)
    assert not cfg.tie_word_embeddings
    src, got = source.state_dict(), back.state_dict()
    assert set(got) == set(src)
    for name in src:  # F32 plus an exact row permutation and its inverse: bit for bit
        assert torch.equal(got[name], src[name]), name
    # the only difference left is rms_norm_eps rounded to f32: fp32 rounding of the logits
    torch.testing.assert_close(logits(back, tok), logits(source, tok), rtol=1e-6, atol=1e-6)


def test_q8_0_weights_are_the_formats_rounding_and_logits_follow(source, loaded, tok):
    back = loaded["Q8_0"]
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    src, got = source.state_dict(), back.state_dict()
    reference = copy.deepcopy(source)
    ref = reference.state_dict()
    with torch.no_grad():
        for name, w in src.items():
            if w.ndim == 1:
                assert torch.equal(got[name], w), name  # norms stay F32
                continue
            assert (got[name] - w).abs().le(q8_0_bound(w)).all(), name
            rounded = q8_0_round(w)
            assert torch.equal(got[name], rounded), name
            ref[name].copy_(rounded)
    # same weights as the source model rounded by Q8_0's definition: same logits up to fp32 rounding
    torch.testing.assert_close(logits(back, tok), logits(reference, tok), rtol=1e-6, atol=1e-6)
    assert not torch.equal(logits(back, tok), logits(source, tok))  # it really is quantised


# --- tokenizer ------------------------------------------------------------------------------

def test_tokenizer_encodes_and_decodes_like_the_source(written, tok):
    back = load_gguf_tokenizer(written["F32"])
    assert back.get_vocab() == tok.get_vocab()
    assert (back.bos_token, back.eos_token, back.unk_token, back.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    for text in PROBES:
        assert back(text).input_ids == tok(text).input_ids, text
        ids = tok(text, add_special_tokens=False).input_ids
        assert back(text, add_special_tokens=False).input_ids == ids, text
        assert back.decode(ids) == tok.decode(ids), text
        assert back.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True), text
    assert back(PROBES[0]).input_ids[0] == tok.bos_token_id  # add_bos_token came through


# --- load_pair ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def drafter(source):
    """A smaller model on the same vocabulary (its own seed: not a copy of the verifier)."""
    return tiny_llama(source.config.vocab_size, 1, hidden=32, layers=1)


def test_load_pair_takes_two_gguf_paths(tmp_path, source, drafter, tok):
    gguf_files.write_llama_gguf(tmp_path / "verifier.gguf", source, tok)
    gguf_files.write_llama_gguf(tmp_path / "drafter.gguf", drafter, tok)
    d, v, t = load_pair(str(tmp_path / "drafter.gguf"), tmp_path / "verifier.gguf", device="cpu")
    assert not d.training and not v.training
    assert d.config.num_hidden_layers == 1 and v.config.num_hidden_layers == 2
    assert t.get_vocab() == tok.get_vocab()
    torch.testing.assert_close(logits(v, t), logits(source, tok), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits(d, t), logits(drafter, tok), rtol=1e-6, atol=1e-6)


def test_load_pair_quantised_gguf_drafter_with_a_hugging_face_verifier(tmp_path, source, drafter, tok):
    source.save_pretrained(tmp_path / "verifier")
    tok.save_pretrained(tmp_path / "verifier")
    gguf_files.write_llama_gguf(tmp_path / "drafter-q8_0.gguf", drafter, tok, qtype="Q8_0")
    d, _, t = load_pair(tmp_path / "drafter-q8_0.gguf", tmp_path / "verifier", device="cpu")
    assert torch.equal(d.model.layers[0].mlp.up_proj.weight, q8_0_round(drafter.model.layers[0].mlp.up_proj.weight))
    assert t.get_vocab() == tok.get_vocab()


def test_load_pair_refuses_a_gguf_drafter_with_another_tokenizer(tmp_path, source, tok):
    other = byte_bpe([t[::-1] for t in TEXT])
    assert other.get_vocab() != tok.get_vocab()
    gguf_files.write_llama_gguf(tmp_path / "verifier.gguf", source, tok)
    gguf_files.write_llama_gguf(tmp_path / "drafter.gguf", tiny_llama(len(other), 1, layers=1), other)
    with pytest.raises(ValueError, match="tokenizers differ"):
        load_pair(tmp_path / "drafter.gguf", tmp_path / "verifier.gguf", device="cpu")


def test_load_pair_vocab_without_endoftext(tmp_path):
    """The common case for a vocabulary not from the GPT-2 family (specfair's train-pair
    vocabularies and the shipped pair among them).  transformers 5.23 builds the GGUF "gpt2"
    tokenizer through GPT2Tokenizer, whose default '<|endoftext|>' is appended one id past the
    file's vocabulary; load_pair accepts it because it is special and can never be sampled."""
    tok = byte_bpe(TEXT, extra_specials=())
    model = tiny_llama(len(tok), 0)
    for role in ("drafter", "verifier"):
        gguf_files.write_llama_gguf(tmp_path / f"{role}.gguf", model, tok)
    *_, t = load_pair(tmp_path / "drafter.gguf", tmp_path / "verifier.gguf", device="cpu")
    extra = {k: v for k, v in t.get_vocab().items() if k not in tok.get_vocab()}
    assert all(i >= model.config.vocab_size and t.added_tokens_decoder[i].special for i in extra.values())
    assert {k: v for k, v in t.get_vocab().items() if k not in extra} == tok.get_vocab()
    for text in TEXT[:6]:
        assert t(text).input_ids == tok(text).input_ids


def test_load_pair_still_refuses_ordinary_tokens_past_the_embedding(tmp_path, tok):
    """The allowance is for special tokens only: a vocabulary larger than the model is refused."""
    small = tiny_llama(len(tok) - 4, 0)
    for role in ("drafter", "verifier"):
        small.save_pretrained(tmp_path / role)
        tok.save_pretrained(tmp_path / role)
    with pytest.raises(ValueError, match="does not cover the vocabulary"):
        load_pair(tmp_path / "drafter", tmp_path / "verifier", device="cpu")
