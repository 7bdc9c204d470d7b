"""The pieces of a decode loop that the speculative generator and the verifier-only
baseline share: the output record, the section clock, one model's KV cache with a slot
mask, logit processing and sampling, prompt preparation, EOS/pad defaults and per-row seeds.

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

from ._util import is_int
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


# --- prompts, stopping, seeds ---------------------------------------------------------------

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
    K_task: list[int]
    out_buf: torch.Tensor
    eos_t: torch.Tensor | None
    drafter: CachedModel | None = None
    verifier: CachedModel | None = None
    step: int = 0
    start: torch.Tensor | None = None  # each row's first prompt column (device)

    def __post_init__(self):
        B = self.ids.shape[0]
        self.n_new = torch.zeros(B, dtype=torch.int64)       # host
        self.row_steps = torch.zeros(B, dtype=torch.int64)   # host
        self.rows = torch.arange(B)
        self.rows_dev = torch.arange(B, device=self.ids.device)
        self.task_host = self.task_t.cpu()
        self.last = self.ids[:, -1]
        self.d_pend, self.d_valid = self.last[:, None], None

    def models(self) -> list[CachedModel]:
        return [m for m in (self.drafter, self.verifier) if m is not None]

    def keep_rows(self, alive: torch.Tensor, alive_dev: torch.Tensor) -> None:
        """Drop the finished rows from the batch (host and device indices of the survivors)."""
        self.rows, self.rows_dev = self.rows[alive], self.rows_dev[alive_dev]
        for m in self.models():
            m.select_rows(alive_dev)
        self.last, self.d_pend = self.last[alive_dev], self.d_pend[alive_dev]
        self.d_valid = None if self.d_valid is None else self.d_valid[alive_dev]
