"""The pieces of a decode loop that the speculative generator and the verifier-only
baseline share: the output record, the section clock, one model's KV cache with a slot
mask, logit processing and sampling (the per-call state of the speculative generator is
`specfair.decode_state`; what a call is given is checked in `specfair.inputs`).

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

SECTIONS = ("prefill", "draft", "verify_forward", "kernel", "bookkeeping", "step", "total")
STATIC_ROUND = 64   # static caches are sized up to a multiple of this (fewer shapes to compile)


def static_cache_len(slots: int) -> int:
    """``slots`` rounded up to a multiple of `STATIC_ROUND`: the length of a static cache."""
    return -(-slots // STATIC_ROUND) * STATIC_ROUND

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
        Verification steps (verifier forwards; the first also reads the prompt).
    row_steps : int64 [B]
        Steps each row took part in.
    timings : dict[str, float]
        Seconds spent in ``prefill`` (setting up the caches: the prompt is read by the first
        step's forwards, so its cost is in ``verify_forward`` and ``draft``), ``draft``
        (drafter forwards and sampling), ``verify_forward`` (verifier forward), ``kernel`` (logit processing and
        `specfair_kernels.verify`), ``bookkeeping`` (caches, masks, outputs, the host sync),
        ``step`` (whole steps of ``fixed_step=True``, which are not split) and ``total``; the
        device is synchronised at every boundary.  The verifier-only loop
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
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None   # see `read_later`

    def reset(self, batch: int, device):
        self.cache = None
        if self.static_len is not None:
            from transformers import StaticCache

            self.cache = StaticCache(config=self.model.config, max_cache_len=self.static_len)
        self.mask = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, dtype=torch.int64, device=device)
        self.pending = None

    def read_later(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """Have the next `forward` read ``tokens`` [B, W'] (``valid`` bool) before its own, in
        the same model call: a prompt's prefill then costs no forward of its own, as in
        Hugging Face's ``generate``, whose prefill also gives the first token's logits."""
        self.pending = (tokens, valid)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, keep: int | None) -> torch.Tensor:
        """Append ``tokens`` [B, W] (``valid`` [B, W] bool, None = all valid); logits of the last
        ``keep`` positions (all W if None), sliced to the shared vocabulary.  Tokens left by
        `read_later` go first, in the same model call."""
        if self.pending is not None:
            tokens, valid, keep = read_pending(self.pending, tokens, valid, keep)
            self.pending = None
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
        if pad <= 0 or self.pending is not None:   # a forward that reads a prompt too is wide already
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
        static = self.static_len is not None
        self.mask = compact_slots(self._static_layers() if static else layers, self.mask, in_place=static)


def read_pending(pending: tuple[torch.Tensor, torch.Tensor], tokens: torch.Tensor, valid: torch.Tensor | None,
                 keep: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A forward's (tokens, valid, keep) with the tokens left by ``read_later`` (``pending``:
    tokens [B, W'] and their bool mask) in front: the logits kept are still only those of
    ``tokens`` (all of them when ``keep`` is None)."""
    pre, pre_valid = pending
    keep = tokens.shape[1] if keep is None else keep
    valid = torch.cat([pre_valid, torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid], 1)
    return torch.cat([pre, tokens], 1), valid, keep


def compact_slots(layers, mask: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Gather each row's valid slots (``mask`` [B, L], bool) right-aligned into the first
    L' columns of every layer's keys and values, L' the longest row's count; -> the new slot
    mask [B, L'].  ``in_place``: static layers, written into their own buffers (they keep
    their address) with the write pointer (``cumulative_length``) set to L'; else each
    layer's tensors are replaced by the gathered ones."""
    count = mask.sum(1)
    L_new = int(count.max())
    B, L = mask.shape
    # Stable sort puts each row's valid slots first, in order.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    s = torch.arange(L_new, device=mask.device)
    pad = (L_new - count)[:, None]
    src = order.gather(1, (s[None, :] - pad).clamp(min=0))  # [B, L_new]
    for layer in layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if in_place:
                H, D = t.shape[1], t.shape[3]
                t[:, :, :L_new] = t[:, :, :L].gather(2, src[:, None, :, None].expand(B, H, L_new, D))
                continue
            if t is None or t.dim() != 4 or t.shape[-2] != L:
                continue
            H, D = t.shape[1], t.shape[3]
            setattr(layer, name, t.gather(2, src[:, None, :, None].expand(B, H, L_new, D)))
        if in_place:
            layer.cumulative_length.fill_(L_new)
    return s[None, :] >= pad


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


def draft_chain(logits: torch.Tensor, K: int, feed, process, temperature: float, draft: str,
                generator: torch.Generator | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """K drafts per row from a drafter whose next-token logits are ``logits`` [b, V]:
    each is sampled from the processed logits (``process``; `sample_tokens`) or, with
    ``draft="argmax"``, their argmax, and ``feed(token [b, 1])`` returns the drafter's
    logits after it (not called after the last).  -> (the processed logits [b, K, V] the
    drafts came from, or None for argmax drafts, whose q is one-hot; drafts [b, K])."""
    draft_logits, drafts = [], []
    for j in range(K):
        proc = process(logits)
        tok = proc.argmax(-1) if draft == "argmax" else sample_tokens(proc, temperature, generator)
        draft_logits.append(proc)
        drafts.append(tok)
        if j < K - 1:
            logits = feed(tok[:, None])
    return (None if draft == "argmax" else torch.stack(draft_logits, 1)), torch.stack(drafts, 1)


def kept_until_eos(tokens: torch.Tensor, emitted: torch.Tensor,
                   eos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a verified step (``tokens`` [B, K+1], ``emitted`` [B] of them valid): how
    many tokens to keep (through the first EOS of ``eos``, else all emitted) and whether an
    EOS ended the row (bool [B]).  A broadcast comparison, no host read (``isin`` may sort)."""
    if eos is None:
        return emitted, torch.zeros_like(emitted, dtype=torch.bool)
    j = torch.arange(tokens.shape[1], device=tokens.device)
    is_eos = (tokens[..., None] == eos).any(-1) & (j[None, :] < emitted[:, None])
    hit = is_eos.any(1)
    return torch.where(hit, is_eos.long().argmax(1) + 1, emitted), hit


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
