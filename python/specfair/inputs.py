"""What one generation call is given, checked and put in shape before any decoding: the
prompts (left-padded), the task of each row, the stop tokens, the context limits, the pad
id and the per-row seeds.  `SpeculativeGenerator.generate` and the verifier-only baseline
(`specfair.baseline.generate_verifier_only`) both start here, so both reject bad input with
the same message."""
from __future__ import annotations

import math

import torch

import specfair_kernels as sk
from specfair_kernels.api import VERIFY_METHODS

from ._util import is_int
from .ngram import NgramConfig

DRAFT_MODES = ("sample", "argmax")
CACHE_KINDS = ("dynamic", "static")

__all__ = ["CACHE_KINDS", "DRAFT_MODES", "check_context", "check_drafting", "check_max_new_tokens", "check_sampling",
           "default_eos", "default_pad", "eos_list", "prepare_prompts", "prepare_tasks", "row_seeds"]


def check_drafting(drafter, num_draft, max_draft, draft, ngram, verify_method, cache, pad_verify) -> None:
    """`SpeculativeGenerator`'s drafting options, each against the others."""
    if num_draft == "auto":
        if not is_int(max_draft) or max_draft < 1:
            raise ValueError(f"max_draft must be an int >= 1, got {max_draft!r}")
    elif not is_int(num_draft):
        raise TypeError(f"num_draft must be an int >= 1 or 'auto', got {num_draft!r}")
    elif num_draft < 1:
        raise ValueError(f"num_draft must be >= 1 (or 'auto'), got {num_draft}")
    for name, value, allowed in (("draft", draft, DRAFT_MODES), ("verify_method", verify_method, VERIFY_METHODS),
                                 ("cache", cache, CACHE_KINDS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if pad_verify is not None and not isinstance(pad_verify, bool):
        raise TypeError(f"pad_verify must be None or a bool, got {type(pad_verify).__name__}")
    if ngram is None:
        if drafter is None:
            raise ValueError("drafter is None: pass a drafter model, or ngram=NgramConfig() for prompt lookup")
        return
    if not isinstance(ngram, NgramConfig):
        raise TypeError(f"ngram must be None or a specfair.ngram.NgramConfig, got {type(ngram).__name__}")
    if drafter is not None:
        raise ValueError("ngram drafts without a model: pass drafter=None together with ngram")
    if num_draft == "auto":
        raise ValueError("num_draft='auto' needs a drafter's cost; give ngram an int num_draft")
    if pad_verify:
        raise ValueError("pad_verify=True times the drafter too: it needs a drafter model, not ngram")


def check_sampling(temperature, top_k, top_p) -> None:
    """The decoding options: a temperature >= 0 (0 is greedy), top-k an int >= 1, top-p in
    (0, 1]; a clear error naming the bad one."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a float in (0, 1], got {top_p!r}")


def prepare_prompts(input_ids, attention_mask, pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (input_ids [B, P] int64, attention_mask [B, P] bool) on ``device``, left-padded."""
    if isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask must be None when input_ids is a list of token lists "
                             "(the lists are left-padded here)")
        rows = [list(r) for r in input_ids]
        if not rows:
            raise ValueError("input_ids must hold at least one prompt, got an empty list")
        if any(len(r) == 0 for r in rows):
            raise ValueError("input_ids holds an empty prompt; every prompt needs at least one token")
        if not all(is_int(t) for r in rows for t in r):
            raise TypeError("input_ids must be a [B, P] integer tensor or a list of lists of ints")
        P = max(len(r) for r in rows)
        ids = torch.full((len(rows), P), pad_token_id, dtype=torch.int64)
        mask = torch.zeros(len(rows), P, dtype=torch.bool)
        for b, r in enumerate(rows):
            ids[b, P - len(r):] = torch.tensor(r, dtype=torch.int64)
            mask[b, P - len(r):] = True
        return ids.to(device), mask.to(device)
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a [B, P] integer tensor or a list of lists of ints, "
                        f"got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"input_ids must be an integer tensor, got {str(input_ids.dtype).replace('torch.', '')}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [B, P], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids must hold at least one prompt (B >= 1), got B = 0")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids holds empty prompts (P = 0); every prompt needs at least one token")
    ids = input_ids.to(device=device, dtype=torch.int64)
    if attention_mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if tuple(attention_mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if attention_mask.is_floating_point() or attention_mask.is_complex():
            raise TypeError("attention_mask must be a bool or integer tensor of 0/1")
        m = attention_mask.to(device)
        if bool(((m != 0) & (m != 1)).any()):
            raise ValueError("attention_mask must hold only 0 and 1")
        mask = m.bool()
        if bool((~mask.all(1) & (mask[:, 1:].long() - mask[:, :-1].long() < 0).any(1)).any()):
            raise ValueError("attention_mask must be left-padded: in each row all 0s must come before "
                             "all 1s (use tokenizer.padding_side = 'left')")
        if bool((~mask.any(1)).any()):
            raise ValueError("input_ids holds an empty prompt (a row whose attention_mask is all 0); "
                             "every prompt needs at least one token")
    return ids, mask


def prepare_tasks(task_ids, num_tasks, stats, B: int, dev, max_draft: int):
    """-> (task ids [B] int64 on ``dev``, the TaskStats to add into: ``stats`` checked, or a new one)."""
    if stats is not None:
        if not isinstance(stats, sk.TaskStats):
            raise TypeError(f"stats must be a specfair_kernels.TaskStats, got {type(stats).__name__}")
        if stats.device != dev:
            raise ValueError(f"stats is on {stats.device} but the models are on {dev}")
        if stats.max_draft < max_draft:
            raise ValueError(f"stats has max_draft={stats.max_draft} but this generator drafts up to "
                             f"{max_draft} tokens; make it with max_draft >= {max_draft}")
        if num_tasks is not None and num_tasks != stats.num_tasks:
            raise ValueError(f"num_tasks={num_tasks} but stats has num_tasks={stats.num_tasks}")
        num_tasks = stats.num_tasks
    if num_tasks is not None and (not is_int(num_tasks) or num_tasks < 1):
        raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
    if task_ids is None:
        task_t = torch.zeros(B, dtype=torch.int64, device=dev)
    else:
        if isinstance(task_ids, (list, tuple)):
            if not all(is_int(t) for t in task_ids):
                raise TypeError("task_ids must be a [B] integer tensor or a list of ints")
            task_ids = torch.tensor(task_ids, dtype=torch.int64)
        if not isinstance(task_ids, torch.Tensor) or task_ids.is_floating_point() or task_ids.dtype == torch.bool:
            raise TypeError("task_ids must be a [B] integer tensor or a list of ints")
        if tuple(task_ids.shape) != (B,):
            raise ValueError(f"task_ids must have shape [B]=[{B}], got {tuple(task_ids.shape)}")
        task_t = task_ids.to(device=dev, dtype=torch.int64)
    lo, hi = int(task_t.min()), int(task_t.max())
    if num_tasks is None:
        num_tasks = hi + 1
    if lo < 0 or hi >= num_tasks:
        raise ValueError(f"task_ids must lie in [0, num_tasks)=[0, {num_tasks}), got values in [{lo}, {hi}]")
    if stats is None:
        stats = sk.TaskStats(num_tasks, max_draft, device=dev)
    return task_t, stats


def eos_list(eos_token_id, default) -> list[int]:
    eos = default if eos_token_id is None else eos_token_id
    if eos is None:
        return []
    if is_int(eos):
        return [eos]
    if isinstance(eos, (list, tuple)) and all(is_int(e) for e in eos):
        return list(eos)
    raise TypeError(f"eos_token_id must be None, an int or a list of ints, got {eos_token_id!r}")


def check_max_new_tokens(max_new_tokens):
    if not is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def check_context(prompt_len: int, max_new_tokens: int, limits: dict[str, int | None]):
    for who, limit in limits.items():
        if limit is None:
            continue
        if prompt_len > limit:
            raise ValueError(f"input_ids: the longest prompt has {prompt_len} tokens, more than the {who}'s "
                             f"context of {limit} positions (max_position_embeddings)")
        if prompt_len + max_new_tokens > limit:
            raise ValueError(f"max_new_tokens={max_new_tokens} with the longest prompt of {prompt_len} tokens "
                             f"exceeds the {who}'s context of {limit} positions; use at most "
                             f"max_new_tokens={limit - prompt_len}")


def default_eos(model):
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    return eos if eos is not None else getattr(model.config, "eos_token_id", None)


def default_pad(model) -> int:
    """The pad id written after a row's last token: the model's generation config, then its
    config, then its first EOS id, then 0."""
    for src in (getattr(model, "generation_config", None), model.config):
        pad = getattr(src, "pad_token_id", None) if src is not None else None
        if is_int(pad):
            return pad
    eos = eos_list(None, default_eos(model))
    return eos[0] if eos else 0


def row_seeds(seed, B: int, device) -> tuple[torch.Generator | None, torch.Tensor]:
    if seed is not None and not is_int(seed):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed % (2**64))
    seeds = torch.randint(0, 2**62, (B,), dtype=torch.int64, device=device, generator=gen)
    return gen, seeds
