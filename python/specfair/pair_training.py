"""The optimisation loops of `specfair train-pair`: next-token cross-entropy (both models by
default) and distillation of the drafter to the verifier, plus the drafter's
initialisation from another model's weights.

*Distillation* (``drafter_objective="distill"``) minimises KL(p || q) per position, p the
verifier's distribution and q the drafter's, both at temperature 1, on windows drawn from
the drafter's mixture; the verifier runs without gradients on every batch.  That is the
divergence whose per-task value the audit relates to acceptance: alpha = sum min(p, q) = 1 -
TV(p, q), and TV <= sqrt(KL / 2) (Pinsker), so the drafter spends its capacity on agreeing
with the verifier rather than on the text's own next token.

*Initialisation* (``drafter_init``): ``"random"`` (the default), ``"verifier"`` (the
verifier's token embedding, its first ``drafter.layers`` decoder layers, final norm and
output head; the drafter must have the verifier's width and head shapes), or the path of a
model directory (a Llama of the drafter's width whose first layers are copied likewise,
e.g. a deeper drafter cut to fewer layers).  Copying is exact; training then starts there.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import specfair_kernels as sk

from .training import WindowSampler, decay_groups, lr_at

__all__ = ["DRAFTER_INITS", "DRAFTER_OBJECTIVES", "distill_loss", "init_from", "train_model"]

DRAFTER_OBJECTIVES = ("ce", "distill")
DRAFTER_INITS = ("random", "verifier")   # or a model directory


def init_from(model, source, name: str, error: type[Exception] = ValueError) -> None:
    """Copy ``source``'s token embedding, first ``len(model.model.layers)`` decoder layers,
    final norm and output head into ``model`` (in place, exactly).  ``name`` says where the
    source came from in the error raised (``error``) when a shape does not match or the
    source has fewer layers."""
    n = len(model.model.layers)
    if len(source.model.layers) < n:
        raise error(f"drafter_init {name!r} has {len(source.model.layers)} layers; the drafter needs {n}")
    pairs = [(model.model.embed_tokens, source.model.embed_tokens), (model.model.norm, source.model.norm),
             *zip(model.model.layers, source.model.layers[:n])]
    if not model.config.tie_word_embeddings:
        pairs.append((model.lm_head, source.lm_head))
    for dst, src in pairs:
        a, b = dst.state_dict(), src.state_dict()
        bad = [k for k in a if k not in b or a[k].shape != b[k].shape]
        if bad:
            k = bad[0]
            raise error(f"drafter_init {name!r}: {k} has shape "
                        f"{tuple(b[k].shape) if k in b else 'missing'}, the drafter needs {tuple(a[k].shape)} "
                        "(the drafter must have the source's hidden, heads, kv_heads and intermediate sizes)")
        dst.load_state_dict({k: b[k] for k in a})


def distill_loss(drafter_logits: torch.Tensor, verifier_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p || q), p = softmax(verifier_logits), q =
    softmax(drafter_logits), over the drafter's vocabulary, by the package's fused
    `specfair_kernels.token_divergence` (its gradient computed in the forward pass) (the verifier's extra rows, if
    any, are dropped: neither model samples them)."""
    V = drafter_logits.shape[-1]
    return sk.token_divergence(drafter_logits.reshape(-1, V), verifier_logits[..., :V].reshape(-1, V), kind="kl")


def train_model(name: str, model, sampler: WindowSampler, probs: torch.Tensor, cfg, steps: int, device,
                teacher=None) -> dict:
    """AdamW with linear warm-up and cosine decay (``cfg``'s lr, betas, weight decay, clip),
    on ``cfg.batch_size`` windows per step drawn by ``sampler`` from ``probs``.  The loss is
    next-token cross-entropy, or `distill_loss` to ``teacher``'s logits when one is given.
    Returns the training statistics of the pair report."""
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.AdamW(decay_groups(model.parameters(), cfg.weight_decay),
                            lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
    use_amp = device.type == "cuda" and cfg.bf16_autocast_on_cuda
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {name}", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, steps, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        batch, _ = sampler.sample(probs, cfg.batch_size)
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(input_ids=x, use_cache=False).logits
            logits = model(input_ids=x, use_cache=False).logits
        if teacher is not None:
            loss = distill_loss(logits, target)
        else:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", gnorm=f"{float(gnorm):.2f}")
    bar.close()
    model.eval()
    tail = losses[-max(1, min(50, len(losses) // 10)):]
    return {"steps": steps, "tokens_seen": steps * cfg.batch_size * cfg.context_length,
            "objective": "distill" if teacher is not None else "ce",
            "final_train_loss": sum(tail) / len(tail), "first_train_loss": losses[0],
            "train_seconds": time.perf_counter() - t0}
