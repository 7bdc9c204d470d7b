"""Benchmarks of `specfair_kernels.token_divergence`, forward + backward (mean over tokens).

Providers
  triton          sk.token_divergence(..., backend="triton") (CUDA)
  cpp             sk.token_divergence(..., backend="cpp"): csrc/divergence.cpp (CPU)
  specfair-torch  sk.token_divergence(..., backend="torch"): the package's torch backend
  torch           the plain loss below (log_softmax based), eager: what a user writes
  torch.compile   torch.compile of that plain loss

Each call computes the loss and its gradient with respect to the draft logits
(torch.autograd.grad, so no .grad accumulation is timed).  Bytes moved: both logits read
once and the gradient written once, N*V elements each.  On CUDA the record also holds the
peak memory of one call above what was allocated before it.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

import specfair_kernels as sk

# Same rule as conftest.bench_device(), needed here at collection time to pick the shapes.
ON_GPU = (os.environ.get("SPECFAIR_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
          ).startswith("cuda")
SK_PROVIDERS = {"triton": "triton", "cpp": "cpp", "specfair-torch": "torch"}
KINDS = ("ce", "kl", "alpha")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

if ON_GPU:
    SHAPES = [(8192, 128256, "bfloat16", "")]
    PROVIDERS = ("triton", "specfair-torch", "torch", "torch.compile")
else:
    # N=256, V=32000 fp32 is the README's CPU figure: cpp against the plain torch loss, 2 threads.
    SHAPES = [(16, 257, "float32", "smoke"), (128, 32000, "float32", ""), (256, 32000, "float32", "")]
    PROVIDERS = ("cpp", "specfair-torch", "torch", "torch.compile")


def plain_loss(draft_logits, target_logits, kind: str):
    """The textbook loss in fp32: mean over tokens of CE(p, q), KL(p||q) or sum min(p, q)."""
    logq = torch.log_softmax(draft_logits.float(), -1)
    logp = torch.log_softmax(target_logits.float(), -1)
    p = logp.exp()
    if kind == "ce":
        per_token = -(p * logq).sum(-1)
    elif kind == "kl":
        per_token = (p * (logp - logq)).sum(-1)
    elif kind == "alpha":
        per_token = torch.minimum(p, logq.exp()).sum(-1)
    else:
        raise ValueError(kind)
    return per_token.mean()


@functools.lru_cache(maxsize=None)
def compiled_plain_loss():
    return torch.compile(plain_loss, dynamic=False)


def _cases():
    for N, V, dtype, tag in SHAPES:
        marks = [pytest.mark.smoke] if tag == "smoke" else []
        for provider in PROVIDERS:
            for kind in KINDS:
                yield pytest.param(provider, kind, N, V, dtype, marks=marks,
                                   id=f"{provider}-{kind}-N{N}-V{V}-{SHORT[dtype]}")


@pytest.mark.parametrize("provider,kind,N,V,dtype", list(_cases()))
def test_token_divergence(benchmark, bench_ctx, provider, kind, N, V, dtype):
    ctx = bench_ctx
    device = ctx.device
    benchmark.group = f"token_divergence {kind} fwd+bwd N={N} V={V} {dtype}"
    if provider in SK_PROVIDERS:
        ctx.require_backend(SK_PROVIDERS[provider])
    if provider == "torch.compile":
        ctx.require_compile()

    gen = torch.Generator(device=device).manual_seed(0)
    target = (2.0 * torch.randn(N, V, generator=gen, device=device)).to(getattr(torch, dtype))
    draft = (target.float() + torch.randn(N, V, generator=gen, device=device)).to(getattr(torch, dtype))
    draft.requires_grad_(True)

    if provider in SK_PROVIDERS:
        backend = SK_PROVIDERS[provider]

        def loss_fn():
            return sk.token_divergence(draft, target, kind=kind, backend=backend)
    else:
        f = compiled_plain_loss() if provider == "torch.compile" else plain_loss

        def loss_fn():
            return f(draft, target, kind)

    def fn():
        (grad,) = torch.autograd.grad(loss_fn(), draft)
        return grad

    grad = ctx.call_or_skip(benchmark, fn, compiling=provider == "torch.compile")
    assert grad.shape == draft.shape and grad.dtype == draft.dtype
    del grad

    info = {"op": "token_divergence", "provider": provider, "launch": "eager", "mode": kind,
            "N": N, "V": V, "dtype": dtype}
    if ctx.on_gpu and not benchmark.disabled:
        info["peak_memory_bytes"] = ctx.peak_memory(fn)
    itemsize = draft.element_size()
    ctx.run(benchmark, fn, info=info, bytes_moved=3 * N * V * itemsize + 8)
