"""What makes a decode step cheaper without changing what it computes: the attention mask
handed to the model ready-made, compiled / CUDA-graph-captured model forwards, and no kernel
call for a greedy step without drafts.

* `slot_attention_mask` builds the [B, 1, W, L] boolean mask that Hugging Face's
  ``create_causal_mask`` would build for SDPA from a 2-D slot mask; a 4-D mask is passed
  through unchanged by the models of `MASK_4D_TYPES`, so the mask is built by three tensor
  operations instead of the library's general mask machinery, once per forward.
* `greedy_verify_without_drafts`: a greedy step in which no row drafted needs no `verify`
  call; the verifier's argmax is what it would return.
* `compiled_model` wraps a model in ``torch.compile`` once per model object, backend and
  mode.  ``mode="reduce-overhead"`` (`check_compile_options` with ``cuda_graph=True``) is
  the gpt-fast recipe on a GPU: with the static KV cache every decode forward of one width
  has fixed shapes and addresses, and inductor captures it as a CUDA graph that is replayed
  with one launch.
"""
from __future__ import annotations

import weakref

import torch

import specfair_kernels as sk

MASK_4D_TYPES = ("llama", "qwen2", "qwen3")   # model types whose decoder layers read a 4-D mask as is

__all__ = ["MASK_4D_TYPES", "check_compile_options", "compiled_model", "count_steps_without_drafts",
           "greedy_verify_without_drafts", "slot_attention_mask", "takes_4d_mask"]


def takes_4d_mask(model) -> bool:
    """Whether ``model`` may be handed its decode mask ready-made ([B, 1, W, L] bool, True =
    attend), as Hugging Face's ``create_causal_mask`` builds it for SDPA.  Only
    full-attention SDPA models of `MASK_4D_TYPES` (no sliding window, no other layer kind);
    every other model gets the 2-D slot mask and builds its own."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in MASK_4D_TYPES:
        return False
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or getattr(cfg, "sliding_window", None) is not None:
        return False
    return all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"]))


def slot_attention_mask(mask: torch.Tensor, width: int, static_len: int | None) -> torch.Tensor:
    """[B, 1, W, L'] bool: query q (the last ``width`` slots of the slot mask [B, L]) attends
    to slot s iff ``mask[b, s]`` and s is not after q's own slot; L' is ``static_len`` (the
    slots past L are False) or L."""
    B, L = mask.shape
    total = L if static_len is None else static_len
    s = torch.arange(total, device=mask.device)
    causal = s[None, :] <= torch.arange(L - width, L, device=mask.device)[:, None]     # [W, L']
    if total != L:
        mask = torch.nn.functional.pad(mask, (0, total - L))
    return mask[:, None, None, :] & causal[None, None]


def check_compile_options(cache: str, compile, cuda_graph, device: torch.device,
                          fixed_step: bool = False) -> tuple[str | None, str | None]:
    """Check `SpeculativeGenerator`'s ``compile`` and ``cuda_graph`` arguments on any device;
    -> (``torch.compile`` backend or None for eager, its mode or None) for the model
    forwards.  With ``fixed_step`` the forwards stay eager (``cuda_graph`` captures the whole
    step instead, `specfair.step_graph`)."""
    if not isinstance(compile, (bool, str)):
        raise TypeError(f"compile must be a bool or a torch.compile backend name, got {type(compile).__name__}")
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
    if fixed_step:
        if compile:
            raise ValueError(f"compile={compile!r} is not built for fixed_step=True: its step runs eagerly, or is "
                             "captured whole with cuda_graph=True")
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the models on a CUDA device, they are on {device}")
        return None, None
    if compile and cache != "static":
        raise ValueError("compile=True needs cache='static' (a dynamic cache changes shape every step)")
    if not cuda_graph:
        return ("inductor" if compile is True else compile or None), None
    if cache != "static":
        raise ValueError("cuda_graph=True needs cache='static' (a captured graph reads fixed cache addresses)")
    if compile not in (False, True, "inductor"):
        raise ValueError(f"cuda_graph=True compiles with the inductor backend; got compile={compile!r} "
                         "(leave compile unset or True)")
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the models on a CUDA device, they are on {device}")
    return "inductor", "reduce-overhead"


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_model(model, backend: str = "inductor", mode: str | None = None):
    """``torch.compile(model, backend=backend, mode=mode)``, once per model object, backend
    and mode (kept while the model lives)."""
    per_model = _COMPILED.setdefault(model, {})
    if (backend, mode) not in per_model:
        per_model[(backend, mode)] = torch.compile(model, backend=backend, mode=mode)
    return per_model[(backend, mode)]


def greedy_verify_without_drafts(target_logits: torch.Tensor, task_ids: torch.Tensor,
                                 stats: sk.TaskStats | None) -> sk.VerifyOutput:
    """What `specfair_kernels.verify` returns for a greedy step in which no row drafted
    (target logits [B, 1, V], K = 0: the verifier alone), computed in three tensor
    operations instead of a kernel call: the first maximal index of each row's logits, no
    accepted draft, and a row whose logits hold NaN or +inf or are all -inf (its maximum is
    not finite) emits nothing (token -1).  ``stats`` gets the same counts as from `verify`
    (a step, an emitted token, no draft)."""
    top, first = target_logits[:, 0].max(-1)   # the maximum (NaN if any) and its first index
    valid = torch.isfinite(top)
    none = torch.zeros(valid.shape, dtype=torch.int32, device=valid.device)
    if stats is not None:
        v = valid.long()
        count_steps_without_drafts(stats, task_ids, v, 1 - v)
    tokens = torch.where(valid, first, -1)[:, None]
    return sk.VerifyOutput(tokens=tokens, num_accepted=none, num_emitted=valid.int())


def count_steps_without_drafts(stats: sk.TaskStats, task_ids: torch.Tensor, steps: torch.Tensor,
                               invalid: torch.Tensor) -> None:
    """Add to ``stats`` what `specfair_kernels.verify` counts for steps in which a row drafted
    nothing, per row (task ``task_ids``, int [B]): ``steps`` valid steps (each one emitted
    token and the accept-length histogram's 0 bin) and ``invalid`` invalid rows.  No
    divergence sums: nothing was drafted."""
    S = sk.stats   # emitted, steps and invalid rows are adjacent columns: one index_add_
    t, steps = task_ids.long().to(stats.device), steps.long().to(stats.device)
    rows = torch.stack([steps, steps, invalid.long().to(stats.device)], 1)
    stats.counts[:, S.COUNT_EMITTED:S.COUNT_INVALID + 1].index_add_(0, t, rows)
    stats.hist[:, 0].index_add_(0, t, steps)
