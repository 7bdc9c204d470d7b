"""Tiny Hugging Face models and tokenizers for the specfair tests (importable because the
pytest config puts tests/support on sys.path).  Every builder is deterministic for its
arguments, so a test that saves a model and loads it back through `from_pretrained` gets
the same weights on every run."""
from __future__ import annotations

import contextlib
import copy

import torch

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def tiny_tokenizer(texts, vocab_size: int = 300, specials=SPECIALS, padding_side: str = "left"):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on ``texts``; ``specials`` are
    (pad, bos, eos[, unk]) in that order and get ids 0, 1, 2[, 3]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    unk = specials[3] if len(specials) > 3 else None
    tk = Tokenizer(models.BPE(unk_token=unk) if unk else models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    names = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), specials))
    return PreTrainedTokenizerFast(tokenizer_object=tk, padding_side=padding_side, **names)


def tiny_llama(vocab: int, seed: int, *, hidden: int = 32, layers: int = 1, heads: int = 2, kv_heads: int = 2,
               max_pos: int = 64, logit_scale: float = 1.0, tie: bool = False, pad=None, bos=1, eos=2,
               intermediate: int | None = None, rope_theta: float | None = None, random_norms: bool = False,
               **config):
    """A random `LlamaForCausalLM` in eval mode.  ``logit_scale`` multiplies the output
    layer: the 0.02-std init gives near-uniform distributions, and a sharper model makes
    contexts (and the two models of a pair) differ.  ``random_norms`` draws the RMSNorm
    weights from U(0.5, 1.5) instead of ones, and ``rope_theta`` moves the RoPE base off
    its default, so a loader that dropped either would change the logits.  Other keywords go
    to ``LlamaConfig``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    extra = {} if rope_theta is None else {"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta}}
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_pos, tie_word_embeddings=tie, pad_token_id=pad, bos_token_id=bos,
                      eos_token_id=eos, **extra, **config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
        if random_norms:
            for p in model.parameters():
                if p.ndim == 1:
                    p.uniform_(0.5, 1.5)
    return model


def perturbed_copy(model, rel_noise: float, seed: int):
    """The model with Gaussian noise of ``rel_noise`` times each weight tensor's spread: a
    drafter that agrees with the verifier often but not always."""
    drafter = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * rel_noise * p.std())
    return drafter


def left_padded_prompts(lengths=(2, 7, 4), vocab: int = 64, seed: int = 0):
    """(input_ids, attention_mask), int64 [len(lengths), max(lengths)]: random prompts of
    the given lengths over ids 3..vocab-1, left-padded with id 0 (mask 0)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    P = max(map(len, rows))
    ids = torch.zeros(len(rows), P, dtype=torch.int64)
    mask = torch.zeros(len(rows), P, dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, P - len(r):] = torch.tensor(r)
        mask[b, P - len(r):] = 1
    return ids, mask


@contextlib.contextmanager
def nan_logits_at_forward(model, at: int, row: int = 1):
    """Within the block, ``row``'s logits turn NaN in the ``at``-th forward of ``model``
    (counted from 1; a forward hook, removed on exit)."""
    calls = []

    def hook(module, args, out):
        calls.append(1)
        if len(calls) == at:
            out.logits[row] = float("nan")
        return out

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
