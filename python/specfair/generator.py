"""Batched speculative generation for any pair of Hugging Face causal language models.

A gpt-fast-style decode loop around `specfair_kernels.verify`: per step the drafter proposes
K tokens per row, the verifier scores all K+1 positions in one forward, and the fused kernel
accepts a prefix of each row's drafts by exact rejection sampling while it adds acceptance
and divergence into per-task `TaskStats`.  Rows advance by different amounts every step.

KV caches (`specfair.decoding.CachedModel`: a Hugging Face cache plus a slot mask)
-------------------------------------------------------------------------------

* A step appends K+1 slots to the verifier cache (the last committed token and the K drafts).
  After verification a row that accepted ``a`` drafts keeps the first ``a + 1`` of them; the
  others are switched off in its mask: that is the per-row rollback, and it is exact.
* Slots rejected by *every* row are cropped off the end (so at batch 1 the cache never holds
  a hole), finished rows are dropped from the batch, and when more than
  ``compact_threshold`` of the cache's columns are holes in the longest row, every row's
  valid slots are gathered right-aligned (``CachedModel.compact``), which is the per-row crop.
* The drafter reads the prompt with its first draft (a call that never drafts never runs
  it), then caches the drafts it read; after a step it keeps ``min(a, K-1)`` of them.  When
  a row accepted all K drafts, the K-th draft was never fed to the drafter, so the next step
  feeds it together with the new token (a 2-token first draft forward, padded by a masked
  slot for the other rows).

Randomness: drafts are sampled with a ``torch.Generator`` seeded by ``seed``; the verify
kernel gets one 64-bit seed per row drawn from the same generator and the step index, so the
same seed, inputs and batch give the same tokens.
"""
from __future__ import annotations

import math

import torch

import specfair_kernels as sk
from specfair_kernels.api import GREEDY_BELOW

from ._util import is_int
from .auto_draft import AcceptanceHistory, evidence_count, probe_policy, probes_now
from .costs import SMALL_WIDTHS, cached_costs, cheapest_widths, choose_num_draft, min_break_even
from .decode_state import DecodeState
from .decoding import (
    CachedModel,
    Clock,
    GenerationOutput,
    draft_chain,
    finish_output,
    process_logits,
    static_cache_len,
)
from .fastpath import check_compile_options, greedy_verify_without_drafts
from .inputs import (
    check_context,
    check_drafting,
    check_max_new_tokens,
    check_sampling,
    default_eos,
    default_pad,
    eos_list,
    prepare_prompts,
    prepare_tasks,
    row_seeds,
)
from .models import context_length, model_device, output_vocab_size
from .ngram import NgramConfig, ngram_drafts
from .step_graph import FixedStep, check_fixed_step

DEFAULT_MAX_DRAFT = 8        # K_max for num_draft="auto"

__all__ = ["SpeculativeGenerator", "DEFAULT_MAX_DRAFT"]

# --- the generator --------------------------------------------------------------------------

class SpeculativeGenerator:
    """Speculative decoding with a drafter and a verifier that share a tokenizer.

    Parameters
    ----------
    drafter, verifier : transformers causal LMs (``PreTrainedModel``) on one device.
        ``drafter`` is None exactly when ``ngram`` is given (no second model).
    num_draft : int >= 1 or "auto"
        Drafts per step K.  ``"auto"`` picks each task's K in ``1..max_draft`` every step to
        maximise S(alpha_t; K, c) from the task's running acceptance (`acceptance`, from the
        ``stats`` accumulator) and the cost ratio c; rows of one batch get their task's K through
        `verify`'s per-row ``num_draft``.  With measured costs (``cost_ratio=None``) a task
        for which no K beats the verifier alone gets K = 0 (plain decoding), except for one
        draft on the steps of `is_probe_step` (steps 8, 16, 32, 64, then every 64) that keeps
        its acceptance estimate current, unless its acceptance is confidently below every
        K's break-even (then once every 64 steps, counted across remembered calls;
        `specfair.auto_draft`).  Calls without ``stats`` remember each other's counts
        (``history``; `forget` clears it), so auto starts from what earlier calls measured.
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
        the batch size of the call (once per batch size, kept in ``costs``, and shared by
        every generator of the same two model objects through `specfair.costs.cached_costs`;
        round-robin timings of widths 1-5, the middle and K_max+1, the rest interpolated),
        and auto maximises the speed-up with that measured verification cost.
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
    draft : "sample" | "argmax"
        How the drafter proposes: sample from its processed distribution q (default), or take
        its argmax as engines (vLLM, SGLang) do; argmax drafts are one-hot q, verified with
        ``draft_logits=None``, so the output stays exactly the verifier's distribution and the
        acceptance is p(argmax q).
    ngram : NgramConfig, optional
        Draft by prompt lookup instead of a model (`specfair.ngram`): the tokens that followed
        the most recent earlier occurrence of each row's last n tokens; rows without a match
        draft nothing that step.  Needs ``drafter=None`` and an int ``num_draft``; the model
        cost ratio c defaults to 0 (no drafter forward).
    verify_method : "token" | "block"
        `specfair_kernels.verify`'s acceptance rule (token-by-token, or block verification).
    cache : "dynamic" | "static"
        KV caches of both models (`specfair.decoding.CachedModel`): Hugging Face's
        ``DynamicCache`` (default), or a ``StaticCache`` of one fixed length per call (the
        longest prompt + ``max_new_tokens`` + K_max + 2, rounded up to a multiple of 64),
        written in place, so the decode forwards keep one shape.  Same tokens either way.
    compile : bool or str
        With ``cache="static"``: run both models through ``torch.compile`` (once per model
        object and backend; the first call of each width and batch size compiles, which takes
        minutes on a CPU).  True is the "inductor" backend, a str names another
        (``"aot_eager"``: traced, not code-generated).  Default False (eager).
    cuda_graph : bool
        With ``cache="static"`` on a CUDA device: compile both models' decode forwards with
        inductor in ``mode="reduce-overhead"``, which captures each forward width as a CUDA
        graph and replays it (gpt-fast's recipe; `specfair.fastpath`).  `verify` and the
        bookkeeping stay eager.  With ``fixed_step=True`` instead: capture the whole
        draft+verify step as one CUDA graph and replay it every step.  Checked on every
        device: elsewhere it raises.  Default False.
    fixed_step : bool
        Run every step as one sequence of fixed shapes that never reads the device
        (`specfair.step_graph`): all rows at width K to the end of the call (finished rows
        draft nothing), static caches rolled back and cropped on the device, one small read
        per step to stop.  Needs ``cache="static"``, an int ``num_draft``, a drafter model and
        Llama/Qwen2/Qwen3 SDPA models.  Eager on its own (on a CPU only slower than the
        default loop); with ``cuda_graph=True`` on a GPU, captured whole.  The same
        guarantees (exact sampling, greedy = the verifier's greedy); sampled tokens differ
        from the default loop's for one seed, since finished rows keep drawing.  Default False.
    pad_verify : bool, optional
        Run the verifier's forward over K+1 tokens at the cheapest *measured* width >= K+1
        instead (`verify_widths`; filler tokens whose slots are dropped at once, so the
        logits and the cache are those of the K+1 tokens), where that is >= 5% cheaper: on
        a CPU, MKL's fp32 kernels can take longer over 3 rows than over 4.  Needs the
        measured costs (`measure_costs`, once per pair and batch size, before the first
        step).  Default None: on for ``num_draft="auto"`` with measured costs (whose model
        then uses the padded cost), off otherwise.

    Examples
    --------
    >>> from specfair.models import load_pair
    >>> from specfair.generator import SpeculativeGenerator
    >>> drafter, verifier, tok = load_pair(device="cpu")   # the shipped pair
    >>> gen = SpeculativeGenerator(drafter, verifier, num_draft=3, temperature=0)
    >>> out = gen.generate(tok(["The "], return_tensors="pt").input_ids, max_new_tokens=8, seed=0)
    >>> out.sequences.shape[0], int(out.num_new_tokens[0]) <= 8
    (1, True)
    """

    def __init__(self, drafter, verifier, num_draft=4, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, backend: str = "auto", max_draft: int = DEFAULT_MAX_DRAFT,
                 cost_ratio: float | None = None, vocab_size: int | None = None, pad_token_id: int | None = None,
                 compact_threshold: float | None = 0.5, profile: bool = True, draft: str = "sample",
                 ngram: NgramConfig | None = None, verify_method: str = "token", cache: str = "dynamic",
                 compile: bool = False, cuda_graph: bool = False, pad_verify: bool | None = None,
                 fixed_step: bool = False):
        check_drafting(drafter, num_draft, max_draft, draft, ngram, verify_method, cache, pad_verify)
        if not isinstance(fixed_step, bool):
            raise TypeError(f"fixed_step must be a bool, got {type(fixed_step).__name__}")
        if fixed_step:
            check_fixed_step(drafter, verifier, num_draft, cache, ngram, pad_verify)
        self.cache_kind = cache
        if ngram is not None:
            drafter = verifier  # no second model: the checks and vocabulary below read the verifier only
        for name, m in (("drafter", drafter), ("verifier", verifier)):
            if not isinstance(m, torch.nn.Module) or not hasattr(m, "config"):
                raise TypeError(f"{name} must be a transformers causal LM (a torch.nn.Module with a config), "
                                f"got {type(m).__name__}")
        d_dev, v_dev = model_device(drafter), model_device(verifier)
        if d_dev != v_dev:
            raise ValueError(f"drafter is on {d_dev} but verifier is on {v_dev}; put both models on one device")
        self.compile, self.compile_mode = check_compile_options(cache, compile, cuda_graph, v_dev, fixed_step)
        check_sampling(temperature, top_k, top_p)
        if cost_ratio is not None and (isinstance(cost_ratio, bool) or not isinstance(cost_ratio, (int, float))
                                       or not (cost_ratio >= 0 and math.isfinite(cost_ratio))):
            raise ValueError(f"cost_ratio must be None or a finite number >= 0, got {cost_ratio!r}")
        if compact_threshold is not None and not (isinstance(compact_threshold, (int, float))
                                                  and 0 <= compact_threshold <= 1):
            raise ValueError(f"compact_threshold must be None or in [0, 1], got {compact_threshold!r}")
        sizes = (output_vocab_size(drafter), output_vocab_size(verifier))
        if vocab_size is None:
            vocab_size = min(sizes)
        elif not is_int(vocab_size) or not 1 <= vocab_size <= min(sizes):
            raise ValueError(f"vocab_size must be an int in [1, {min(sizes)}] (the models' output sizes are "
                             f"drafter {sizes[0]}, verifier {sizes[1]}), got {vocab_size!r}")
        self.drafter, self.verifier = (None if ngram is not None else drafter), verifier
        self.draft, self.ngram, self.verify_method = draft, ngram, verify_method
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
        if ngram is not None and cost_ratio is None:
            cost_ratio = 0.0  # no drafter model: the lookup's time shows in the measured speed-up only
        self._cost_ratio = None if cost_ratio is None else float(cost_ratio)
        self.pad_verify = (num_draft == "auto" and cost_ratio is None) if pad_verify is None else pad_verify
        self._widths: dict[int, tuple[list[int], list[float]]] = {}
        self._break_even: dict[int, float] = {}   # per batch size: `min_break_even` of the measured costs
        self.history = AcceptanceHistory()   # counts of earlier calls made without `stats` (auto reads them)
        self.default_eos = default_eos(verifier)
        self.pad_token_id = pad_token_id if pad_token_id is not None else default_pad(verifier)
        self.context_limits = {"drafter": context_length(drafter), "verifier": context_length(verifier)}
        self.fixed_step = (FixedStep(drafter, verifier, vocab_size, num_draft, process=self._process,
                                     temperature=self.temperature, draft=draft, backend=backend,
                                     method=verify_method, capture=cuda_graph) if fixed_step else None)

    # ------------------------------------------------------------------------------------
    def measured_costs(self, batch_size: int = 1) -> dict:
        """`measure_costs` at this batch size: measured on first use by any generator of the
        same two model objects (`specfair.costs.cached_costs`), then kept."""
        if batch_size not in self.costs:
            # a padding fixed K needs the widths up to SMALL_WIDTHS timed, where the matrix kernels switch
            wider = self.pad_verify and self.num_draft != "auto"
            k_max = max(self.max_draft, SMALL_WIDTHS - 1) if wider else self.max_draft
            self.costs[batch_size] = cached_costs(self.drafter, self.verifier, batch_size, k_max)
        return self.costs[batch_size]

    def verify_widths(self, batch_size: int = 1) -> tuple[list[int], list[float]]:
        """(width, r at that width) per K in 0..K_max: the verifier forward K drafts run at.
        K+1 and the measured r_K, or with ``pad_verify`` the cheapest measured width >= K+1
        (`specfair.costs.cheapest_widths`; measured once per batch size)."""
        if batch_size not in self._widths:
            costs = self.measured_costs(batch_size)
            r = costs["verify_cost"]
            self._widths[batch_size] = (cheapest_widths(r, costs.get("measured_widths", range(1, len(r) + 1)))
                                        if self.pad_verify else (list(range(1, len(r) + 1)), list(r)))
        return self._widths[batch_size]

    def cost_ratio(self, batch_size: int = 1) -> float:
        """c used by ``num_draft="auto"``: the given one, or measured once per batch size."""
        if self._cost_ratio is not None:
            return self._cost_ratio
        return self.measured_costs(batch_size)["cost_ratio"]

    def verify_cost(self, batch_size: int = 1) -> list[float] | None:
        """r_K = verifier time over K+1 tokens / over 1 token, at the width K drafts run at
        (`verify_widths`); None when c was given."""
        if self._cost_ratio is not None:
            return None
        return self.verify_widths(batch_size)[1]

    def acceptance(self, stats: sk.TaskStats) -> torch.Tensor:
        """Per task, the acceptance that sets this generator's speed (NaN: no drafts yet).

        Drafts sampled from the drafter at a temperature > 0 and verified token by token are
        accepted with probability alpha = sum min(p, q): the expected acceptance
        (`TaskStats.expected_acceptance`, the lower-variance estimate).  Every other drafting
        accepts something else: greedy rows accept while the draft is argmax p (the expected
        acceptance of a greedy row is that of the untempered softmax, not this), argmax and
        prompt-lookup drafts are accepted with p(draft), block verification accepts more than
        token by token.  For those the realised rate, accepted / tested drafts
        (`TaskStats.acceptance_rate`, the geometric model's maximum-likelihood estimate)."""
        return stats.expected_acceptance() if self._expected() else stats.acceptance_rate()

    def _expected(self) -> bool:
        return not self.greedy and self.draft == "sample" and self.ngram is None and self.verify_method == "token"

    def forget(self) -> None:
        """Clear the acceptance this generator remembers from earlier calls (``history``)."""
        self.history.clear()

    def _plan(self, stats: sk.TaskStats, batch_size: int, remember: bool) -> tuple[list[int], list[str]]:
        """Each task's K (the given one, or auto's choice from the acceptance so far, with the
        remembered calls when ``remember``) and when a task at K = 0 probes
        (`specfair.auto_draft.probe_policy`)."""
        T = stats.num_tasks
        if self.num_draft != "auto":
            return [self.num_draft] * T, ["never"] * T
        seen = self.history.combined(stats) if remember else stats
        alpha = self.acceptance(seen)
        c, r = self.cost_ratio(batch_size), self.verify_cost(batch_size)
        if r is None:   # a given c (PAPER.md's model): some K >= 1 always
            return choose_num_draft(alpha, c, self.max_draft), ["never"] * T
        ks = choose_num_draft(alpha, c, self.max_draft, r, min_draft=0)   # measured costs: K = 0 may win
        if batch_size not in self._break_even:   # the costs are fixed per batch size
            self._break_even[batch_size] = min_break_even(c, r, self.max_draft)
        return ks, probe_policy(alpha, evidence_count(seen, self._expected()), self._break_even[batch_size])

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
            have ``max_draft >=`` K (K_max for auto).  A new one is made when None, and auto
            then also reads the counts of this generator's earlier such calls (``history``).
            Steps without drafts at temperature 0 are added at the end of the call.
        seed : int, optional
            Same seed, inputs and batch -> same tokens.  None uses torch's global RNG.

        Returns
        -------
        GenerationOutput
        """
        dev = self.device
        check_max_new_tokens(max_new_tokens)
        eos = eos_list(eos_token_id, self.default_eos)
        ids, pmask = prepare_prompts(input_ids, attention_mask, self.pad_token_id, dev)
        B, P = ids.shape
        if bool((((ids < 0) | (ids >= self.vocab_size)) & pmask).any()):
            raise ValueError(f"input_ids must lie in [0, vocab_size)=[0, {self.vocab_size}) on prompt tokens")
        check_context(int(pmask.sum(1).max()), max_new_tokens, self.context_limits)
        remember = stats is None and self.num_draft == "auto"   # a new accumulator: auto reads its memory
        task_t, stats = prepare_tasks(task_ids, num_tasks, stats, B, self.device, self.max_draft)
        gen, seeds = row_seeds(seed, B, dev)

        if self.pad_verify:
            self.verify_widths(B)   # measured once per batch size, before the clock starts
        K_chosen, probes = self._plan(stats, B, remember)   # may measure c: before the clock starts
        st = DecodeState(ids=ids, task_t=task_t, seeds=seeds, gen=gen, max_new_tokens=max_new_tokens,
                          K_chosen=K_chosen, probes=probes, remember=remember, stats=stats,
                          out_buf=torch.full((B, max_new_tokens + self.max_draft + 1), self.pad_token_id,
                                             dtype=torch.int64, device=dev),
                          eos_t=torch.tensor(eos, dtype=torch.int64, device=dev) if eos else None)
        clock = Clock(dev, self.profile)
        clock.start()
        if max_new_tokens == 0:
            return self._output(st, stats, clock)
        if self.fixed_step is not None:
            return self.fixed_step.run(ids, pmask, max_new_tokens, st.eos_t, task_t, stats, gen, seeds,
                                       self.pad_token_id, clock)
        static_len = static_cache_len(P + max_new_tokens + self.max_draft + 2) if self.cache_kind == "static" else None
        kw = {"static_len": static_len, "compile_backend": self.compile, "compile_mode": self.compile_mode}
        st.drafter = None if self.drafter is None else CachedModel(self.drafter, self.vocab_size, **kw)
        st.verifier = CachedModel(self.verifier, self.vocab_size, **kw)
        st.start = (P - pmask.sum(1)).to(dev)
        ids_in = ids.masked_fill(~pmask, 0)  # padding never reaches an embedding lookup
        for m in st.models():
            m.reset(B, dev)
        if P > 1:  # the verifier reads the prompt with the first step's forward (no forward of its own)
            st.verifier.read_later(ids_in[:, :-1], pmask[:, :-1])
        # The drafter reads the prompt with its first draft: never, in a call where no row drafts.
        st.d_pend, st.d_valid = ids_in, pmask
        clock.lap("prefill")

        while True:
            # Per-row draft length: the task's K, and never past the token budget.
            if any(st.K_task):
                remaining = max_new_tokens - st.n_new[st.rows]
                nd_host = torch.minimum(torch.tensor(st.K_task)[st.task_host[st.rows]], remaining - 1).clamp(min=0)
            else:   # no task drafts this step (auto at K = 0)
                nd_host = torch.zeros(len(st.rows), dtype=torch.int64)
            if self.ngram is not None:
                draft_logits, drafts, nd_host = self._draft_ngram(st, nd_host)
                K = drafts.shape[1]
            else:
                K = int(nd_host.max())
                draft_logits, drafts = self._draft(st, K)
            clock.lap("draft")
            width = self.verify_widths(B)[0][K] if self.pad_verify else K + 1
            target = st.verifier.forward_padded(torch.cat([st.last[:, None], drafts], 1) if K else st.last[:, None],
                                                width)
            clock.lap("verify_forward")
            if K == 0 and self.greedy:   # the verifier alone this step: its argmax, no kernel call
                out = greedy_verify_without_drafts(target, None, None)   # counted at the end (add_uncounted)
            else:
                out = sk.verify(self._process(target), draft_logits, drafts, num_draft=nd_host.to(dev),
                                temperature=self.temperature, task_ids=task_t[st.rows_dev], stats=stats,
                                seed=seeds[st.rows_dev], step=st.step, backend=self.backend,
                                **self._verify_kwargs())
            clock.lap("kernel")
            done = st.commit(out, drafts, K, self.compact_threshold, counted=not (K == 0 and self.greedy))
            if not done and self.num_draft == "auto":
                if K > 0:   # drafts were scored: the acceptance moved (a step without drafts changes nothing)
                    st.K_chosen, st.probes = self._plan(stats, B, st.remember)
                due = probes_now(st.probes, st.step, self.history.steps if st.remember else 0)
                st.K_task = [1 if k == 0 and now else k for k, now in zip(st.K_chosen, due)]
            clock.lap("bookkeeping")
            if done:
                return self._output(st, stats, clock)

    def _output(self, st: DecodeState, stats, clock: Clock) -> GenerationOutput:
        st.add_uncounted()
        if st.remember:
            self.history.add(stats, st.step)
        return finish_output(st.out_buf, st.n_new, st.row_steps, st.ids, self.pad_token_id, stats, st.step,
                             clock.stop(), st.K_task)

    def _draft(self, st: DecodeState, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K drafted tokens per active row ([b, K]) and the processed logits they were sampled
        from ([b, K, V]); the drafter first reads the tokens it has not seen yet."""
        b = len(st.rows)
        if K == 0:
            return (torch.empty(b, 0, self.vocab_size, device=self.device),
                    torch.empty(b, 0, dtype=torch.int64, device=self.device))
        logits = st.drafter.forward(st.d_pend, st.d_valid, keep=1)[:, -1]
        return draft_chain(logits, K, lambda tok: st.drafter.forward(tok, None, keep=1)[:, -1], self._process,
                           self.temperature, self.draft, st.gen)

    def _draft_ngram(self, st: DecodeState, nd_host: torch.Tensor):
        """Prompt-lookup drafts (one-hot q, so ``draft_logits`` is None), their width K and each
        row's draft count: the lookup's, capped by the task's K and the token budget."""
        hist = torch.cat([st.ids, st.out_buf], 1)[st.rows_dev]
        end = st.ids.shape[1] + st.n_new[st.rows].to(self.device)
        drafts, count = ngram_drafts(hist, st.start[st.rows_dev], end, int(nd_host.max()), self.ngram)
        nd_host = torch.minimum(nd_host, count.cpu())
        K = int(nd_host.max())
        return None, drafts[:, :K], nd_host

    def _verify_kwargs(self) -> dict:
        """The acceptance rule, and no value checks: the draft counts, drafts, temperature,
        step and task ids are built here or checked by `generate` (one host sync less per
        step)."""
        return {"method": self.verify_method, "check_values": False}
