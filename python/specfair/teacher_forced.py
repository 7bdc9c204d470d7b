"""Teacher-forced per-task figures of a drafter/verifier pair on fixed text.

Both models read the same token windows (teacher forcing: every position is conditioned
on the real text, never on sampled tokens), and at every predicted position we compare
the verifier's next-token distribution p with the drafter's q at a temperature, through
:func:`specfair_kernels.token_divergence`:

* ``alpha``  = sum_x min(p, q), the expected acceptance of one draft (1 - TV);
* ``alpha_argmax`` = p(argmax q), the expected acceptance of one argmax draft (how vLLM and
  SGLang draft by default; from the same logits, one gather and one logsumexp);
* ``kl``     = KL(p || q);
* ``ce``     = CE(p, q) = H(p) + KL(p || q);
* ``entropy`` = H(p), computed as ``token_divergence(target, target, kind="ce")``;
* ``verifier_ppl`` / ``drafter_ppl`` = exp of each model's mean negative log-likelihood
  of the real next token (temperature 1, whatever ``temperature`` is).

Per task the figures are means over that task's predicted tokens (a token-weighted mean,
as in :class:`specfair_kernels.TaskStats`).  Per-window sums are kept too, so a caller
can bootstrap confidence intervals by resampling windows within each task
(:func:`specfair.spread.paired_bootstrap`).

Windows (:func:`token_windows`): each task's paragraphs become one stream
``<s> text </s> <s> text </s> ...`` (the tokenizer's bos/eos, no other special
tokens), cut into non-overlapping windows of ``context_length`` predicted tokens; the
last window of a task is padded and masked.  At most ``max_tokens_per_task`` predicted
tokens per task, taken from the start of the stream, so the windows are a deterministic
function of the text and the tokenizer.  ``specfair.train_pair`` evaluates the pairs it
trains with this module.

Example::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    import specfair
    from specfair import teacher_forced as tf
    ver = AutoModelForCausalLM.from_pretrained(specfair.default_pair_path("verifier"))
    dra = AutoModelForCausalLM.from_pretrained(specfair.default_pair_path("drafter"))
    tok = AutoTokenizer.from_pretrained(specfair.default_pair_path("verifier"))
    w = tf.token_windows(tok, {"fr": ["Le programme d'installation ..."]})
    res = tf.evaluate(ver, dra, w)
    res.alpha["fr"], res.summary()["alpha_variance"]
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import specfair_kernels as sk
from specfair_kernels.stats import speedup

from . import distributed
from .spread import summarize

__all__ = ["Windows", "TeacherForcedResult", "encode_texts", "token_streams", "windows_from_streams",
           "token_windows", "verifier_logits", "evaluate", "evaluate_sharded", "result_from_sums"]


@dataclass
class Windows:
    """Teacher-forcing windows.

    input_ids : int64 [N, T]   tokens the models read (pad id after a task's last token)
    targets   : int64 [N, T]   the next token at each position
    mask      : bool  [N, T]   True at predicted positions (False on padding)
    task      : int64 [N]      index into ``task_names``
    task_names : list[str]
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    task: torch.Tensor
    task_names: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def tokens_per_task(self) -> dict[str, int]:
        counts = torch.zeros(len(self.task_names), dtype=torch.long).index_add_(
            0, self.task, self.mask.sum(1).long())
        return {name: int(counts[i]) for i, name in enumerate(self.task_names)}


def encode_texts(tokenizer, texts_by_task: dict[str, list[str]]) -> dict[str, list[list[int]]]:
    """Per task, the token ids of each text without special tokens: ``tokenizer(text,
    add_special_tokens=False)``, fast, and never padded or truncated.

    A ``transformers`` tokenizer once called with ``padding=True`` keeps padding on in its
    backend, which would pad every text of a batch, so one copy of the fast tokenizer's
    backend with padding and truncation off does the encoding."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return {task: [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
            for task, texts in texts_by_task.items()}


def token_streams(tokenizer, texts_by_task: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Per task, one int64 stream ``<s> text </s> <s> text </s> ...`` (`encode_texts`)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("the tokenizer needs bos and eos tokens to delimit paragraphs")
    out = {}
    for task, encoded in encode_texts(tokenizer, texts_by_task).items():
        ids: list[int] = []
        for e in encoded:
            ids.append(bos)
            ids.extend(e)
            ids.append(eos)
        out[task] = torch.tensor(ids, dtype=torch.long)
    return out


def windows_from_streams(streams: dict[str, torch.Tensor], task_names: list[str] | None = None,
                         context_length: int = 256, max_tokens_per_task: int | None = 16384,
                         pad_id: int = 0) -> Windows:
    """Cut per-task token streams into non-overlapping windows (see the module docstring).

    A task whose stream has fewer than 2 tokens gets no window (and 0 tokens)."""
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError(f"context_length must be a positive int, got {context_length!r}")
    if max_tokens_per_task is not None and max_tokens_per_task < 1:
        raise ValueError(f"max_tokens_per_task must be >= 1 or None, got {max_tokens_per_task!r}")
    names = list(streams) if task_names is None else list(task_names)
    T = context_length
    xs, ys, ms, ts = [], [], [], []
    for ti, name in enumerate(names):
        s = streams[name]
        if max_tokens_per_task is not None:
            s = s[: max_tokens_per_task + 1]
        for start in range(0, max(len(s) - 1, 0), T):
            chunk = s[start: start + T + 1]
            n = len(chunk) - 1
            if n < 1:
                break
            x = torch.full((T,), pad_id, dtype=torch.long)
            y = torch.full((T,), pad_id, dtype=torch.long)
            m = torch.zeros(T, dtype=torch.bool)
            x[:n], y[:n], m[:n] = chunk[:-1], chunk[1:], True
            xs.append(x)
            ys.append(y)
            ms.append(m)
            ts.append(ti)
    if not xs:
        raise ValueError("no text to make windows from: every task's stream is empty")
    return Windows(torch.stack(xs), torch.stack(ys), torch.stack(ms), torch.tensor(ts, dtype=torch.long), names)


def token_windows(tokenizer, texts_by_task: dict[str, list[str]], context_length: int = 256,
                  max_tokens_per_task: int | None = 16384) -> Windows:
    """Tokenise each task's texts into ``<s> text </s>`` streams and cut them into windows.

    Parameters
    ----------
    tokenizer : a ``transformers`` fast tokenizer with bos and eos tokens
    texts_by_task : {task name: [paragraph, ...]}, in the order the tasks are indexed
    context_length : predicted tokens per window (T)
    max_tokens_per_task : at most this many predicted tokens per task (None: all)

    Returns
    -------
    Windows
        ``input_ids``/``targets`` int64 [N, T], ``mask`` bool [N, T], ``task`` int64 [N].
    """
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    streams = token_streams(tokenizer, texts_by_task)
    return windows_from_streams(streams, list(texts_by_task), context_length, max_tokens_per_task, int(pad))


FIGURES = ("alpha", "kl", "ce", "entropy")
SUMS = FIGURES + ("alpha_argmax", "verifier_nll", "drafter_nll")
"""The per-window sums `evaluate` keeps (and a sharded run gathers)."""


@dataclass
class TeacherForcedResult:
    """Per-task means and per-window sums of a teacher-forced evaluation.

    Per task (dicts keyed by task name; None for a task with no tokens): ``tokens``,
    ``alpha``, ``alpha_argmax``, ``kl``, ``ce``, ``entropy``, ``verifier_ppl``, ``drafter_ppl``.

    Per window (float64 / int64 CPU tensors [N]; ``.numpy()`` for numpy): ``window_task``,
    ``window_tokens``, ``alpha_sum``, ``kl_sum``, ``ce_sum``, ``entropy_sum``,
    ``verifier_nll_sum``, ``drafter_nll_sum``, ``alpha_argmax_sum``.
    """

    task_names: list[str]
    temperature: float
    tokens: dict[str, int]
    alpha: dict[str, float | None]
    kl: dict[str, float | None]
    ce: dict[str, float | None]
    entropy: dict[str, float | None]
    verifier_ppl: dict[str, float | None]
    drafter_ppl: dict[str, float | None]
    window_task: torch.Tensor
    window_tokens: torch.Tensor
    alpha_sum: torch.Tensor
    kl_sum: torch.Tensor
    ce_sum: torch.Tensor
    entropy_sum: torch.Tensor
    verifier_nll_sum: torch.Tensor
    drafter_nll_sum: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)
    # p(argmax q): the expected acceptance of one argmax (engine-style) draft
    alpha_argmax: dict[str, float | None] = field(default_factory=dict)
    alpha_argmax_sum: torch.Tensor | None = None

    def per_task(self, name: str) -> list[float | None]:
        """One figure as a list in ``task_names`` order."""
        d = getattr(self, name)
        return [d[t] for t in self.task_names]

    def summary(self, num_draft: int = 4, cost_ratio: float = 0.0) -> dict[str, float]:
        """Spread across tasks (tasks weighted uniformly; tasks without tokens left out).

        ``mean_alpha``; ``alpha_variance`` and ``alpha_max_min_ratio``; ``U_ce`` (the
        paper's unfairness: population variance of per-task CE) and ``U_kl``; the
        model-based speed-up S(alpha_t; num_draft, cost_ratio) per task gives
        ``mean_speedup``, ``speedup_variance``, ``speedup_max_min_ratio``.
        """
        return summarize({k: self.per_task(k) for k in ("alpha", "ce", "kl")}, num_draft, cost_ratio)

    def to_dict(self, num_draft: int = 4, cost_ratio: float = 0.0, windows: bool = False) -> dict[str, Any]:
        """JSON-serialisable; per-window arrays only when ``windows`` is True."""
        out: dict[str, Any] = {
            "task_names": list(self.task_names), "temperature": self.temperature,
            "per_task": {k: dict(getattr(self, k)) for k in
                         ("tokens", "alpha", "alpha_argmax", "kl", "ce", "entropy", "verifier_ppl",
                          "drafter_ppl")},
            "summary": self.summary(num_draft, cost_ratio),
            "num_draft": num_draft, "cost_ratio": cost_ratio,
        }
        out["per_task"]["speedup"] = {t: (None if a is None else float(speedup(a, num_draft, cost_ratio)))
                                      for t, a in self.alpha.items()}
        if windows:
            out["windows"] = {k: getattr(self, k).tolist() for k in (
                "window_task", "window_tokens", "alpha_sum", "kl_sum", "ce_sum", "entropy_sum",
                "verifier_nll_sum", "drafter_nll_sum")}
        return out


def p_of_draft_argmax(target_logits: torch.Tensor, draft_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p(argmax q) at every position ([..., V] -> [...]): the acceptance of a one-hot draft of
    the drafter's most likely token, as vLLM and SGLang draft (the argmax ignores T)."""
    x = target_logits.float() / temperature
    top = draft_logits.argmax(-1, keepdim=True)
    return (x.gather(-1, top)[..., 0] - torch.logsumexp(x, -1)).exp()


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    rng = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(rng, desc=desc, dynamic_ncols=True)
    return rng


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x, use_cache=False)
    # a model spread over devices (a device_map) may return its logits on its last layer's device
    return (out.logits if hasattr(out, "logits") else out).to(x.device).float()


def verifier_logits(verifier, windows: Windows, *, batch_size: int = 16, device="cpu",
                    dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """The verifier's logits on every window, [N, T, V] on the CPU, to pass to `evaluate`
    as ``target_logits`` when several drafters are compared with one verifier."""
    device = torch.device(device)
    chunks = []
    was_training = verifier.training
    verifier.eval()
    with torch.no_grad():
        for i in _batches(len(windows), batch_size, progress, "verifier logits"):
            chunks.append(_logits(verifier, windows.input_ids[i:i + batch_size].to(device)).to("cpu", dtype))
    verifier.train(was_training)
    return torch.cat(chunks)


def evaluate(verifier, drafter, windows: Windows, *, temperature: float = 1.0, batch_size: int = 16,
             device="cpu", progress: bool = False, backend: str = "auto",
             target_logits: torch.Tensor | None = None) -> TeacherForcedResult:
    """Teacher-forced per-task acceptance, divergences and perplexities.

    Parameters
    ----------
    verifier, drafter : causal LMs (``model(input_ids=...)`` returning ``.logits``
        [B, T, V]) over one vocabulary, already on ``device``.  Put in eval mode for the
        call and restored after.  ``verifier`` may be None when ``target_logits`` is given.
    windows : Windows, from :func:`token_windows`
    temperature : float > 0, applied to both models for alpha/kl/ce/entropy
    batch_size : windows per forward pass
    device : where the models are
    progress : show a tqdm bar
    backend : ``specfair_kernels`` backend for the divergences
    target_logits : [N, T, V] optional precomputed verifier logits (:func:`verifier_logits`)

    Returns
    -------
    TeacherForcedResult
    """
    device = torch.device(device)
    N = len(windows)
    if target_logits is not None and tuple(target_logits.shape[:2]) != tuple(windows.input_ids.shape):
        raise ValueError(f"target_logits must have shape [N, T, V] with [N, T]={tuple(windows.input_ids.shape)}, "
                         f"got {tuple(target_logits.shape)}")
    if target_logits is None and verifier is None:
        raise ValueError("give a verifier or its target_logits")
    sums = {k: torch.zeros(N, dtype=torch.float64) for k in SUMS}
    modes = [(m, m.training) for m in (verifier, drafter) if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad():
            for i in _batches(N, batch_size, progress, "teacher-forced"):
                sl = slice(i, i + batch_size)
                x = windows.input_ids[sl].to(device)
                y = windows.targets[sl].to(device)
                m = windows.mask[sl].to(device)
                lp = (_logits(verifier, x) if target_logits is None
                      else target_logits[sl].to(device, torch.float32))
                lq = _logits(drafter, x)
                V = lp.shape[-1]
                if lq.shape[-1] != V:
                    raise ValueError(f"the drafter's vocabulary ({lq.shape[-1]}) differs from the verifier's ({V})")
                for k in ("alpha", "kl", "ce"):
                    v = sk.token_divergence(lq, lp, kind=k, temperature=temperature, reduction="none",
                                            mask=m, backend=backend)
                    sums[k][sl] = v.double().sum(1).cpu()
                h = sk.token_divergence(lp, lp, kind="ce", temperature=temperature, reduction="none",
                                        mask=m, backend=backend)
                sums["entropy"][sl] = h.double().sum(1).cpu()
                pa = p_of_draft_argmax(lp, lq, temperature)
                sums["alpha_argmax"][sl] = torch.where(m, pa, torch.zeros_like(pa)).double().sum(1).cpu()
                yy = torch.where(m, y, torch.zeros_like(y))
                for name, lg in (("verifier_nll", lp), ("drafter_nll", lq)):
                    nll = F.cross_entropy(lg.reshape(-1, V), yy.reshape(-1), reduction="none").view_as(y)
                    sums[name][sl] = torch.where(m, nll, torch.zeros_like(nll)).double().sum(1).cpu()
    finally:
        for mod, was in modes:
            mod.train(was)
    return result_from_sums(windows, sums, temperature)


def result_from_sums(windows: Windows, sums: dict[str, torch.Tensor], temperature: float) -> TeacherForcedResult:
    """The per-task result of per-window sums (float64 [N] for each of ``FIGURES`` and
    ``verifier_nll`` / ``drafter_nll``) over ``windows``."""
    L = len(windows.task_names)
    wtok = windows.mask.sum(1).long()
    per = {k: torch.zeros(L, dtype=torch.float64).index_add_(0, windows.task, sums[k]) for k in sums}
    ntok = torch.zeros(L, dtype=torch.long).index_add_(0, windows.task, wtok)

    def means(key, f=lambda v: v):
        return {t: (f(float(per[key][i]) / int(ntok[i])) if int(ntok[i]) else None)
                for i, t in enumerate(windows.task_names)}

    return TeacherForcedResult(
        task_names=list(windows.task_names), temperature=float(temperature),
        tokens={t: int(ntok[i]) for i, t in enumerate(windows.task_names)},
        alpha=means("alpha"), alpha_argmax=means("alpha_argmax"), kl=means("kl"), ce=means("ce"),
        entropy=means("entropy"),
        verifier_ppl=means("verifier_nll", math.exp), drafter_ppl=means("drafter_nll", math.exp),
        window_task=windows.task.clone(), window_tokens=wtok,
        alpha_sum=sums["alpha"], kl_sum=sums["kl"], ce_sum=sums["ce"], entropy_sum=sums["entropy"],
        verifier_nll_sum=sums["verifier_nll"], drafter_nll_sum=sums["drafter_nll"],
        alpha_argmax_sum=sums["alpha_argmax"])



def evaluate_sharded(verifier, drafter, windows: Windows, *, batch_size: int = 16, temperature: float = 1.0,
                     **kw) -> TeacherForcedResult:
    """`evaluate` with the windows shared among the ranks of a ``torchrun`` job: each rank takes
    every world-th batch of ``batch_size`` windows (`distributed.shard_batches`), and the
    per-window sums are gathered on every rank.  The batches are those of one process, so the
    result is the same, bit for bit, as `evaluate` in one process with the same batch size.
    Without a process group it is `evaluate`."""
    rank, world = distributed.rank_and_world()
    if world == 1:
        return evaluate(verifier, drafter, windows, batch_size=batch_size, temperature=temperature, **kw)
    index = distributed.shard_batches(len(windows), batch_size, rank, world)
    if len(index):
        part = evaluate(verifier, drafter, Windows(windows.input_ids[index], windows.targets[index],
                                                   windows.mask[index], windows.task[index], windows.task_names),
                        batch_size=batch_size, temperature=temperature, **kw)
        mine = {k: getattr(part, f"{k}_sum") for k in SUMS}
    else:
        mine = {k: torch.zeros(0, dtype=torch.float64) for k in SUMS}
    return result_from_sums(windows, distributed.gather_rows(index, mine, len(windows)), temperature)
