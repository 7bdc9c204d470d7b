"""The verifier alone producing the same outputs, and the measured per-task speed-up."""
from __future__ import annotations

import math

import torch

import specfair_kernels as sk
from specfair_kernels.stats import speedup as model_speedup

from ._util import is_int
from .costs import break_even_acceptance, speedup_with_verify_cost
from .decoding import (
    CachedModel,
    Clock,
    GenerationOutput,
    finish_output,
    process_logits,
    sample_tokens,
)
from .generator import SpeculativeGenerator
from .inputs import (
    check_context,
    check_max_new_tokens,
    check_sampling,
    default_eos,
    default_pad,
    eos_list,
    prepare_prompts,
    row_seeds,
)
from .models import context_length, model_device, output_vocab_size


@torch.inference_mode()
def generate_verifier_only(verifier, input_ids, attention_mask=None, max_new_tokens: int = 32, eos_token_id=None,
                           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                           seed: int | None = None, forced: GenerationOutput | None = None,
                           vocab_size: int | None = None, pad_token_id: int | None = None,
                           profile: bool = True) -> GenerationOutput:
    """Plain autoregressive decoding with the verifier: one token per forward, KV cache.

    The same decode machinery as `SpeculativeGenerator` (cache, left padding, finished rows
    dropped, one host sync per step) and the same logit processing and sampling.

    Parameters
    ----------
    forced : GenerationOutput, optional
        Teacher forcing: after sampling each step's token (same work), feed the token of
        ``forced`` instead, and stop each row where ``forced`` stopped.  The loop then
        produces exactly ``forced.sequences`` and takes as many forwards as the verifier alone
        would need for those outputs, which is what the measured speed-up compares with.
        ``input_ids``/``attention_mask`` must be the prompts ``forced`` was generated from.
    profile : bool
        As in `SpeculativeGenerator`: synchronise at every section boundary (default).

    Returns
    -------
    GenerationOutput
        ``timings``: ``prefill``, ``verify_forward`` (the forwards), ``kernel`` (processing
        and sampling), ``bookkeeping``, ``total``; ``stats`` is None.
    """
    dev = model_device(verifier)
    check_max_new_tokens(max_new_tokens)
    V = vocab_size or output_vocab_size(verifier)
    eos = eos_list(eos_token_id, default_eos(verifier))
    if pad_token_id is None:
        pad_token_id = default_pad(verifier)
    ids, pmask = prepare_prompts(input_ids, attention_mask, pad_token_id, dev)
    B, P = ids.shape
    if bool((((ids < 0) | (ids >= V)) & pmask).any()):
        raise ValueError(f"input_ids must lie in [0, vocab_size)=[0, {V}) on prompt tokens")
    check_context(int(pmask.sum(1).max()), max_new_tokens, {"verifier": context_length(verifier)})
    limit, forced_new = _forcing(forced, max_new_tokens, B, P, pad_token_id, dev)
    check_sampling(temperature, top_k, top_p)
    temperature = float(temperature)
    gen, _ = row_seeds(seed, B, dev)

    clock = Clock(dev, profile)
    clock.start()
    out_buf = torch.full((B, max_new_tokens + 1), pad_token_id, dtype=torch.int64, device=dev)
    n_new = torch.zeros(B, dtype=torch.int64)
    row_steps = torch.zeros(B, dtype=torch.int64)
    if max_new_tokens == 0 or int(limit.max()) == 0:
        return finish_output(out_buf, n_new, row_steps, ids, pad_token_id, None, 0, clock.stop(), [])
    model = CachedModel(verifier, V)
    model.reset(B, dev)
    if P > 1:   # read with the first step's forward, as Hugging Face's prefill
        model.read_later(ids.masked_fill(~pmask, 0)[:, :-1], pmask[:, :-1])
    clock.lap("prefill")
    eos_t = torch.tensor(eos, dtype=torch.int64, device=dev) if eos else None
    rows = torch.arange(B)
    rows_dev = torch.arange(B, device=dev)
    last = ids[:, -1]
    step = 0
    while True:
        logits = model.forward(last[:, None], None, keep=1)[:, -1]
        clock.lap("verify_forward")
        tok = sample_tokens(process_logits(logits, temperature, top_k, top_p), temperature, gen)
        clock.lap("kernel")
        n_dev = n_new[rows].to(dev)
        if forced_new is not None:
            tok = forced_new[rows_dev, n_dev]
        out_buf[rows_dev, n_dev] = tok
        is_eos = torch.isin(tok, eos_t) if eos_t is not None else torch.zeros_like(tok, dtype=torch.bool)
        hit = is_eos.cpu()  # the step's one host sync
        n_new[rows] += 1
        row_steps[rows] += 1
        step += 1
        finished = hit | (n_new[rows] >= limit[rows])
        last = tok
        if bool(finished.any()):
            alive = (~finished).nonzero()[:, 0]
            if alive.numel() == 0:
                clock.lap("bookkeeping")
                break
            alive_dev = alive.to(dev)
            rows, rows_dev = rows[alive], rows_dev[alive_dev]
            model.select_rows(alive_dev)
            last = last[alive_dev]
        clock.lap("bookkeeping")
    return finish_output(out_buf, n_new, row_steps, ids, pad_token_id, None, step, clock.stop(), [])


def _forcing(forced: GenerationOutput | None, max_new_tokens: int, B: int, P: int, pad_token_id: int, dev):
    """(per-row token limit [B] on the host, the forced new tokens [B, N+1] or None)."""
    limit = torch.full((B,), max_new_tokens, dtype=torch.int64)
    if forced is None:
        return limit, None
    if forced.sequences.shape[0] != B or forced.prompt_width != P:
        raise ValueError(f"forced was generated from {forced.sequences.shape[0]} prompts of width "
                         f"{forced.prompt_width}, but input_ids has shape {(B, P)}")
    forced_new = forced.sequences[:, P:].to(dev)
    pad = torch.full((B, 1), pad_token_id, dtype=torch.int64, device=dev)
    return torch.minimum(limit, forced.num_new_tokens.cpu()), torch.cat([forced_new, pad], 1)


def measure_speedup(generator: SpeculativeGenerator, input_ids, attention_mask=None, task_ids=None,
                    num_tasks: int | None = None, max_new_tokens: int = 64, seed: int | None = 0,
                    eos_token_id=None, batch_size: int | None = None, warmup: bool = True,
                    cost_ratio: float | None = None, repeats: int = 1, progress: bool = False) -> dict:
    """Measured and model-based speed-up of speculative decoding, per task.

    For each task the rows of that task are generated speculatively (``generator``, in
    batches of ``batch_size``, default all the task's rows at once), then the verifier alone
    produces the *same* outputs (`generate_verifier_only` with teacher forcing, same batches),
    both timed with the device synchronised.  A task's wall clock therefore never includes
    another task's rows.

    Parameters
    ----------
    generator : SpeculativeGenerator
    input_ids, attention_mask : as in `SpeculativeGenerator.generate`
    task_ids : [B] int, optional (default: one task)
    num_tasks : int, optional (default max(task_ids) + 1)
    max_new_tokens, seed, eos_token_id : as in ``generate``
    batch_size : int, optional
        Rows per generate call within a task.
    warmup : bool
        Run one short untimed generation of both kinds first (allocator, kernel caches).
    repeats : int
        Times each batch is generated both ways, interleaved (speculative, verifier-only,
        speculative, ...); each time is the median over the repeats.  The repeats replay the
        first run exactly (same tokens, same K choices); only the first adds into the stats.
    progress : bool
        A tqdm bar over the tasks.
    cost_ratio : float, optional
        c for the model-based S(alpha; K, c); default: ``generator.cost_ratio(batch)``
        (measured once per batch size unless the generator was given one).

    Returns
    -------
    dict
        ``per_task``: {task: {"rows", "tokens", "spec_seconds", "verifier_seconds",
        "measured_speedup" (verifier_seconds / spec_seconds), "predicted_speedup"
        (S(alpha_t; K_t, c) of PAPER.md), "predicted_speedup_verify_cost" (the same with the
        measured cost r_K of a (K+1)-token verifier forward in place of 1; NaN when
        ``cost_ratio`` is given), "acceptance" (the drafting's, `SpeculativeGenerator.acceptance`:
        expected sum min(p, q) for drafts sampled at a temperature > 0, else realised),
        "realised_acceptance", "tokens_per_step", "num_draft" (K_t), "cost_ratio" (c), "verify_cost" (the
        measured r_K list, None when ``cost_ratio`` is given), "break_even_acceptance" (the
        acceptance at which S(alpha; K_t, c, r_K) = 1 with the costs above, r_K = 1 when
        ``cost_ratio`` is given; inf when even alpha = 1 cannot pay), "acceptance_margin"
        (acceptance - break_even_acceptance: < 0 means speculation loses at that K),
        "spec_tokens_per_s", "verifier_tokens_per_s", "spec_timings" (seconds per section)}},
        plus ``cost_ratio``, ``break_even_acceptance`` ({K: break-even acceptance} for every K
        a task used, with the first task's costs), ``stats`` (TaskStats.to_dict), and the totals
        ``spec_seconds``, ``verifier_seconds``, ``measured_speedup``.
    """
    ids, mask = prepare_prompts(input_ids, attention_mask, generator.pad_token_id, generator.device)
    task_t, T = _task_index(task_ids, num_tasks, ids.shape[0])
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    stats = sk.TaskStats(T, generator.max_draft, device=generator.device)
    run = _PairedRun(generator, max_new_tokens, eos_token_id, seed)
    if warmup:
        w_ids, w_mask = _trim(ids, mask, torch.arange(min(ids.shape[0], batch_size or ids.shape[0])))
        run.once(w_ids, w_mask, None, sk.TaskStats(T, generator.max_draft, device=generator.device),
                 max_new_tokens=min(max_new_tokens, 4))

    per_task = {}
    task_range = range(T)
    if progress:
        from tqdm.auto import tqdm

        task_range = tqdm(task_range, desc="generation", unit="task")
    for t in task_range:
        rows_all = (task_t == t).nonzero()[:, 0]
        if rows_all.numel() == 0:
            continue
        step = batch_size or rows_all.numel()
        spec_s = ver_s = 0.0
        tokens = 0
        timings: dict[str, float] = {}
        for i in range(0, rows_all.numel(), step):
            rows = rows_all[i:i + step]
            sub_ids, sub_mask = _trim(ids, mask, rows)
            out, spec_med, ver_med = run.repeated(sub_ids, sub_mask, t, stats, repeats)
            spec_s += spec_med["total"]
            ver_s += ver_med["total"]
            tokens += int(out.num_new_tokens.sum())
            for k, v in spec_med.items():
                timings[k] = timings.get(k, 0.0) + v
        batch = min(step, rows_all.numel())
        per_task[t] = _task_figures(generator, stats, t, out.num_draft[t], batch, cost_ratio,
                                    rows=int(rows_all.numel()), tokens=tokens, spec_s=spec_s, ver_s=ver_s)
        per_task[t]["spec_timings"] = timings
    spec_total = sum(v["spec_seconds"] for v in per_task.values())
    ver_total = sum(v["verifier_seconds"] for v in per_task.values())
    c_all = next((v["cost_ratio"] for v in per_task.values()), math.nan)
    first = next(iter(per_task.values()), None)
    break_even = {} if first is None else {
        k: break_even_acceptance(k, first["cost_ratio"], first["verify_cost"][k] if first["verify_cost"] else 1.0)
        for k in sorted({v["num_draft"] for v in per_task.values() if v["num_draft"] >= 1})}
    return {"per_task": per_task, "cost_ratio": c_all, "break_even_acceptance": break_even,
            "stats": stats.to_dict(cost_ratio=c_all),
            "spec_seconds": spec_total, "verifier_seconds": ver_total,
            "measured_speedup": ver_total / spec_total if spec_total > 0 else math.nan}


def _task_index(task_ids, num_tasks, B: int) -> tuple[torch.Tensor, int]:
    """task_ids as a [B] int64 CPU tensor (default all 0) and the number of tasks T."""
    if task_ids is None:
        task_t = torch.zeros(B, dtype=torch.int64)
    else:
        task_t = torch.as_tensor(task_ids).cpu()
        if task_t.is_floating_point() or tuple(task_t.shape) != (B,):
            raise ValueError(f"task_ids must be [B]=[{B}] integers, got {tuple(task_t.shape)} {task_t.dtype}")
        task_t = task_t.long()
    T = num_tasks if num_tasks is not None else int(task_t.max()) + 1
    if int(task_t.min()) < 0 or int(task_t.max()) >= T:
        raise ValueError(f"task_ids must lie in [0, num_tasks)=[0, {T})")
    return task_t, T


def _trim(ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor):
    """A subset of rows without the all-padding columns on their left."""
    sub_ids, sub_mask = ids[rows], mask[rows]
    first = int((~sub_mask.any(0)).long().cumprod(0).sum())
    return sub_ids[:, first:], sub_mask[:, first:]


class _PairedRun:
    """Speculative generation of a batch, then the verifier alone producing the same outputs."""

    def __init__(self, generator: SpeculativeGenerator, max_new_tokens: int, eos_token_id, seed):
        self.generator, self.max_new_tokens, self.eos, self.seed = generator, max_new_tokens, eos_token_id, seed
        self.verifier_kw = dict(temperature=generator.temperature, top_k=generator.top_k, top_p=generator.top_p,
                                vocab_size=generator.vocab_size, pad_token_id=generator.pad_token_id,
                                profile=generator.profile)

    def once(self, ids, mask, task, stats, max_new_tokens=None):
        n = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        task_sub = None if task is None else torch.full((ids.shape[0],), task, dtype=torch.int64)
        out = self.generator.generate(ids, mask, max_new_tokens=n, eos_token_id=self.eos, task_ids=task_sub,
                                      stats=stats, seed=self.seed)
        base = generate_verifier_only(self.generator.verifier, ids, mask, n, self.eos, seed=self.seed, forced=out,
                                      **self.verifier_kw)
        if not torch.equal(base.sequences.cpu(), out.sequences.cpu()):
            raise RuntimeError("the teacher-forced verifier did not reproduce the speculative outputs")
        return out, base

    def repeated(self, ids, mask, task: int, stats: sk.TaskStats, repeats: int):
        """(first speculative output, median speculative timings, median verifier timings) over
        ``repeats`` interleaved runs.  The repeats replay the same path (same K choices, same
        tokens) from the stats as they were; only the first adds into ``stats``."""
        before = stats.clone() if repeats > 1 else None
        runs = []
        for r in range(repeats):
            out, base = self.once(ids, mask, task, stats if r == 0 else before.clone())
            if runs and not torch.equal(out.sequences.cpu(), runs[0][2].sequences.cpu()):
                raise RuntimeError("a repeated speculative generation gave other tokens (seeded runs "
                                   "must be deterministic)")
            runs.append((out.timings, base.timings, out))
        # Medians over the interleaved repeats (spec, verifier, spec, verifier, ...): a load
        # spike on a shared machine hits one run, not the figure.
        mid = len(runs) // 2
        spec_med = sorted((r[0] for r in runs), key=lambda t: t["total"])[mid]
        ver_med = sorted((r[1] for r in runs), key=lambda t: t["total"])[mid]
        return runs[0][2], spec_med, ver_med


def _task_figures(generator: SpeculativeGenerator, stats: sk.TaskStats, t: int, k_used: int, batch: int,
                  cost_ratio, *, rows: int, tokens: int, spec_s: float, ver_s: float) -> dict:
    c = cost_ratio if cost_ratio is not None else generator.cost_ratio(batch)
    r = None if cost_ratio is not None else generator.verify_cost(batch)
    alpha = float(generator.acceptance(stats)[t])   # the drafting's acceptance
    even = break_even_acceptance(k_used, c, r[k_used] if r is not None else 1.0) if k_used >= 1 else math.nan
    return {
        "rows": rows, "tokens": tokens, "spec_seconds": spec_s, "verifier_seconds": ver_s,
        "measured_speedup": ver_s / spec_s if spec_s > 0 else math.nan,
        "predicted_speedup": float(model_speedup(alpha, k_used, c)) if not math.isnan(alpha) else math.nan,
        "predicted_speedup_verify_cost": (speedup_with_verify_cost(alpha, k_used, c, r[k_used])
                                          if r is not None else math.nan),
        "acceptance": alpha,
        "realised_acceptance": float(stats.acceptance_rate()[t]),
        "tokens_per_step": float(stats.tokens_per_step()[t]),
        "num_draft": k_used, "cost_ratio": c, "verify_cost": None if r is None else list(r),
        "break_even_acceptance": even, "acceptance_margin": alpha - even,
        "spec_tokens_per_s": tokens / spec_s if spec_s > 0 else math.nan,
        "verifier_tokens_per_s": tokens / ver_s if ver_s > 0 else math.nan,
    }
