"""The pieces of a decode loop that the speculative generator and the verifier-only
baseline share: the output record, the section clock, one model's KV cache with a slot
mask, logit processing and sampling, and the per-call decode state (what a call is given is
checked in `specfair.inputs`).

KV caches: exact by masking, cheap by cropping and compaction
-----------------------------------------------------------
`CachedModel` keeps one Hugging Face cache plus a 2-D boolean *slot mask* [B, L]: slot s of
row b holds a real token iff ``mask[b, s]``.  Position ids are per-row counts of valid
tokens, never slot indices, so a hole in the cache changes nothing the model computes (the
mask removes the key, RoPE/learned positions come from the count).  Slots that no row uses
are cropped off the end (`CachedModel.crop_end`), finished rows are dropped
(`select_rows`), and `compact` gathers each row's valid slots right-aligned.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch

import specfair_kernels as sk
from specfair_kernels.api import GREEDY_BELOW

from .fastpath import compiled_model, slot_attention_mask, takes_4d_mask

SECTIONS = ("prefill", "draft", "verify_forward", "kernel", "bookkeeping", "total")

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


class Clock:
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


class CachedModel:
    """A causal LM with its KV cache, slot mask [B, L] (bool) and valid-token counts [B].

    ``static_len`` None: a Hugging Face ``DynamicCache`` that grows by concatenation and is
    cropped by slicing.  An int: a ``StaticCache`` of that many slots per row, written in
    place at a write pointer (the ``cumulative_length`` of its layers); cropping moves the
    pointer back and compaction gathers the valid slots to the front in place, so every
    forward sees tensors of one shape, which is what ``torch.compile`` needs.  The model
    is then given the slot mask padded to ``static_len`` with False.  ``compile_backend``
    (a ``torch.compile`` backend name, or None for eager) and ``compile_mode``: decode
    forwards call the compiled model (`specfair.fastpath.compiled_model`) instead; the
    prefill, whose width changes from call to call, stays eager.  Under
    ``compile_mode="reduce-overhead"`` (CUDA graphs) each decode forward starts a new graph
    step and its logits are copied out of the graph's output buffer, which the next replay
    overwrites."""

    def __init__(self, model, vocab_size: int, static_len: int | None = None, compile_backend: str | None = None,
                 compile_mode: str | None = None):
        self.model = model
        self.call = compiled_model(model, compile_backend, compile_mode) if compile_backend else model
        self.graphs = compile_mode == "reduce-overhead"
        self.V = vocab_size
        self.static_len = static_len
        self.keep_kw = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.mask4d = takes_4d_mask(model)
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None  # valid tokens in the cache = next position id

    def reset(self, batch: int, device):
        self.cache = None
        if self.static_len is not None:
            from transformers import StaticCache

            self.cache = StaticCache(config=self.model.config, max_cache_len=self.static_len)
        self.mask = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, dtype=torch.int64, device=device)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, keep: int | None) -> torch.Tensor:
        """Append ``tokens`` [B, W] (``valid`` [B, W] bool, None = all valid); logits of the last
        ``keep`` positions (all if None), sliced to the shared vocabulary."""
        W = tokens.shape[1]
        if self.static_len is not None and self.mask.shape[1] + W > self.static_len:
            self.compact()   # holes take the room: gather the valid slots first
            if self.mask.shape[1] + W > self.static_len:
                raise RuntimeError(f"the static KV cache of {self.static_len} slots is full")
        if valid is None:
            pos_ids = self.pos[:, None] + torch.arange(W, device=tokens.device)
            valid = torch.ones_like(tokens, dtype=torch.bool)
            self.pos = self.pos + W
        else:
            pos_ids = self.pos[:, None] + (valid.cumsum(1) - 1).clamp(min=0)
            self.pos = self.pos + valid.sum(1)
        cached = self.mask.shape[1]
        self.mask = torch.cat([self.mask, valid], 1)
        if self.mask4d and cached:   # a decode forward: the mask the model would build, built once here
            attn = slot_attention_mask(self.mask, W, self.static_len)
        else:
            attn = self.mask.long()
            if self.static_len is not None:
                attn = torch.nn.functional.pad(attn, (0, self.static_len - attn.shape[1]))
        kwargs = {"logits_to_keep": keep} if (self.keep_kw and keep is not None) else {}
        if self.graphs and cached:
            torch.compiler.cudagraph_mark_step_begin()
        out = (self.call if cached else self.model)(input_ids=tokens, attention_mask=attn, position_ids=pos_ids,
                                                    past_key_values=self.cache, use_cache=True, **kwargs)
        self.cache = out.past_key_values
        logits = out.logits.to(tokens.device)   # a model spread over devices may return them elsewhere
        if self.graphs and cached:
            logits = logits.clone()
        if keep is not None and logits.shape[1] != keep:
            logits = logits[:, -keep:]
        return logits[..., :self.V]

    def forward_padded(self, tokens: torch.Tensor, width: int) -> torch.Tensor:
        """Logits of all W = ``tokens.shape[1]`` positions (every token valid) from one forward
        over ``width`` >= W tokens: copies of the last token fill the extra columns, and their
        slots are hidden and dropped again at once, so the cache ends as after a forward over
        the W tokens alone.  Attention is causal, so the W positions see none of the filler;
        only the matrix-multiply shapes change (on a CPU a forward over 4 tokens can cost
        less than one over 3: `specfair.costs.cheapest_widths`)."""
        pad = width - tokens.shape[1]
        if pad <= 0:
            return self.forward(tokens, None, keep=None)
        logits = self.forward(torch.cat([tokens, tokens[:, -1:].expand(-1, pad)], 1), None, keep=None)
        self.mask[:, -pad:] = False   # hidden even where the cache type cannot be cropped
        self.crop_end(pad)
        self.pos = self.pos - pad
        return logits[:, :-pad]

    # cache surgery -----------------------------------------------------------------------
    def _layers(self):
        return getattr(self.cache, "layers", None) if self.cache is not None else None

    def _static_layers(self):
        return [la for la in (self._layers() or []) if getattr(la, "is_initialized", False)]

    def crop_end(self, n: int):
        """Drop the last ``n`` slots of every row (slots no row uses)."""
        if n <= 0:
            return
        layers = self._layers()
        if layers is None:  # unknown cache type: keep the slots, the mask already hides them
            return
        if self.static_len is not None:
            for layer in self._static_layers():
                layer.cumulative_length.sub_(n)   # the next write lands on the dropped slots
            self.mask = self.mask[:, :-n]
            return
        for layer in layers:
            if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 and layer.keys.shape[-2] > 0:
                layer.keys = layer.keys[..., :-n, :]
                layer.values = layer.values[..., :-n, :]
        self.mask = self.mask[:, :-n]

    def select_rows(self, rows: torch.Tensor):
        if self.static_len is not None:   # StaticLayer has no batch_select_indices
            for layer in self._static_layers():
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]
                layer.batch_size = len(rows)
        elif self.cache is not None:
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
        for layer in (self._static_layers() if self.static_len is not None else layers):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if self.static_len is not None:   # in place: the buffers keep their address
                    H, D = t.shape[1], t.shape[3]
                    t[:, :, :L_new] = t[:, :, :L].gather(2, src[:, None, :, None].expand(B, H, L_new, D))
                    continue
                if t is None or t.dim() != 4 or t.shape[-2] != L:
                    continue
                H, D = t.shape[1], t.shape[3]
                setattr(layer, name, t.gather(2, src[:, None, :, None].expand(B, H, L_new, D)))
            if self.static_len is not None:
                layer.cumulative_length.fill_(L_new)
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


# --- the end of a call ------------------------------------------------------------------

def finish_output(out_buf, n_new, row_steps, ids, pad, stats, steps, timings, num_draft) -> GenerationOutput:
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


@dataclass
class DecodeState:
    """Everything one `SpeculativeGenerator.generate` call carries from step to step.

    ``rows`` (host) / ``rows_dev`` map the active rows to their original index; ``last`` is
    each active row's last committed token (in neither cache yet); ``d_pend``/``d_valid``
    the tokens the drafter has not read yet (``d_valid`` None: all valid)."""

    ids: torch.Tensor
    task_t: torch.Tensor
    seeds: torch.Tensor
    gen: torch.Generator | None
    max_new_tokens: int
    K_chosen: list[int]      # each task's K (auto: the choice before probes)
    probes: list[str]        # auto: when a task at K = 0 probes (`specfair.auto_draft.probe_policy`)
    remember: bool           # the call's counts go into the generator's history at the end
    out_buf: torch.Tensor
    eos_t: torch.Tensor | None
    drafter: CachedModel | None = None
    verifier: CachedModel | None = None
    step: int = 0
    start: torch.Tensor | None = None  # each row's first prompt column (device)
    stats: sk.TaskStats | None = None   # the call's accumulator (steps committed uncounted are added at the end)

    def __post_init__(self):
        B = self.ids.shape[0]
        self.n_new = torch.zeros(B, dtype=torch.int64)       # host
        self.row_steps = torch.zeros(B, dtype=torch.int64)   # host
        self.counted = torch.zeros(B, dtype=torch.int64)     # host: each row's steps already in ``stats``
        self.rows = torch.arange(B)
        self.rows_dev = torch.arange(B, device=self.ids.device)
        self.task_host = self.task_t.cpu()
        self.last = self.ids[:, -1]
        self.d_pend, self.d_valid = self.last[:, None], None
        self.K_task = list(self.K_chosen)   # the K each task drafts this step

    def models(self) -> list[CachedModel]:
        return [m for m in (self.drafter, self.verifier) if m is not None]

    def keep_rows(self, alive: torch.Tensor, alive_dev: torch.Tensor) -> None:
        """Drop the finished rows from the batch (host and device indices of the survivors)."""
        self.rows, self.rows_dev = self.rows[alive], self.rows_dev[alive_dev]
        for m in self.models():
            m.select_rows(alive_dev)
        self.last, self.d_pend = self.last[alive_dev], self.d_pend[alive_dev]
        self.d_valid = None if self.d_valid is None else self.d_valid[alive_dev]

    # --- after verification ------------------------------------------------------------------
    def commit(self, out: sk.VerifyOutput, drafts: torch.Tensor, K: int, compact_threshold: float | None,
               counted: bool = True) -> bool:
        """Write a step's tokens, roll both caches back per row and drop finished rows; True
        when every row is done.  One host synchronisation.  ``compact_threshold``: see
        `SpeculativeGenerator`.  ``counted`` False: a step without drafts whose counts are
        not in ``stats`` yet (`add_uncounted` adds them at the end of the call)."""
        if K == 0:
            return self._commit_plain(out, compact_threshold, counted)
        dev = self.ids.device
        acc, emit, toks = out.num_accepted.long(), out.num_emitted.long(), out.tokens
        keep, hit_eos = emit, torch.zeros_like(emit)
        if self.eos_t is not None:
            j = torch.arange(K + 1, device=dev)
            is_eos = torch.isin(toks, self.eos_t) & (j[None, :] < emit[:, None])
            hit = is_eos.any(1)
            keep = torch.where(hit, is_eos.long().argmax(1) + 1, emit)
            hit_eos = hit.long()
        # Per-row rollback, on the device: the verifier appended K+1 slots and keeps a+1 of
        # them; the drafter cached drafts 1..K-1 and keeps min(a, K-1) of them.
        ver, dra = self.verifier, self.drafter
        j = torch.arange(K + 1, device=dev)
        ver.mask[:, -(K + 1):] = j[None, :] <= acc[:, None]
        ver.pos = ver.pos - (K - acc)
        if K > 1 and dra is not None:
            j = torch.arange(1, K, device=dev)
            dra.mask[:, -(K - 1):] = j[None, :] <= acc[:, None]
            dra.pos = dra.pos - (K - 1 - torch.clamp(acc, max=K - 1))
        acc_h, keep_h, emit_h, hit_h, *pos_h = torch.stack(
            [acc, keep, emit, hit_eos, *(m.pos for m in self.models())]).cpu()  # the one sync
        self._check_emitted(emit_h, True)
        cols = self.n_new[self.rows].to(dev)[:, None] + torch.arange(K + 1, device=dev)
        self.out_buf[self.rows_dev[:, None], cols] = toks
        self.n_new[self.rows] += keep_h
        self.row_steps[self.rows] += 1
        self.counted[self.rows] += 1
        self.step += 1
        finished = (self.n_new[self.rows] >= self.max_new_tokens) | (hit_h > 0)

        a_max = int(acc_h.max())
        ver.crop_end(K - a_max)  # slots no row kept
        if K > 1 and dra is not None:
            dra.crop_end(K - 1 - min(a_max, K - 1))
        self.last = toks.gather(1, (emit - 1)[:, None])[:, 0]
        if a_max == K:  # some row accepted every draft: the drafter has not read d_K yet
            self.d_pend = torch.stack([drafts[:, K - 1], self.last], 1)
            self.d_valid = torch.stack([acc == K, torch.ones_like(acc, dtype=torch.bool)], 1)
        else:
            self.d_pend, self.d_valid = self.last[:, None], None
        return self._drop_finished(finished, compact_threshold, pos_h)

    def _commit_plain(self, out: sk.VerifyOutput, compact_threshold: float | None, counted: bool) -> bool:
        """`commit` of a step without drafts: every valid row emits one token, no cache has a
        slot to roll back, and the drafter adds the token to what it has not read yet."""
        tok, emit = out.tokens[:, 0], out.num_emitted
        if self.eos_t is not None:
            hit = torch.isin(tok, self.eos_t) & (emit > 0)
            emit_h, hit_h = torch.stack([emit.long(), hit.long()]).cpu()   # the one sync
        else:
            emit_h, hit_h = emit.cpu(), None
        self._check_emitted(emit_h, counted)
        if len(self.rows) == len(self.n_new):   # every row still active: no gather
            self.out_buf[self.rows_dev, self.n_new.to(self.ids.device)] = tok
            self.n_new += 1
            self.row_steps += 1
            if counted:
                self.counted += 1
        else:
            self.out_buf[self.rows_dev, self.n_new[self.rows].to(self.ids.device)] = tok
            self.n_new[self.rows] += 1
            self.row_steps[self.rows] += 1
            if counted:
                self.counted[self.rows] += 1
        self.step += 1
        self.last = tok
        valid = self.d_valid if self.d_valid is not None else torch.ones_like(self.d_pend, dtype=torch.bool)
        self.d_pend = torch.cat([self.d_pend, tok[:, None]], 1)
        self.d_valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
        finished = self.n_new[self.rows] >= self.max_new_tokens
        if hit_h is not None:
            finished |= hit_h > 0
        return self._drop_finished(finished, compact_threshold, None)

    def _check_emitted(self, emit_h: torch.Tensor, counted: bool) -> None:
        if not bool(emit_h.all()):
            if not counted:
                self.add_uncounted(failed=emit_h)
            bad = self.rows[emit_h == 0].tolist()
            raise RuntimeError(f"verify found NaN/inf or all -inf logits for rows {bad} at step {self.step}; "
                               "the models produced invalid logits (try float32)")

    def add_uncounted(self, failed: torch.Tensor | None = None) -> None:
        """Add to ``stats`` the steps committed with ``counted=False`` (steps without drafts:
        one emitted token and one verification step each, the accept-length histogram's
        0 bin).  ``failed``: the emitted counts of the active rows in an uncounted step that
        found invalid logits (it raises before its commit): counted as `verify` counts them,
        a step for each valid row and an invalid row for each other."""
        pending = self.row_steps - self.counted
        invalid = torch.zeros_like(pending)
        if failed is not None:
            pending[self.rows] += (failed > 0).long()
            invalid[self.rows] += (failed == 0).long()
        if self.stats is None or not (bool(pending.any()) or bool(invalid.any())):
            return
        S = sk.stats
        rows = torch.zeros(len(pending), len(S.COUNT_NAMES), dtype=torch.int64)
        rows[:, S.COUNT_EMITTED] = pending
        rows[:, S.COUNT_STEPS] = pending
        rows[:, S.COUNT_INVALID] = invalid
        dev = self.stats.device
        self.stats.counts.index_add_(0, self.task_t, rows.to(dev))
        self.stats.hist[:, 0].index_add_(0, self.task_t, pending.to(dev))
        self.counted = self.row_steps.clone()

    def _drop_finished(self, finished: torch.Tensor, compact_threshold: float | None, pos_h) -> bool:
        """Drop the finished rows (True when none is left), then compact a cache whose share of
        holes passed ``compact_threshold``.  ``pos_h``: each model's valid-token counts on the
        host, read with the step's sync; None after a step that left no holes, and then the
        check runs only when rows were dropped (a dropped long row leaves the others' holes)."""
        dropped = bool(finished.any())
        if dropped:
            alive = (~finished).nonzero()[:, 0]
            if alive.numel() == 0:
                return True
            self.keep_rows(alive, alive.to(self.ids.device))
            pos_h = None if pos_h is None else [p[alive] for p in pos_h]
        if compact_threshold is None or not (dropped or pos_h is not None):
            return False
        models = self.models()
        counts = [int(p.max()) for p in pos_h] if pos_h is not None else torch.stack(
            [m.pos.max() for m in models]).tolist()
        for m, count in zip(models, counts):
            L = m.mask.shape[1]
            if L and 1 - count / L > compact_threshold:
                m.compact()
        return False
