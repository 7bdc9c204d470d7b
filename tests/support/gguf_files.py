"""Writing real GGUF files from a tiny ``LlamaForCausalLM`` and its byte-level BPE tokenizer.

The layout is the one llama.cpp's ``convert_hf_to_gguf.py`` produces for a llama model with a
GPT-2-style tokenizer, and the one transformers' GGUF loader reads back:

* metadata: ``general.architecture = "llama"``, the ``llama.*`` hyper-parameters, ``general.file_type``
  and ``general.quantization_version``;
* tokenizer: ``tokenizer.ggml.model = "gpt2"``, ``.pre``, ``.tokens``, ``.token_type``, ``.merges`` (as
  ``"left right"`` strings), the bos/eos/unk/pad ids and the add-bos/add-eos flags;
* tensors under ggml's names (``token_embd``, ``blk.N.attn_q``, ``output``, ...), with the Q and K
  projections' rows permuted from Hugging Face's rotate-half layout to llama.cpp's interleaved-pair
  rotary layout (transformers undoes it on load);
* 1-D tensors (the RMSNorm weights) always F32; 2-D ones F32 or Q8_0, as ``--outtype f32`` / ``q8_0``,
  with the converter's F16 fallback for a matrix whose rows are not a whole number of Q8_0 blocks;
* a tied output projection is not written (the loader ties ``lm_head`` when ``output.weight`` is absent).

Needs the ``gguf`` package (llama.cpp's own writer and quantiser) and numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Hugging Face parameter -> ggml tensor name, for the parts of a llama decoder layer.
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}

# llama.cpp's name for a pre-tokenizer that splits like GPT-2 (byte-level, GPT-2's regex, no prefix
# space): the one `tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)` implements.
GPT2_PRE_TOKENIZER = "gpt-2"


def ggml_tensor_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    stem, suffix = hf_name.rsplit(".", 1)
    if stem in _TOP_TENSORS:
        return f"{_TOP_TENSORS[stem]}.{suffix}"
    parts = stem.split(".", 3)
    if parts[:2] == ["model", "layers"] and len(parts) == 4 and parts[3] in _LAYER_TENSORS:
        return f"blk.{parts[2]}.{_LAYER_TENSORS[parts[3]]}.{suffix}"
    raise ValueError(f"no ggml name for the llama tensor {hf_name!r}")


def rotary_to_ggml(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder a Q or K projection's rows per head from rotate-half (pairs ``(i, i + d/2)``) to
    llama.cpp's adjacent pairs ``(2i, 2i + 1)``; ``n_head`` is the number of heads the rows hold."""
    rows = weight.shape[0]
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _token_table(tokenizer):
    """``(tokens by id, ggml token types, merges as "a b" strings)`` of a fast byte-level BPE tokenizer."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise ValueError(f"only BPE tokenizers are written, not {backend['model']['type']}")
    # The file names its pre-tokenizer GPT2_PRE_TOKENIZER and the loader rebuilds GPT-2's; anything
    # else would load as a tokenizer that splits text differently.
    pre = backend.get("pre_tokenizer") or {}
    if (backend.get("normalizer") is not None or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space")
            or not pre.get("use_regex", True)):
        raise ValueError("only GPT-2's byte-level pre-tokenization (no normaliser, ByteLevel with its regex and "
                         f"no prefix space) is written; this tokenizer has {backend.get('normalizer')} / {pre}")
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        if not 0 <= index < len(vocab) or tokens[index] is not None:
            raise ValueError(f"token ids must be 0..{len(vocab) - 1} with no gaps; {token!r} has {index}")
        tokens[index] = token
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for added in backend.get("added_tokens", []):
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    return tokens, [int(t) for t in types], merges


def _adds_around(tokenizer):
    """Whether encoding adds BOS in front and EOS behind (llama.cpp's add_bos/add_eos flags)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    head, tail = full[:start], full[start + len(plain):]
    if head not in ([], [tokenizer.bos_token_id]) or tail not in ([], [tokenizer.eos_token_id]):
        raise ValueError(f"the tokenizer adds {head} / {tail} around text; GGUF can only say BOS and EOS")
    return bool(head), bool(tail)


def write_llama_gguf(path, model, tokenizer, *, qtype: str = "F32", name: str = "tiny-llama") -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and ``tokenizer`` (a fast byte-level BPE tokenizer)
    to the GGUF file ``path``; ``qtype`` is ``"F32"`` or ``"Q8_0"`` for the 2-D tensors."""
    import gguf

    kinds = {"F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
             "Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
    if qtype not in kinds:
        raise ValueError(f"qtype must be one of {sorted(kinds)}, got {qtype!r}")
    matrix_type, file_type = kinds[qtype]
    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"only llama models are written, not {cfg.model_type!r}")
    tokens, token_types, merges = _token_table(tokenizer)
    if len(tokens) != cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokens)} tokens but the model's vocabulary is {cfg.vocab_size}")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"only plain RoPE is written, not {rope['rope_type']!r}")
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))

    path = Path(path)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GPT2_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    add_bos, add_eos = _adds_around(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)

    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = rotary_to_ggml(data, cfg.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = rotary_to_ggml(data, cfg.num_key_value_heads)
        ggml_name = ggml_tensor_name(hf_name)
        if data.ndim < 2 or matrix_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(ggml_name, np.ascontiguousarray(data, dtype=np.float32))
        else:
            try:
                writer.add_tensor(ggml_name, gguf.quants.quantize(data, matrix_type), raw_dtype=matrix_type)
            except gguf.quants.QuantError:  # rows not a whole number of blocks: llama.cpp keeps them F16
                writer.add_tensor(ggml_name, data.astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
