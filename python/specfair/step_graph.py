"""A whole decode step of fixed shape that never reads the device: run eagerly, or captured
as one CUDA graph and replayed (`SpeculativeGenerator` with ``fixed_step=True``, and
``cuda_graph=True`` on a GPU).

The default loop (`specfair.generator`) adapts every step to what the last one found: it
drops finished rows, shrinks K near the token budget, crops and compacts the caches, and
feeds the drafter one token or two.  Each of those choices is read back from the device
and changes a shape, so that loop can be captured only forward by forward.  Here every
choice stays on the device, and the draft forwards, the verifier forward, `verify` and the
commit form one fixed sequence of kernels:

* Every row takes part in every step at width K.  A finished row drafts nothing
  (``num_draft`` 0) and its tokens go to a discarded column of the output buffer; what
  `verify` counted for it is taken back out of ``stats`` at the end of the call.
* Each model's cache is a `SlotCache`: a ``StaticCache`` of S slots, a slot mask [B, S] and
  each row's valid-token count, all written in place at the cache's own write pointer (a
  device tensor).  The per-row rollback and the crop of slots no row kept are device ops.
* The drafter reads two tokens at the start of every step: the previous step's K-th draft
  (a masked slot unless the row accepted all K) and the last committed token.
* `specfair_kernels.verify` gets the step index as a device tensor and
  ``check_values=False``.

The host reads one small tensor per step (every row done, a row with invalid logits, the
two write pointers): to stop, to raise as the default loop does, and to compact a cache
that would overflow (outside the graph; the buffers keep their addresses).

Capture follows PyTorch's recipe for whole-network graphs: the first step, whose forwards
also read the prompt (as Hugging Face's prefill does), runs eagerly on a side stream (the
warm-up); the second is captured (once per call: the buffers are the call's) and
replayed, every later one is a replay.  The call's ``torch.Generator`` is registered with
the graph, so a replay draws from the generator's stream as an eager step does.  Tokens
are exact either way (rejection sampling, and greedy rows equal the verifier's greedy
decoding); sampled tokens differ from the default loop's with the same seed, because
finished rows keep drawing.
"""
from __future__ import annotations

import inspect

import torch

import specfair_kernels as sk

from .decoding import (
    Clock,
    GenerationOutput,
    compact_slots,
    draft_chain,
    finish_output,
    kept_until_eos,
    read_pending,
    static_cache_len,
)
from .fastpath import count_steps_without_drafts, takes_4d_mask

__all__ = ["FixedStep", "SlotCache", "check_fixed_step", "fixed_cache_len"]


def fixed_cache_len(prompt_width: int, max_new_tokens: int, num_draft: int) -> int:
    """Slots per row of a fixed step's caches: the prompt, then at most two columns per new
    token (a step keeps at least one token per row and the drafter's masked first slot),
    and one step's K+1 slots of room; rounded by `specfair.decoding.static_cache_len`.  A batch
    whose rows leave holes compacts when a step would not fit."""
    need = prompt_width + 2 * (max_new_tokens + num_draft + 1)
    return static_cache_len(need)


def check_fixed_step(drafter, verifier, num_draft, cache: str, ngram, pad_verify) -> None:
    """What ``fixed_step=True`` needs, checked before any work (ValueError naming the argument)."""
    if pad_verify:
        raise ValueError("pad_verify=True is not built for fixed_step=True (its verifier forward has width K+1)")
    if cache != "static":
        raise ValueError("fixed_step=True needs cache='static' (the step writes fixed cache buffers in place)")
    if num_draft == "auto":
        raise ValueError("fixed_step=True needs an int num_draft (every row drafts K each step), got 'auto'")
    if ngram is not None or drafter is None:
        raise ValueError("fixed_step=True needs a drafter model (prompt-lookup drafts have data-dependent length)")
    for name, model in (("drafter", drafter), ("verifier", verifier)):
        if not takes_4d_mask(model):
            raise ValueError(f"fixed_step=True needs a {name} that reads a ready-made 4-D mask (a Llama, Qwen2 "
                             f"or Qwen3 model with SDPA attention), got model_type="
                             f"{getattr(model.config, 'model_type', None)!r}")


class SlotCache:
    """One model's static KV cache for `FixedStep`: a ``StaticCache`` of ``static_len``
    slots, a slot mask [B, S] (True = the slot holds a valid token) and per-row valid-token
    counts (the next position id), every one updated in place.  The model writes at its
    layers' write pointer; queries see the slots up to their own (causal) that the mask
    keeps, so stale slots past the pointer are never read."""

    def __init__(self, model, vocab_size: int, batch: int, static_len: int, device):
        from transformers import StaticCache

        self.model, self.V, self.S = model, vocab_size, static_len
        self.cache = StaticCache(config=model.config, max_cache_len=static_len)
        self.mask = torch.zeros(batch, static_len, dtype=torch.bool, device=device)
        self.pos = torch.zeros(batch, dtype=torch.int64, device=device)
        self.slots = torch.arange(static_len, device=device)
        self.keep_kw = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._zero = torch.zeros((), dtype=torch.int64, device=device)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def read_later(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """Have the next `forward` read ``tokens`` [B, W'] (``valid`` bool) before its own, in
        the same model call (the prompt, with the first step, which is never captured)."""
        self.pending = (tokens, valid)

    def _layers(self):
        return [la for la in self.cache.layers if getattr(la, "is_initialized", False)]

    def pointer(self) -> torch.Tensor:
        """The next slot written (a 0-dim device tensor; the layers' own write pointer)."""
        layers = self._layers()
        return layers[0].cumulative_length if layers else self._zero

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, keep: int | None) -> torch.Tensor:
        """Append ``tokens`` [B, W] (``valid`` bool [B, W]) at the write pointer; the logits
        of the last ``keep`` positions (all if None), sliced to the shared vocabulary."""
        if self.pending is not None:
            tokens, valid, keep = read_pending(self.pending, tokens, valid, keep)
            self.pending = None
        W = tokens.shape[1]
        cols = self.pointer() + self.slots[:W]
        self.mask.index_copy_(1, cols, valid)
        pos_ids = self.pos[:, None] + (valid.cumsum(1) - 1).clamp(min=0)
        self.pos.add_(valid.sum(1))
        attn = self.mask[:, None, None, :] & (self.slots[None, :] <= cols[:, None])[None, None]
        kwargs = {"logits_to_keep": keep} if (self.keep_kw and keep is not None) else {}
        out = self.model(input_ids=tokens, attention_mask=attn, position_ids=pos_ids, past_key_values=self.cache,
                         use_cache=True, **kwargs)
        logits = out.logits
        if keep is not None and logits.shape[1] != keep:
            logits = logits[:, -keep:]
        return logits[..., :self.V]

    def roll_back(self, keep: torch.Tensor, n: int) -> None:
        """Of the last ``n`` slots written, row b keeps the first ``keep[b]`` (device [B]);
        the slots no row kept are given back to the write pointer."""
        cols = self.pointer() - n + self.slots[:n]
        self.mask.index_copy_(1, cols, self.slots[None, :n] < keep[:, None])
        self.pos.sub_(n - keep)
        drop = n - keep.max()
        for layer in self._layers():
            layer.cumulative_length.sub_(drop)

    def compact(self) -> None:
        """Gather each row's valid slots to the front of the buffers (reads the device)."""
        L = int(self.pointer())
        new = compact_slots(self._layers(), self.mask[:, :L], in_place=True)
        self.mask.zero_()
        self.mask[:, :new.shape[1]] = new


class FixedStep:
    """The fixed-shape decode loop of one generator call (see the module docstring).

    ``process`` maps raw logits to processed ones (top-k/top-p, `process_logits`); the other
    arguments are the generator's.  ``capture``: run the steps after the first as replays
    of one captured CUDA graph (a CUDA device)."""

    def __init__(self, drafter, verifier, vocab_size: int, num_draft: int, *, process, temperature: float,
                 draft: str, backend: str, method: str, capture: bool):
        self.drafter, self.verifier, self.V, self.K = drafter, verifier, vocab_size, num_draft
        self.process, self.temperature, self.draft = process, temperature, draft
        self.backend, self.method, self.capture = backend, method, capture

    # --- one call -----------------------------------------------------------------------------
    def run(self, ids: torch.Tensor, pmask: torch.Tensor, max_new_tokens: int, eos_t: torch.Tensor | None,
            task_t: torch.Tensor, stats: sk.TaskStats, gen: torch.Generator | None, seeds: torch.Tensor,
            pad_token_id: int, clock: Clock) -> GenerationOutput:
        dev, (B, P), K = ids.device, ids.shape, self.K
        S = fixed_cache_len(P, max_new_tokens, K)
        self.d = SlotCache(self.drafter, self.V, B, S, dev)
        self.v = SlotCache(self.verifier, self.V, B, S, dev)
        self.N, self.eos_t, self.task_t, self.stats, self.gen, self.seeds = (max_new_tokens, eos_t, task_t, stats,
                                                                              gen, seeds)
        i64 = {"dtype": torch.int64, "device": dev}
        self.out_buf = torch.full((B, max_new_tokens + 1), pad_token_id, **i64)   # the last column is discarded
        self.n_new, self.row_steps = torch.zeros(B, **i64), torch.zeros(B, **i64)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.bad = torch.zeros(B, dtype=torch.bool, device=dev)   # active rows whose logits were invalid
        self.after_done = torch.zeros(2, B, **i64)   # steps (valid, invalid) a finished row still took part in
        self.step_no = torch.zeros((), **i64)
        self.flags = torch.zeros(4, **i64)   # every row done, an active row invalid, the write pointers
        self.j = torch.arange(K + 1, device=dev)
        self.last = ids[:, -1].clone()
        self.d_prev = torch.zeros(B, **i64)   # the last step's K-th draft, unread by the drafter
        self.d_prev_ok = torch.zeros(B, dtype=torch.bool, device=dev)
        self.ones = torch.ones(B, K + 1, dtype=torch.bool, device=dev)
        if P > 1:   # both models read the prompt but its last token with the first step (eager, never captured)
            prompt, valid = ids[:, :-1].masked_fill(~pmask[:, :-1], 0), pmask[:, :-1]
            for m in (self.d, self.v):
                m.read_later(prompt, valid)
        clock.lap("prefill")
        graph, steps, pointers = None, 0, (P - 1, P - 1)   # the first step writes the prompt as well
        try:
            while True:
                self._make_room(pointers)
                if graph is not None:
                    graph.replay()
                elif self.capture and steps == 1:
                    graph = self._capture()
                    graph.replay()
                elif self.capture:   # the warm-up step, on a side stream as capture needs
                    side = torch.cuda.Stream(device=dev)
                    side.wait_stream(torch.cuda.current_stream(dev))
                    with torch.cuda.stream(side):
                        self._step()
                    torch.cuda.current_stream(dev).wait_stream(side)
                else:
                    self._step()
                steps += 1
                all_done, invalid, *pointers = self.flags.tolist()   # the one host read per step
                clock.lap("step")
                if invalid:
                    self._uncount()
                    bad = self.bad.nonzero()[:, 0].tolist()
                    raise RuntimeError(f"verify found NaN/inf or all -inf logits for rows {bad} at step {steps - 1}; "
                                       "the models produced invalid logits (try float32)")
                if all_done:
                    break
        finally:   # the graph and both caches are per call: free them now
            del graph
            self.d = self.v = None
        self._uncount()
        return finish_output(self.out_buf, self.n_new.cpu(), self.row_steps.cpu(), ids, pad_token_id, stats,
                             steps, clock.stop(), [K] * stats.num_tasks)

    def _make_room(self, pointers) -> None:
        """Compact a cache that the next step's K+1 slots would overflow (outside any graph);
        ``pointers``: the two caches' write pointers, read with the last step's flags."""
        for m, ptr in zip((self.d, self.v), pointers):
            if ptr + self.K + 1 > m.S:
                m.compact()
                if int(m.pointer()) + self.K + 1 > m.S:
                    raise RuntimeError(f"the fixed step's KV cache of {m.S} slots is full")

    def _uncount(self) -> None:
        """Take back out of ``stats`` what `verify` counted for rows already finished."""
        steps, invalid = self.after_done
        count_steps_without_drafts(self.stats, self.task_t, -steps, -invalid)
        self.after_done.zero_()

    def _capture(self) -> "torch.cuda.CUDAGraph":
        graph = torch.cuda.CUDAGraph()
        if self.gen is not None:
            graph.register_generator_state(self.gen)
        with torch.cuda.graph(graph):
            self._step()
        return graph

    # --- the step: no host read, every state tensor updated in place -----------------------------
    def _step(self) -> None:
        K = self.K
        # Draft: the drafter first reads the unread K-th draft (masked unless all K were accepted) and the last token.
        logits = self.d.forward(torch.stack([self.d_prev, self.last], 1),
                                torch.stack([self.d_prev_ok, self.ones[:, 0]], 1), keep=1)[:, -1]
        draft_logits, drafts = draft_chain(logits, K, lambda tok: self.d.forward(tok, self.ones[:, :1], keep=1)[:, -1],
                                           self.process, self.temperature, self.draft, self.gen)
        target = self.v.forward(torch.cat([self.last[:, None], drafts], 1), self.ones, keep=None)
        active = ~self.done
        nd = torch.where(active, torch.clamp(self.N - self.n_new - 1, 0, K), 0)
        out = sk.verify(self.process(target), draft_logits, drafts, num_draft=nd, temperature=self.temperature,
                        task_ids=self.task_t, stats=self.stats, seed=self.seeds, step=self.step_no,
                        backend=self.backend, method=self.method, check_values=False)
        self._commit(out, drafts, active)

    def _commit(self, out: sk.VerifyOutput, drafts: torch.Tensor, active: torch.Tensor) -> None:
        K, j = self.K, self.j
        acc, emit, toks = out.num_accepted.long(), out.num_emitted.long(), out.tokens
        keep, hit = kept_until_eos(toks, emit, self.eos_t)
        keep = torch.where(active, keep, 0)
        discard = self.out_buf.shape[1] - 1
        cols = torch.where(j[None, :] < keep[:, None], self.n_new[:, None] + j, discard)
        self.out_buf.scatter_(1, cols, toks)
        self.n_new.add_(keep)
        self.row_steps.add_(active.long())
        valid = emit > 0
        self.bad.copy_(active & ~valid)
        self.after_done.add_(torch.stack([~active & valid, ~active & ~valid]).long())
        # Per-row rollback: the verifier wrote K+1 slots and keeps a+1; the drafter's last K-1 are drafts 1..K-1.
        self.v.roll_back(acc + 1, K + 1)
        if K > 1:
            self.d.roll_back(torch.clamp(acc, max=K - 1), K - 1)
        self.last.copy_(toks.gather(1, (emit - 1).clamp(min=0)[:, None])[:, 0])
        self.d_prev.copy_(drafts[:, K - 1])
        self.d_prev_ok.copy_(acc == K)
        self.done.logical_or_(active & (hit | (self.n_new >= self.N)))
        self.step_no.add_(1)
        self.flags.copy_(torch.stack([self.done.all().long(), self.bad.any().long(),
                                      self.d.pointer(), self.v.pointer()]))
