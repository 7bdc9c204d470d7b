"""Batched speculative generation for any pair of Hugging Face causal language models.

A gpt-fast-style decode loop around `specfair_kernels.verify`: per step the drafter proposes
K tokens per row, the verifier scores all K+1 positions in one forward, and the fused kernel
accepts a prefix of each row's drafts by exact rejection sampling while it adds acceptance
and divergence into per-task `TaskStats`.  Rows advance by different amounts every step.

KV caches: exact by masking, cheap by cropping and compaction
-----------------------------------------------------------
Each model keeps one Hugging Face cache plus a 2-D boolean *slot mask* [B, L]: slot s of
row b holds a real token iff ``mask[b, s]``.  Position ids are per-row counts of valid
tokens, never slot indices, so a hole in the cache changes nothing the model computes (the
mask removes the key, RoPE/learned positions come from the count).

* A step appends K+1 slots to the verifier cache (the last committed token and the K drafts).
  After verification a row that accepted ``a`` drafts keeps the first ``a + 1`` of them; the
  others are switched off in its mask: that is the per-row rollback, and it is exact.
* Slots rejected by *every* row are cropped off the end (so at batch 1 the cache never holds
  a hole), finished rows are dropped from the batch, and when more than
  ``compact_threshold`` of the cache's columns are holes in the longest row, every row's
  valid slots are gathered right-aligned (``_compact``), which is the per-row crop.
* The drafter caches the drafts it read; after a step it keeps ``min(a, K-1)`` of them.  When
  a row accepted all K drafts, the K-th draft was never fed to the drafter, so the next step
  feeds it together with the new token (a 2-token first draft forward, padded by a masked
  slot for the other rows).

Randomness: drafts are sampled with a ``torch.Generator`` seeded by ``seed``; the verify
kernel gets one 64-bit seed per row drawn from the same generator and the step index, so the
same seed, inputs and batch give the same tokens.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch

import specfair_kernels as sk
from specfair_kernels.api import GREEDY_BELOW
from specfair_kernels.stats import speedup as model_speedup

SECTIONS = ("prefill", "draft", "verify_forward", "kernel", "bookkeeping", "total")
AUTO_PRIOR_ACCEPTANCE = 0.6  # acceptance assumed for a task before any of its drafts were scored
DEFAULT_MAX_DRAFT = 8        # K_max for num_draft="auto"


# --- results -------------------------------------------------------------------------------

@dataclass
class GenerationOutput:
    """What `SpeculativeGenerator.generate` (and `generate_verifier_only`) return.

    sequences : int64 [B, P + N]
        The left-padded prompt (width P), then each row's new tokens, ``pad_token_id`` after
        them; N is the largest number of new tokens of any row.
    num_new_tokens : int64 [B]
        New tokens per row (EOS included when it ended the row).
    prompt_width : int
        P, the width of the (left-padded) prompt in ``sequences``.
    stats : TaskStats or None
        Per-task acceptance, divergence and step counts (None for the verifier-only loop).
        Counts are those of verification: tokens emitted after an EOS inside one step are
        counted there although ``sequences`` drops them.
    steps : int
        Verification steps (verifier forwards after the prefill).
    row_steps : int64 [B]
        Steps each row took part in.
    timings : dict[str, float]
        Seconds spent in ``prefill``, ``draft`` (drafter forwards and sampling),
        ``verify_forward`` (verifier forward), ``kernel`` (logit processing and
        `specfair_kernels.verify`), ``bookkeeping`` (caches, masks, outputs, the host sync)
        and ``total``; the device is synchronised at every boundary.  The verifier-only loop
        reports its forwards under ``verify_forward`` and its sampling under ``kernel``.
    num_draft : list[int]
        Draft length per task at the last step (``num_draft="auto"`` adapts it).
    """

    sequences: torch.Tensor
    num_new_tokens: torch.Tensor
    prompt_width: int
    stats: sk.TaskStats | None
    steps: int
    row_steps: torch.Tensor
    timings: dict[str, float]
    num_draft: list[int] = field(default_factory=list)

    def new_tokens(self) -> list[list[int]]:
        """Each row's new tokens as a list of ints."""
        P = self.prompt_width
        return [self.sequences[b, P:P + int(n)].tolist() for b, n in enumerate(self.num_new_tokens)]

    def time_per_step(self) -> dict[str, float]:
        """Seconds per verification step for every timed section (prefill excluded)."""
        steps = max(self.steps, 1)
        return {k: v / steps for k, v in self.timings.items() if k != "prefill"}

    def tokens_per_second(self) -> float:
        return float(self.num_new_tokens.sum()) / self.timings["total"] if self.timings["total"] > 0 else math.nan


class _Clock:
    """Accumulates wall-clock seconds per section; synchronises a GPU before reading the clock."""

    def __init__(self, device: torch.device, sync_sections: bool = True):
        self.cuda = device.type == "cuda"
        self.sync_sections = sync_sections
        self.device = device
        self.seconds = dict.fromkeys(SECTIONS, 0.0)
        self.t0 = self.last = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self):
        self.t0 = self.last = self._now()

    def lap(self, section: str):
        now = self._now() if self.sync_sections else time.perf_counter()
        self.seconds[section] += now - self.last
        self.last = now

    def stop(self) -> dict[str, float]:
        self.seconds["total"] = self._now() - self.t0
        return dict(self.seconds)


# --- one model's cache ------------------------------------------------------------------------

def model_device(model) -> torch.device:
    return next(model.parameters()).device


def output_vocab_size(model) -> int:
    """Rows of the output embedding (the logits' last dimension), padding included."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def context_length(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _CachedModel:
    """A causal LM with its KV cache, slot mask [B, L] (bool) and valid-token counts [B]."""

    def __init__(self, model, vocab_size: int):
        self.model = model
        self.V = vocab_size
        self.keep_kw = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None  # valid tokens in the cache = next position id

    def reset(self, batch: int, device):
        self.cache = None
        self.mask = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, dtype=torch.int64, device=device)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, keep: int | None) -> torch.Tensor:
        """Append ``tokens`` [B, W] (``valid`` [B, W] bool, None = all valid); logits of the last
        ``keep`` positions (all if None), sliced to the shared vocabulary."""
        if valid is None:
            pos_ids = self.pos[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
            valid = torch.ones_like(tokens, dtype=torch.bool)
            self.pos = self.pos + tokens.shape[1]
        else:
            pos_ids = self.pos[:, None] + (valid.cumsum(1) - 1).clamp(min=0)
            self.pos = self.pos + valid.sum(1)
        self.mask = torch.cat([self.mask, valid], 1)
        kwargs = {"logits_to_keep": keep} if (self.keep_kw and keep is not None) else {}
        out = self.model(input_ids=tokens, attention_mask=self.mask.long(), position_ids=pos_ids,
                         past_key_values=self.cache, use_cache=True, **kwargs)
        self.cache = out.past_key_values
        logits = out.logits
        if keep is not None and logits.shape[1] != keep:
            logits = logits[:, -keep:]
        return logits[..., :self.V]

    # cache surgery -----------------------------------------------------------------------
    def _layers(self):
        return getattr(self.cache, "layers", None) if self.cache is not None else None

    def crop_end(self, n: int):
        """Drop the last ``n`` slots of every row (slots no row uses)."""
        if n <= 0:
            return
        layers = self._layers()
        if layers is None:  # unknown cache type: keep the slots, the mask already hides them
            return
        for layer in layers:
            if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 and layer.keys.shape[-2] > 0:
                layer.keys = layer.keys[..., :-n, :]
                layer.values = layer.values[..., :-n, :]
        self.mask = self.mask[:, :-n]

    def select_rows(self, rows: torch.Tensor):
        if self.cache is not None:
            self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.pos = self.pos[rows]

    def compact(self):
        """Gather each row's valid slots, right-aligned, into a cache of the longest row's length."""
        layers = self._layers()
        if layers is None:
            return
        count = self.mask.sum(1)
        L_new = int(count.max())
        B, L = self.mask.shape
        # Stable sort puts each row's valid slots first, in order.
        order = torch.sort((~self.mask).to(torch.int8), dim=1, stable=True).indices
        s = torch.arange(L_new, device=self.mask.device)
        pad = (L_new - count)[:, None]
        src = order.gather(1, (s[None, :] - pad).clamp(min=0))  # [B, L_new]
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if t is None or t.dim() != 4 or t.shape[-2] != L:
                    continue
                H, D = t.shape[1], t.shape[3]
                setattr(layer, name, t.gather(2, src[:, None, :, None].expand(B, H, L_new, D)))
        self.mask = s[None, :] >= pad


# --- logits processing and sampling -------------------------------------------------------------

def process_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask (to -inf) what top-k / top-p remove, as Hugging Face does after dividing by the
    temperature; the kept logits are returned *untempered* (`verify` divides by it).

    Greedy decoding (temperature 0) and plain sampling return the logits unchanged.
    """
    if temperature < GREEDY_BELOW or (top_k is None and top_p is None):
        return logits
    x = logits.float() / temperature
    remove = torch.zeros_like(x, dtype=torch.bool)
    if top_k is not None and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        remove = x < kth
        x = x.masked_fill(remove, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(-1).cumsum(-1)
        drop = cum <= (1 - top_p)
        drop[..., -1] = False  # keep at least the most likely token
        remove = remove | drop.scatter(-1, idx, drop)
    return logits.masked_fill(remove, float("-inf"))


def sample_tokens(processed: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``processed`` [..., V]: argmax when greedy, else a sample of
    softmax(processed / T) by the exponential race (argmax of logit/T - log E)."""
    if temperature < GREEDY_BELOW:
        return processed.argmax(-1)
    x = processed.float() / temperature
    e = torch.empty_like(x).exponential_(generator=generator)
    return (x - e.log()).argmax(-1)


# --- draft length --------------------------------------------------------------------------

def expected_tokens(alpha: float, num_draft: int) -> float:
    """(1 - a^(K+1)) / (1 - a): expected tokens per verification under i.i.d. acceptance."""
    return num_draft + 1.0 if alpha >= 1 else (1 - alpha ** (num_draft + 1)) / (1 - alpha)


def choose_num_draft(alpha, cost_ratio: float, max_draft: int, verify_cost=None,
                     prior_acceptance: float = AUTO_PRIOR_ACCEPTANCE) -> list[int]:
    """Per task, the K in 1..max_draft that maximises the expected speed-up.

    With ``verify_cost=None`` that is S(alpha_t; K, c) of PAPER.md, which assumes a verifier
    forward over K+1 tokens costs as much as one over a single token.  ``verify_cost[K]`` =
    (time of a verifier forward over K+1 tokens) / (time over 1 token), as measured by
    `measure_costs`, replaces that 1 in the denominator: (1 - a^(K+1)) / ((1 - a)(K c + r_K)).
    ``alpha`` is a [T] tensor or sequence of expected acceptances (NaN: no data yet, use
    ``prior_acceptance``).  Ties go to the smaller K.
    """
    values = [float(a) for a in (alpha.tolist() if isinstance(alpha, torch.Tensor) else alpha)]
    if verify_cost is not None and len(verify_cost) < max_draft + 1:
        raise ValueError(f"verify_cost must have max_draft + 1 = {max_draft + 1} entries, got {len(verify_cost)}")
    out = []
    for a in values:
        a = prior_acceptance if math.isnan(a) else min(max(a, 0.0), 1.0)

        def gain(k):
            if verify_cost is None:
                return model_speedup(a, k, cost_ratio)
            return expected_tokens(a, k) / (k * cost_ratio + verify_cost[k])

        out.append(max(range(1, max_draft + 1), key=lambda k: (gain(k), -k)))
    return out


def _time_forward(device, fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):  # the first two are warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    return times[len(times) // 2]


def measure_costs(drafter, verifier, batch_size: int = 1, max_draft: int = 0, context: int = 32,
                  repeats: int = 10) -> dict:
    """Measured costs of one speculative step, relative to one verifier decode step.

    Both models prefill the same random prompt of ``context`` tokens for ``batch_size`` rows;
    then the median time of one-token forwards with the KV cache (the cache is cropped back
    after each, so the context stays fixed) gives ``cost_ratio`` c = drafter / verifier, and
    verifier forwards over n = 1..max_draft+1 tokens give ``verify_cost[K]`` = time(K+1
    tokens) / time(1 token) (``verify_cost[0]`` = 1).  The device is synchronised around
    every timed forward.
    """
    device = model_device(verifier)
    V = min(output_vocab_size(drafter), output_vocab_size(verifier))
    limit = min(x for x in (context_length(drafter), context_length(verifier), 1 << 30) if x)
    context = max(1, min(context, limit - max_draft - 2))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, V, (batch_size, context), generator=gen).to(device)
    step_times = {}
    with torch.inference_mode():
        for name, model in (("drafter", drafter), ("verifier", verifier)):
            m = _CachedModel(model, V)
            m.reset(batch_size, device)
            m.forward(prompt, None, keep=1)
            widths = range(1, max_draft + 2) if name == "verifier" else (1,)
            for n in widths:
                tokens = prompt[:, -n:]

                def step(m=m, tokens=tokens, n=n):
                    m.forward(tokens, None, keep=None if n > 1 else 1)
                    m.crop_end(n)
                    m.pos = m.pos - n

                step_times[(name, n)] = _time_forward(device, step, repeats)
    t1 = step_times[("verifier", 1)]
    return {"cost_ratio": step_times[("drafter", 1)] / t1,
            "verify_cost": [1.0] + [step_times[("verifier", k + 1)] / t1 for k in range(1, max_draft + 1)],
            "verifier_step_s": t1, "drafter_step_s": step_times[("drafter", 1)], "batch_size": batch_size}


def measure_cost_ratio(drafter, verifier, batch_size: int = 1, context: int = 32, repeats: int = 10) -> float:
    """c = (drafter decode-step time) / (verifier decode-step time), measured (`measure_costs`)."""
    return measure_costs(drafter, verifier, batch_size, 0, context, repeats)["cost_ratio"]


# --- input checks --------------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _prepare_prompts(input_ids, attention_mask, pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
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
        if not all(_is_int(t) for r in rows for t in r):
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


def _eos_list(eos_token_id, default) -> list[int]:
    eos = default if eos_token_id is None else eos_token_id
    if eos is None:
        return []
    if _is_int(eos):
        return [eos]
    if isinstance(eos, (list, tuple)) and all(_is_int(e) for e in eos):
        return list(eos)
    raise TypeError(f"eos_token_id must be None, an int or a list of ints, got {eos_token_id!r}")


def _check_max_new(max_new_tokens):
    if not _is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def _check_context(prompt_len: int, max_new_tokens: int, limits: dict[str, int | None]):
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


def _default_eos(model):
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    return eos if eos is not None else getattr(model.config, "eos_token_id", None)


def _default_pad(model, eos: list[int]) -> int:
    for src in (getattr(model, "generation_config", None), model.config):
        pad = getattr(src, "pad_token_id", None) if src is not None else None
        if _is_int(pad):
            return pad
    return eos[0] if eos else 0


def _row_seeds(seed, B: int, device) -> tuple[torch.Generator | None, torch.Tensor]:
    if seed is not None and not _is_int(seed):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed % (2**64))
    seeds = torch.randint(0, 2**62, (B,), dtype=torch.int64, device=device, generator=gen)
    return gen, seeds


def _finish(out_buf, n_new, row_steps, ids, pad, stats, steps, timings, num_draft) -> GenerationOutput:
    B, P = ids.shape
    n_max = int(n_new.max()) if B else 0
    seq = torch.full((B, P + n_max), pad, dtype=torch.int64, device=ids.device)
    seq[:, :P] = ids
    if n_max:
        cols = torch.arange(n_max, device=ids.device)
        new = out_buf[:, :n_max]
        n_dev = n_new.to(ids.device)
        seq[:, P:] = torch.where(cols[None, :] < n_dev[:, None], new, pad)
    return GenerationOutput(seq, n_new.cpu(), P, stats, steps, row_steps.cpu(), timings, num_draft)


# --- the generator --------------------------------------------------------------------------

class SpeculativeGenerator:
    """Speculative decoding with a drafter and a verifier that share a tokenizer.

    Parameters
    ----------
    drafter, verifier : transformers causal LMs (``PreTrainedModel``) on one device.
    num_draft : int >= 1 or "auto"
        Drafts per step K.  ``"auto"`` picks each task's K in ``1..max_draft`` every step to
        maximise S(alpha_t; K, c) from the task's running expected acceptance (the ``stats``
        accumulator) and the cost ratio c; rows of one batch get their task's K through
        `verify`'s per-row ``num_draft``.
    temperature : float >= 0
        0 (or < 1e-5) is greedy: the output equals the verifier's greedy decoding.
    top_k : int >= 1, optional;  top_p : float in (0, 1], optional
        Applied to both models' logits exactly as Hugging Face does (after the temperature),
        so the output is distributed as the verifier's processed distribution.
    backend : "auto" | "triton" | "cpp" | "torch"
        `specfair_kernels.verify` backend.
    max_draft : int
        K_max for ``num_draft="auto"`` (default 8).
    cost_ratio : float, optional
        c for ``num_draft="auto"``, which then maximises S(alpha; K, c) exactly as PAPER.md.
        When None, `measure_costs` measures c *and* the verifier's cost over K+1 tokens at
        the batch size of the call (once per batch size, kept in ``costs``), and auto
        maximises the speed-up with that measured verification cost.
    vocab_size : int, optional
        Shared vocabulary V; default: the smaller of the two models' output sizes (embedding
        rows past the tokenizer are padding and are never sampled).
    pad_token_id : int, optional
        Written after each row's last token; default from the verifier's config.
    compact_threshold : float in [0, 1] or None
        Compact the caches when this share of their columns is holes (default 0.5); 0
        compacts after every step with holes, None never (the mask alone keeps it exact).
    profile : bool
        Synchronise the device at every section boundary so ``timings`` splits the step
        truthfully (default).  False synchronises only at the start and end (``total`` is
        exact, the sections are host-side times): for throughput figures on a GPU.

    Examples
    --------
    >>> import specfair
    >>> from specfair.generator import load_pair, SpeculativeGenerator
    >>> drafter, verifier, tok = load_pair(specfair.default_pair_path("drafter"),
    ...                                    specfair.default_pair_path("verifier"), device="cpu")
    >>> gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=0)
    >>> out = gen.generate(tok(["The "], return_tensors="pt").input_ids, max_new_tokens=8, seed=0)
    >>> out.sequences.shape[0], int(out.num_new_tokens[0]) <= 8
    (1, True)
    """

    def __init__(self, drafter, verifier, num_draft=4, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, backend: str = "auto", max_draft: int = DEFAULT_MAX_DRAFT,
                 cost_ratio: float | None = None, vocab_size: int | None = None, pad_token_id: int | None = None,
                 compact_threshold: float | None = 0.5, profile: bool = True):
        for name, m in (("drafter", drafter), ("verifier", verifier)):
            if not isinstance(m, torch.nn.Module) or not hasattr(m, "config"):
                raise TypeError(f"{name} must be a transformers causal LM (a torch.nn.Module with a config), "
                                f"got {type(m).__name__}")
        d_dev, v_dev = model_device(drafter), model_device(verifier)
        if d_dev != v_dev:
            raise ValueError(f"drafter is on {d_dev} but verifier is on {v_dev}; put both models on one device")
        if num_draft == "auto":
            if not _is_int(max_draft) or max_draft < 1:
                raise ValueError(f"max_draft must be an int >= 1, got {max_draft!r}")
        elif not _is_int(num_draft):
            raise TypeError(f"num_draft must be an int >= 1 or 'auto', got {num_draft!r}")
        elif num_draft < 1:
            raise ValueError(f"num_draft must be >= 1 (or 'auto'), got {num_draft}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0 (0 means greedy), got {temperature}")
        if top_k is not None and (not _is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                                  or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be None or a float in (0, 1], got {top_p!r}")
        if cost_ratio is not None and (isinstance(cost_ratio, bool) or not isinstance(cost_ratio, (int, float))
                                       or not (cost_ratio >= 0 and math.isfinite(cost_ratio))):
            raise ValueError(f"cost_ratio must be None or a finite number >= 0, got {cost_ratio!r}")
        if compact_threshold is not None and not (isinstance(compact_threshold, (int, float))
                                                  and 0 <= compact_threshold <= 1):
            raise ValueError(f"compact_threshold must be None or in [0, 1], got {compact_threshold!r}")
        sizes = (output_vocab_size(drafter), output_vocab_size(verifier))
        if vocab_size is None:
            vocab_size = min(sizes)
        elif not _is_int(vocab_size) or not 1 <= vocab_size <= min(sizes):
            raise ValueError(f"vocab_size must be an int in [1, {min(sizes)}] (the models' output sizes are "
                             f"drafter {sizes[0]}, verifier {sizes[1]}), got {vocab_size!r}")
        self.drafter, self.verifier = drafter, verifier
        self.device = v_dev
        self.num_draft = num_draft
        self.max_draft = max_draft if num_draft == "auto" else num_draft
        self.temperature = float(temperature)
        self.greedy = self.temperature < GREEDY_BELOW
        self.top_k, self.top_p = top_k, (None if top_p is None else float(top_p))
        self.backend = backend
        self.vocab_size = vocab_size
        self.compact_threshold = compact_threshold
        self.profile = bool(profile)
        self.costs: dict[int, dict] = {}
        self._cost_ratio = None if cost_ratio is None else float(cost_ratio)
        default_eos = _default_eos(verifier)
        self.default_eos = default_eos
        self.pad_token_id = pad_token_id if pad_token_id is not None else _default_pad(verifier, _eos_list(None, default_eos))
        self.context_limits = {"drafter": context_length(drafter), "verifier": context_length(verifier)}

    # ------------------------------------------------------------------------------------
    def measured_costs(self, batch_size: int = 1) -> dict:
        """`measure_costs` at this batch size (measured on first use, then kept)."""
        if batch_size not in self.costs:
            self.costs[batch_size] = measure_costs(self.drafter, self.verifier, batch_size, self.max_draft)
        return self.costs[batch_size]

    def cost_ratio(self, batch_size: int = 1) -> float:
        """c used by ``num_draft="auto"``: the given one, or measured once per batch size."""
        if self._cost_ratio is not None:
            return self._cost_ratio
        return self.measured_costs(batch_size)["cost_ratio"]

    def verify_cost(self, batch_size: int = 1) -> list[float] | None:
        """r_K = verifier time over K+1 tokens / over 1 token (None when c was given)."""
        if self._cost_ratio is not None:
            return None
        return self.measured_costs(batch_size)["verify_cost"]

    def _task_num_draft(self, stats: sk.TaskStats, batch_size: int) -> list[int]:
        if self.num_draft != "auto":
            return [self.num_draft] * stats.num_tasks
        return choose_num_draft(stats.expected_acceptance(), self.cost_ratio(batch_size), self.max_draft,
                                self.verify_cost(batch_size))

    def _process(self, logits):
        return process_logits(logits, self.temperature, self.top_k, self.top_p)

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 32, eos_token_id=None,
                 task_ids=None, num_tasks: int | None = None, stats: sk.TaskStats | None = None,
                 seed: int | None = None) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` tokens per prompt, speculatively and losslessly.

        Parameters
        ----------
        input_ids : int [B, P] tensor (left-padded) or a list of B lists of ints
        attention_mask : [B, P] 0/1, optional
            1 on prompt tokens; padding only on the left.  Default: all ones.
        max_new_tokens : int >= 0
            0 returns the prompts with no new tokens.
        eos_token_id : int or list of ints, optional
            Ends a row (the EOS is kept).  Default: the verifier's generation config;
            ``[]`` disables stopping.
        task_ids : [B] int, optional
            Task of each row in ``[0, num_tasks)`` (default 0).
        num_tasks : int, optional
            T; default ``stats.num_tasks``, else ``max(task_ids) + 1``.
        stats : TaskStats, optional
            Accumulator to add into (its history also steers ``num_draft="auto"``); must
            have ``max_draft >=`` K (K_max for auto).  A new one is made when None.
        seed : int, optional
            Same seed, inputs and batch -> same tokens.  None uses torch's global RNG.

        Returns
        -------
        GenerationOutput
        """
        dev = self.device
        _check_max_new(max_new_tokens)
        eos = _eos_list(eos_token_id, self.default_eos)
        ids, pmask = _prepare_prompts(input_ids, attention_mask, self.pad_token_id, dev)
        B, P = ids.shape
        if bool((((ids < 0) | (ids >= self.vocab_size)) & pmask).any()):
            raise ValueError(f"input_ids must lie in [0, vocab_size)=[0, {self.vocab_size}) on prompt tokens")
        ids_in = ids.masked_fill(~pmask, 0)  # padding never reaches an embedding lookup
        prompt_lens = pmask.sum(1)
        _check_context(int(prompt_lens.max()), max_new_tokens, self.context_limits)
        task_t, stats = self._prepare_tasks(task_ids, num_tasks, stats, B)
        gen, seeds = _row_seeds(seed, B, dev)

        K_task = self._task_num_draft(stats, B)  # may measure c: before the clock starts
        clock = _Clock(dev, self.profile)
        clock.start()
        Kmax = self.max_draft
        out_buf = torch.full((B, max_new_tokens + Kmax + 1), self.pad_token_id, dtype=torch.int64, device=dev)
        n_new = torch.zeros(B, dtype=torch.int64)           # host
        row_steps = torch.zeros(B, dtype=torch.int64)        # host
        if max_new_tokens == 0:
            return _finish(out_buf, n_new, row_steps, ids, self.pad_token_id, stats, 0, clock.stop(), K_task)

        drafter = _CachedModel(self.drafter, self.vocab_size)
        verifier = _CachedModel(self.verifier, self.vocab_size)
        for m in (drafter, verifier):
            m.reset(B, dev)
            if P > 1:  # the last prompt token is fed with the first step
                m.forward(ids_in[:, :-1], pmask[:, :-1], keep=1)
        clock.lap("prefill")

        eos_t = torch.tensor(eos, dtype=torch.int64, device=dev) if eos else None
        rows = torch.arange(B)                               # host: original index of each active row
        rows_dev = torch.arange(B, device=dev)
        task_host = task_t.cpu()
        last = ids[:, -1]                                    # last committed token, in neither cache
        d_pend, d_valid = last[:, None], None                # tokens the drafter has not read yet
        step = 0
        while True:
            # Per-row draft length: the task's K, and never past the token budget.
            remaining = max_new_tokens - n_new[rows]
            nd_host = torch.minimum(torch.tensor(K_task)[task_host[rows]], remaining - 1).clamp(min=0)
            K = int(nd_host.max())
            nd = nd_host.to(dev)
            seeds_a, tasks_a = seeds[rows_dev], task_t[rows_dev]

            # 1. draft K tokens per row
            if K > 0:
                logits = drafter.forward(d_pend, d_valid, keep=1)[:, -1]
                draft_logits, drafts = [], []
                for j in range(K):
                    proc = self._process(logits)
                    tok = sample_tokens(proc, self.temperature, gen)
                    draft_logits.append(proc)
                    drafts.append(tok)
                    if j < K - 1:
                        logits = drafter.forward(tok[:, None], None, keep=1)[:, -1]
                draft_logits = torch.stack(draft_logits, 1)
                drafts = torch.stack(drafts, 1)
            else:
                draft_logits = torch.empty(len(rows), 0, self.vocab_size, device=dev)
                drafts = torch.empty(len(rows), 0, dtype=torch.int64, device=dev)
            clock.lap("draft")

            # 2. verifier forward over the last token and the drafts
            target = verifier.forward(torch.cat([last[:, None], drafts], 1), None, keep=None)
            clock.lap("verify_forward")

            # 3. the kernel
            out = sk.verify(self._process(target), draft_logits, drafts, num_draft=nd,
                            temperature=self.temperature, task_ids=tasks_a, stats=stats, seed=seeds_a,
                            step=step, backend=self.backend)
            clock.lap("kernel")

            # 4. bookkeeping
            acc = out.num_accepted.long()
            emit = out.num_emitted.long()
            toks = out.tokens
            keep, hit_eos = emit, torch.zeros_like(emit)
            if eos_t is not None:
                j = torch.arange(K + 1, device=dev)
                is_eos = torch.isin(toks, eos_t) & (j[None, :] < emit[:, None])
                hit = is_eos.any(1)
                keep = torch.where(hit, is_eos.long().argmax(1) + 1, emit)
                hit_eos = hit.long()
            # Per-row rollback, on the device: the verifier appended K+1 slots and keeps a+1 of
            # them; the drafter cached drafts 1..K-1 and keeps min(a, K-1) of them.
            if K > 0:
                j = torch.arange(K + 1, device=dev)
                verifier.mask[:, -(K + 1):] = j[None, :] <= acc[:, None]
                verifier.pos = verifier.pos - (K - acc)
            if K > 1:
                j = torch.arange(1, K, device=dev)
                drafter.mask[:, -(K - 1):] = j[None, :] <= acc[:, None]
                drafter.pos = drafter.pos - (K - 1 - torch.clamp(acc, max=K - 1))
            host = torch.stack([acc, keep, emit, hit_eos, verifier.pos, drafter.pos]).cpu()  # the one sync
            acc_h, keep_h, emit_h, hit_h, vpos_h, dpos_h = host
            if bool((emit_h == 0).any()):
                bad = rows[emit_h == 0].tolist()
                raise RuntimeError(f"verify found NaN/inf or all -inf logits for rows {bad} at step {step}; "
                                   "the models produced invalid logits (try float32)")
            cols = n_new[rows].to(dev)[:, None] + torch.arange(K + 1, device=dev)
            out_buf[rows_dev[:, None], cols] = toks
            n_new[rows] += keep_h
            row_steps[rows] += 1
            step += 1
            finished = (n_new[rows] >= max_new_tokens) | (hit_h > 0)

            a_max = int(acc_h.max())
            verifier.crop_end(K - a_max)  # slots no row kept
            if K > 1:
                drafter.crop_end(K - 1 - min(a_max, K - 1))
            last = toks.gather(1, (emit - 1)[:, None])[:, 0]
            if K == 0:
                old_valid = d_valid if d_valid is not None else torch.ones_like(d_pend, dtype=torch.bool)
                d_pend = torch.cat([d_pend, last[:, None]], 1)
                d_valid = torch.cat([old_valid, torch.ones_like(last, dtype=torch.bool)[:, None]], 1)
            elif a_max == K:  # some row accepted every draft: the drafter has not read d_K yet
                d_pend = torch.stack([drafts[:, K - 1], last], 1)
                d_valid = torch.stack([acc == K, torch.ones_like(acc, dtype=torch.bool)], 1)
            else:
                d_pend, d_valid = last[:, None], None

            if bool(finished.any()):
                alive = (~finished).nonzero()[:, 0]
                if alive.numel() == 0:
                    clock.lap("bookkeeping")
                    break
                alive_dev = alive.to(dev)
                rows, rows_dev = rows[alive], rows_dev[alive_dev]
                vpos_h, dpos_h = vpos_h[alive], dpos_h[alive]
                for m in (drafter, verifier):
                    m.select_rows(alive_dev)
                last, d_pend = last[alive_dev], d_pend[alive_dev]
                d_valid = None if d_valid is None else d_valid[alive_dev]
            if self.compact_threshold is not None:
                for m, pos_h in ((drafter, dpos_h), (verifier, vpos_h)):
                    L = m.mask.shape[1]
                    if L and 1 - int(pos_h.max()) / L > self.compact_threshold:
                        m.compact()
            if self.num_draft == "auto":
                K_task = self._task_num_draft(stats, B)
            clock.lap("bookkeeping")
        return _finish(out_buf, n_new, row_steps, ids, self.pad_token_id, stats, step, clock.stop(), K_task)

    def _prepare_tasks(self, task_ids, num_tasks, stats, B):
        dev = self.device
        if stats is not None:
            if not isinstance(stats, sk.TaskStats):
                raise TypeError(f"stats must be a specfair_kernels.TaskStats, got {type(stats).__name__}")
            if stats.device != dev:
                raise ValueError(f"stats is on {stats.device} but the models are on {dev}")
            if stats.max_draft < self.max_draft:
                raise ValueError(f"stats has max_draft={stats.max_draft} but this generator drafts up to "
                                 f"{self.max_draft} tokens; make it with max_draft >= {self.max_draft}")
            if num_tasks is not None and num_tasks != stats.num_tasks:
                raise ValueError(f"num_tasks={num_tasks} but stats has num_tasks={stats.num_tasks}")
            num_tasks = stats.num_tasks
        if num_tasks is not None and (not _is_int(num_tasks) or num_tasks < 1):
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        if task_ids is None:
            task_t = torch.zeros(B, dtype=torch.int64, device=dev)
        else:
            if isinstance(task_ids, (list, tuple)):
                if not all(_is_int(t) for t in task_ids):
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
            stats = sk.TaskStats(num_tasks, self.max_draft, device=dev)
        return task_t, stats


from .generator_baseline import generate_verifier_only, measure_speedup  # noqa: E402
from .generator_load import check_tokenizers, load_pair  # noqa: E402

__all__ = ["SpeculativeGenerator", "GenerationOutput", "load_pair", "check_tokenizers", "generate_verifier_only",
           "measure_speedup", "measure_cost_ratio", "measure_costs", "choose_num_draft", "expected_tokens", "process_logits", "sample_tokens"]
