"""Public functions: every argument is validated once here, so all backends reject the
same bad input with the same message, then the call is dispatched to one backend."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import autograd, backends
from .stats import DIVERGENCE_FIELDS, TaskStats

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_DTYPES = (torch.int32, torch.int64)
DIVERGENCE_KINDS = autograd.KINDS
REDUCTIONS = ("none", "mean", "sum", "per_task")
GREEDY_BELOW = 1e-5  # temperatures under this are treated as 0 (greedy)
VERIFY_METHODS = ("token", "block")


@dataclass
class VerifyOutput:
    """Result of `verify`.

    tokens : int64 [B, K+1]
        Accepted drafts, then the correction (after a rejection) or bonus token; -1 after.
    num_accepted : int32 [B]
    num_emitted : int32 [B]
        ``num_accepted + 1``; 0 for an invalid row (NaN/+inf or all -inf logits).
    alpha, kl, ce, entropy : fp32 [B, K] or None
        Per drafted position when ``return_divergence``; 0 at padded positions.
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    num_emitted: torch.Tensor
    alpha: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    ce: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


# --- validation helpers ------------------------------------------------------------------

def _tensor(name, x, dtypes, ndim, kind):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must be {kind} ({allowed}), got {str(x.dtype).replace('torch.', '')}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _same_device(device, **tensors):
    for name, x in tensors.items():
        if isinstance(x, torch.Tensor) and x.device != device:
            raise ValueError(f"{name} is on {x.device} but target_logits is on {device}; "
                             "all tensors must be on one device")


def _checking_values(device: torch.device) -> bool:
    # Value checks read the data (a host sync on a GPU); inside CUDA-graph capture they
    # are skipped and the kernels clamp indices, so a bad value cannot touch foreign memory.
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _per_row(name, value, B, device, dtype, kind):
    """A Python scalar or a [B] tensor -> a [B] tensor of `dtype` on `device`."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(B)
        if value.dim() != 1 or value.shape[0] != B:
            raise ValueError(f"{name} must be a scalar or have shape [B]=[{B}], got {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but target_logits is on {device}")
        if kind == "float":
            ok = value.is_floating_point()
        else:
            ok = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
        if not ok:
            raise TypeError(f"{name} must be a {kind} tensor, got {str(value.dtype).replace('torch.', '')}")
        return value.to(dtype).contiguous()
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int or a [B] integer tensor, got {type(value).__name__}")
    if kind == "int":
        if name == "seed" and 2**63 <= value < 2**64:
            value -= 2**64  # a 64-bit seed: same bits, as int64
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{name} must fit in int64 (a seed in [-2**63, 2**64)), got {value}")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"{name} must be a float or a [B] float tensor, got {type(value).__name__}")
    return torch.full((B,), value, dtype=dtype, device=device)


def verify(target_logits, draft_logits, draft_tokens, num_draft=None, temperature=1.0, task_ids=None,
           stats: TaskStats | None = None, seed=None, step=0, return_divergence: bool = False,
           backend: str = "auto", method: str = "token", check_values: bool = True) -> VerifyOutput:
    """Verify a batch of drafts with exact (lossless) speculative sampling.

    Draft x_j is accepted with probability min(1, p(x_j) / q(x_j)); at the first
    rejection a token is drawn from normalise(max(0, p - q)); if every valid draft is
    accepted a bonus token is drawn from the verifier's next position.  Greedy rows
    (temperature 0) accept while the draft equals argmax p, then emit argmax p.
    The emitted tokens are distributed exactly as sampling from the verifier alone.

    Parameters
    ----------
    target_logits : [B, K+1, V] float32 | bfloat16 | float16
        Verifier logits at the K drafted positions and the bonus position.
    draft_logits : [B, K, V] float32 | bfloat16 | float16, or None
        Logits the drafts were sampled from (with the same temperature); None for
        one-hot (deterministic) drafts, q(x_j) = 1.
    draft_tokens : [B, K] int32 | int64
        Drafted token ids in [0, V) at valid positions (anything, e.g. -1, after them).
    num_draft : [B] int, optional
        Valid drafts per row (ragged rows), each in [0, K]; default K for every row.
    temperature : float or [B] float
        Sampling temperature per call or per row, >= 0; 0 means greedy, and so does any
        value below 1e-5 (as in vLLM).  Applied to both logits.  Divergences of greedy
        rows are those of the untempered softmax.
    task_ids : [B] int, optional
        Task of each row in [0, stats.num_tasks); default 0.  Requires ``stats``.
    stats : TaskStats, optional
        Updated in place on the device (no host synchronisation on the GPU).
    seed : int or [B] int64, optional
        Per-request 64-bit seed (a Python int in [-2**63, 2**64)).  The same seed, step and
        logits give the same tokens in any batch slot, batch size and backend.  None draws seeds from torch's generator.
    step : int or [B] int
        Index of this verification call within each request, so that successive calls
        with one seed draw fresh randomness.
    return_divergence : bool
        Also return alpha = sum min(p, q), KL(p||q), CE(p, q) and H(p) per drafted
        position (all valid positions, not only those before the first rejection).
    backend : {"auto", "triton", "cpp", "torch"}
        "auto" honours SPECFAIR_BACKEND, else Triton on CUDA and C++ on the CPU.
    method : {"token", "block"}
        "token" verifies draft by draft as above.  "block" is block verification (Sun et
        al., arXiv 2403.10444): the drafts are verified jointly, accepting the longest
        prefix allowed by a backward chain of coin flips on the carried weight
        w_i = min(1, w_{i-1} p(x_{i-1}) / q(x_{i-1})), then drawing from
        normalise(max(0, w p - q)); equally exact, never fewer accepted tokens in
        expectation.  Greedy rows are the argmax chain in both.  The random words are
        token mode's, so the two differ only through the rule; divergences are the same.
        See `reference.verify_ref` for the exact rule.  Every backend implements both.
    check_values : bool
        Check the values of ``num_draft``, ``draft_tokens``, ``temperature``, ``step`` and
        ``task_ids`` (default).  The check reads them back (a host synchronisation on a GPU),
        so a caller that guarantees them (a decode step that never reads the device,
        `specfair.step_graph`) may pass False; types and shapes are always checked, and
        during CUDA-graph capture the values never are.  The kernels clamp indices, so a bad
        value gives wrong tokens, never a write to foreign memory.

    Returns
    -------
    VerifyOutput
        ``tokens [B, K+1]`` int64 (-1 padded), ``num_accepted``/``num_emitted`` [B]
        int32, and ``alpha``/``kl``/``ce``/``entropy`` [B, K] fp32 when asked.

    Notes
    -----
    A row whose used logits contain NaN or +inf, or whose distribution is all -inf,
    emits nothing: ``num_emitted`` is 0, its tokens are -1 and its divergences NaN;
    it is counted under ``invalid_rows`` in ``stats``.  -inf logits are ordinary
    masked entries.

    Examples
    --------
    >>> import torch, specfair_kernels as sk
    >>> target = torch.randn(2, 4, 32); draft = torch.randn(2, 3, 32)
    >>> tokens = torch.randint(0, 32, (2, 3))
    >>> out = sk.verify(target, draft, tokens, seed=1)
    >>> out.tokens.shape, bool((out.num_emitted == out.num_accepted + 1).all())
    (torch.Size([2, 4]), True)
    """
    _tensor("target_logits", target_logits, FLOAT_DTYPES, 3, "a float tensor")
    B, K1, V = target_logits.shape
    device = target_logits.device
    if K1 < 1:
        raise ValueError("target_logits must have K+1 >= 1 positions along dim 1, got 0")
    if B < 1 or V < 1:
        raise ValueError(f"target_logits must have B >= 1 rows and V >= 1 entries, got shape {(B, K1, V)}")
    K = K1 - 1
    _tensor("draft_tokens", draft_tokens, INT_DTYPES, 2, "an integer tensor")
    if tuple(draft_tokens.shape) != (B, K):
        raise ValueError(f"draft_tokens must have shape [B, K]=[{B}, {K}] (target_logits has K+1={K1} "
                         f"positions), got {tuple(draft_tokens.shape)}")
    if draft_logits is not None:
        _tensor("draft_logits", draft_logits, FLOAT_DTYPES, 3, "a float tensor")
        if draft_logits.shape[0] != B:
            raise ValueError(f"draft_logits has batch {draft_logits.shape[0]} but target_logits has {B}")
        if draft_logits.shape[1] != K:
            raise ValueError(f"draft_logits must have K={K} positions (one fewer than target_logits' "
                             f"K+1={K1}), got {draft_logits.shape[1]}")
        if draft_logits.shape[2] != V:
            raise ValueError(f"draft_logits has vocabulary size {draft_logits.shape[2]} but "
                             f"target_logits has {V}")
    _same_device(device, draft_logits=draft_logits, draft_tokens=draft_tokens)
    if num_draft is None:
        num_draft_t = torch.full((B,), K, dtype=torch.int64, device=device)
    else:
        num_draft_t = _per_row("num_draft", num_draft, B, device, torch.int64, "int")
    temp = _per_row("temperature", temperature, B, device, torch.float32, "float")
    # As in vLLM, temperatures below 1e-5 are greedy: logits / tau would overflow to inf.
    temp = torch.where(temp.abs() < GREEDY_BELOW, torch.zeros_like(temp), temp)
    step_t = _per_row("step", step, B, device, torch.int64, "int")
    if seed is None:
        seed_t = torch.randint(0, 2**62, (B,), dtype=torch.int64, device=device)
    else:
        seed_t = _per_row("seed", seed, B, device, torch.int64, "int")
    if not isinstance(method, str):
        raise TypeError(f"method must be a str ('token' or 'block'), got {type(method).__name__}")
    if method not in VERIFY_METHODS:
        raise ValueError(f"method must be one of {VERIFY_METHODS}, got {method!r}")
    if not isinstance(return_divergence, bool):
        raise TypeError(f"return_divergence must be a bool, got {type(return_divergence).__name__}")
    if stats is not None:
        if not isinstance(stats, TaskStats):
            raise TypeError(f"stats must be a specfair_kernels.TaskStats, got {type(stats).__name__}")
        if stats.device != device:
            raise ValueError(f"stats is on {stats.device} but target_logits is on {device}")
        if K > stats.max_draft:
            raise ValueError(f"stats was made with max_draft={stats.max_draft} but K={K} drafts were given")
        if task_ids is None:
            task_t = torch.zeros(B, dtype=torch.int64, device=device)
        else:
            task_t = _per_row("task_ids", task_ids, B, device, torch.int64, "int")
    elif task_ids is not None:
        raise ValueError("task_ids was given without stats; pass stats=TaskStats(...) to accumulate per task")
    else:
        task_t = None

    if not isinstance(check_values, bool):
        raise TypeError(f"check_values must be a bool, got {type(check_values).__name__}")
    if check_values and _checking_values(device):
        # All value checks reduce on the device and come back in one transfer (one sync).
        pos = torch.arange(K, device=device)
        used = pos[None, :] < num_draft_t[:, None]
        checks = [
            ((num_draft_t < 0) | (num_draft_t > K)).any(),
            (used & ((draft_tokens < 0) | (draft_tokens >= V))).any(),
            (~torch.isfinite(temp) | (temp < 0)).any(),
            (step_t < 0).any(),
            ((task_t < 0) | (task_t >= stats.num_tasks)).any() if task_t is not None
            else torch.zeros((), dtype=torch.bool, device=device),
        ]
        failed = torch.stack(checks).tolist()
        messages = [f"num_draft values must lie in [0, K]=[0, {K}]",
                    f"draft_tokens must lie in [0, V)=[0, {V}) at valid positions (j < num_draft)",
                    "temperature must be finite and >= 0 (0 means greedy)",
                    "step must be >= 0",
                    f"task_ids must lie in [0, T)=[0, {stats.num_tasks if stats is not None else 0})"]
        for bad, msg in zip(failed, messages):
            if bad:
                raise ValueError(msg)

    name = backends.select("verify", backend, device)
    need_div = return_divergence or stats is not None
    args = (target_logits.contiguous(), None if draft_logits is None else draft_logits.contiguous(),
            draft_tokens.to(torch.int64).contiguous(), num_draft_t, temp, seed_t, step_t)
    if name == "triton":
        from .ops import verify as ops_verify

        tokens, n_acc, n_emit, div = ops_verify.launch(*args, need_div, task_ids=task_t, stats=stats, method=method)
    else:
        if name == "cpp":
            tokens, n_acc, n_emit, div = backends.cpp_extension().verify(*args, need_div, method == "block")
            if div is not None:
                div = dict(zip(DIVERGENCE_FIELDS, div))
        else:
            from . import reference

            tokens, n_acc, n_emit, div = reference.verify_ref(*args, need_div, method=method)
        if stats is not None:
            sums = torch.stack([div[k].sum(1) for k in DIVERGENCE_FIELDS], 1)
            stats.accumulate(task_t, num_draft_t, n_acc, n_emit > 0, sums)
    out = VerifyOutput(tokens, n_acc, n_emit)
    if return_divergence:
        for field in DIVERGENCE_FIELDS:
            setattr(out, field, div[field])
    return out


def token_divergence(draft_logits, target_logits, kind: str = "ce", temperature: float = 1.0, task_ids=None,
                     num_tasks: int | None = None, reduction: str = "mean", mask=None,
                     backend: str = "auto") -> torch.Tensor:
    """Divergence between the verifier's and the drafter's next-token distributions, per token.

    Differentiable with respect to ``draft_logits`` (the target side is a constant).
    No full-vocabulary fp32 probabilities are materialised for both models, and the
    gradient is computed in the forward pass, so backward needs no saved activations
    beyond a tensor the size of the gradient itself.

    Parameters
    ----------
    draft_logits : [..., V] float32 | bfloat16 | float16
        Drafter logits (q = softmax(draft_logits / temperature)).
    target_logits : [..., V] float32 | bfloat16 | float16
        Verifier logits (p = softmax(target_logits / temperature)), same shape.
    kind : {"ce", "kl", "tv", "alpha", "neg_log_alpha"}
        CE(p, q) = -sum p log q; KL(p||q); TV = 1/2 sum |p - q|; alpha = sum min(p, q) = 1 - TV;
        neg_log_alpha = -log alpha (an LK loss, arXiv 2602.23881; +inf where alpha = 0, with a
        zero gradient there).
    temperature : float
        > 0, applied to both logits.
    task_ids : [...] int, optional
        Task of each token, in [0, num_tasks); required for ``reduction="per_task"``.
    num_tasks : int, optional
        T, required with ``reduction="per_task"``.
    reduction : {"none", "mean", "sum", "per_task"}
        "none" returns [...] (0 where masked); "mean" averages over unmasked tokens (0 if
        none); "per_task" returns [T] per-task means over unmasked tokens (0 for a task
        with none).
    mask : [...] bool, optional
        Tokens to include (True) or ignore (False, zero gradient).
    backend : {"auto", "triton", "cpp", "torch"}

    Returns
    -------
    torch.Tensor
        fp32 values; shape by ``reduction``.

    Notes
    -----
    CE and KL are +inf where p > 0 and q = 0 (a -inf draft logit under a finite target
    logit); their gradient (q - p) / T stays finite.  A row holding NaN or +inf, or all
    -inf, gives a NaN value and gradient unless masked; masked rows get exactly zero
    gradient.  "mean" and "sum" are inf if any unmasked row is.  Backward scales the
    gradient saved by the forward pass in place, so the result can be backpropagated
    once (a second backward through the same graph raises).

    Examples
    --------
    >>> import torch, specfair_kernels as sk
    >>> draft = torch.randn(6, 50, requires_grad=True); target = torch.randn(6, 50)
    >>> loss = sk.token_divergence(draft, target, kind="kl")
    >>> loss.backward(); draft.grad.shape
    torch.Size([6, 50])
    """
    _tensor_nd("draft_logits", draft_logits)
    _tensor_nd("target_logits", target_logits)
    if target_logits.shape != draft_logits.shape:
        raise ValueError(f"target_logits has shape {tuple(target_logits.shape)} but draft_logits has "
                         f"{tuple(draft_logits.shape)}; they must match (vocabulary sizes included)")
    device = draft_logits.device
    if target_logits.device != device:
        raise ValueError(f"target_logits is on {target_logits.device} but draft_logits is on {device}")
    if not isinstance(kind, str) or kind not in DIVERGENCE_KINDS:
        raise ValueError(f"kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (temperature > 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    lead = tuple(draft_logits.shape[:-1])
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor, got {got}")
        if tuple(mask.shape) != lead:
            raise ValueError(f"mask must have shape {lead} (the logits without V), got {tuple(mask.shape)}")
        if mask.device != device:
            raise ValueError(f"mask is on {mask.device} but draft_logits is on {device}")
    if reduction == "per_task":
        if task_ids is None or num_tasks is None:
            raise ValueError('reduction="per_task" needs task_ids and num_tasks')
    if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1):
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    if task_ids is not None:
        if not isinstance(task_ids, torch.Tensor) or task_ids.dtype not in INT_DTYPES:
            raise TypeError("task_ids must be an int32 or int64 tensor")
        if tuple(task_ids.shape) != lead:
            raise ValueError(f"task_ids must have shape {lead} (the logits without V), got {tuple(task_ids.shape)}")
        if task_ids.device != device:
            raise ValueError(f"task_ids is on {task_ids.device} but draft_logits is on {device}")
        if num_tasks is None:
            raise ValueError("task_ids was given without num_tasks")
        if _checking_values(device) and task_ids.numel() and bool(((task_ids < 0) | (task_ids >= num_tasks)).any()):
            raise ValueError(f"task_ids must lie in [0, num_tasks)=[0, {num_tasks})")

    name = backends.select("token_divergence", backend, device)
    V = draft_logits.shape[-1]
    values = autograd.token_divergence_rows(
        name, draft_logits.reshape(-1, V), target_logits.reshape(-1, V), kind, float(temperature))
    keep = None if mask is None else mask.reshape(-1)
    if keep is not None:
        values = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=device))
    if reduction == "none":
        return values.reshape(lead)
    if reduction == "sum":
        return values.sum()
    count = values.new_tensor(values.numel()) if keep is None else keep.sum().to(values.dtype)
    if reduction == "mean":
        return values.sum() / count.clamp_min(1)
    t = task_ids.reshape(-1).long()
    w = torch.ones_like(values) if keep is None else keep.to(values.dtype)
    sums = torch.zeros(num_tasks, dtype=values.dtype, device=device).index_add(0, t, values)
    counts = torch.zeros(num_tasks, dtype=values.dtype, device=device).index_add(0, t, w)
    return sums / counts.clamp_min(1)


def _tensor_nd(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float tensor (float32, bfloat16, float16), got "
                        f"{str(x.dtype).replace('torch.', '')}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., V] with V >= 1, got {tuple(x.shape)}")
