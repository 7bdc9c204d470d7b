"""The per-call state of `SpeculativeGenerator.generate` (`DecodeState`): the rows still
decoding, what each model has cached and what the drafter has not read yet, the output
buffer, and `DecodeState.commit`, which writes a verified step's tokens, rolls both caches
back per row, drops finished rows and compacts the caches (see `specfair.generator` for the
rollback rules)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import specfair_kernels as sk

from .decoding import CachedModel, kept_until_eos
from .fastpath import count_steps_without_drafts


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
        keep, hit = kept_until_eos(toks, emit, self.eos_t)
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
        rows = slice(None) if len(self.rows) == len(self.n_new) else self.rows   # all active: a view, no gather
        self.out_buf[self.rows_dev, self.n_new[rows].to(self.ids.device)] = tok
        self.n_new[rows] += 1
        self.row_steps[rows] += 1
        if counted:
            self.counted[rows] += 1
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
        count_steps_without_drafts(self.stats, self.task_t, pending, invalid)
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
