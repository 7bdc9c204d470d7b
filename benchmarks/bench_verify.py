"""Benchmarks of `specfair_kernels.verify`: logits in, emitted tokens (and divergence) out.

Providers
  torch          sk.verify(..., backend="torch"): the batched eager reference, with the
                 public API's validation (as a user calls it)
  torch.compile  torch.compile(specfair_kernels.reference.verify_ref) on the canonical
                 arguments the API would pass it (no validation)
  triton         sk.verify(..., backend="triton") (CUDA); launch "graph" replays one call
                 captured in a CUDA graph, launch "eager" calls it from Python
  cpp            sk.verify(..., backend="cpp") (CPU)
  flashinfer     softmax of both logits + flashinfer.sampling.chain_speculative_sampling,
                 when flashinfer is importable (CUDA)
Modes: "tokens" (plain verification), "divergence" (return_divergence=True) and "stats"
(a TaskStats accumulator, 4 tasks), which measure the cost of the divergence figures.

Bytes moved, for every provider alike: both logits read once, target B*(K+1)*V plus draft
B*K*V elements, plus the per-row inputs and the outputs.  See benchmarks/README.md.
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

import specfair_kernels as sk
from specfair_kernels import reference

# Same rule as conftest.bench_device(), needed here at collection time to pick the shapes.
ON_GPU = (os.environ.get("SPECFAIR_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
          ).startswith("cuda")
SK_BACKENDS = ("torch", "cpp", "triton")
MODES = ("tokens", "divergence", "stats")
METHODS = ("token", "block")
NUM_TASKS = 4
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# (B, K, V, dtype, tag): "bar" rows are DESIGN.md's table (torch.compile runs only there,
# to keep the GPU matrix within minutes); "smoke" rows only check that the code runs.
if ON_GPU:
    SHAPES = [
        (1, 4, 151936, "bfloat16", "bar"),
        (64, 4, 128256, "bfloat16", "bar"),
        (64, 8, 128256, "bfloat16", "bar"),
        (256, 8, 151936, "bfloat16", "bar"),
        (64, 4, 128256, "float32", ""),
        (16, 4, 32000, "bfloat16", ""),
    ]
    PROVIDERS = [("torch", "eager"), ("torch.compile", "eager"), ("triton", "eager"), ("triton", "graph"),
                 ("flashinfer", "eager")]
else:
    SHAPES = [
        (2, 3, 257, "float32", "smoke"),
        (2, 3, 257, "bfloat16", "smoke"),
        (8, 4, 32000, "float32", ""),  # the CPU figure quoted in the README: run with 2 threads
    ]
    PROVIDERS = [("torch", "eager"), ("torch.compile", "eager"), ("cpp", "eager")]


def _cases():
    for B, K, V, dtype, tag in SHAPES:
        marks = [pytest.mark.smoke] if tag == "smoke" else []
        for provider, launch in PROVIDERS:
            if provider == "torch.compile" and ON_GPU and tag != "bar":
                continue
            for mode in MODES if provider in SK_BACKENDS else ("tokens",):
                name = provider + ("-graph" if launch == "graph" else "")
                # verify(method=...): block verification beside token mode at every shape (sk backends).
                for method in METHODS if provider in SK_BACKENDS else ("token",):
                    suffix = "" if method == "token" else f"-{method}"
                    yield pytest.param(provider, launch, mode, B, K, V, dtype, method, marks=marks,
                                       id=f"{name}-{mode}-B{B}-K{K}-V{V}-{SHORT[dtype]}{suffix}")


def make_inputs(B, K, V, dtype, device, seed=0):
    """Correlated target/draft logits and drafts sampled from the drafter (Gumbel-max),
    so acceptance is partial, as in real decoding."""
    gen = torch.Generator(device=device).manual_seed(seed)
    target = 2.0 * torch.randn(B, K + 1, V, generator=gen, device=device)
    draft = target[:, :K] + torch.randn(B, K, V, generator=gen, device=device)
    u = torch.rand(B, K, V, generator=gen, device=device).clamp_(min=1e-20)
    tokens = (draft - torch.log(-torch.log(u))).argmax(-1)
    del u
    return target.to(dtype), draft.to(dtype), tokens


def verify_bytes(B, K, V, itemsize, mode):
    logits = (B * (K + 1) * V + B * K * V) * itemsize
    row_inputs = B * K * 8 + B * (8 + 8 + 8 + 4)  # draft tokens; seed, step, num_draft, temperature
    outputs = B * (K + 1) * 8 + 2 * B * 4  # tokens, num_accepted, num_emitted
    if mode == "divergence":
        outputs += 4 * B * K * 4  # alpha, kl, ce, entropy
    elif mode == "stats":
        outputs += B * 8  # task ids (the [T, .] accumulators are negligible)
    return logits + row_inputs + outputs


@functools.lru_cache(maxsize=None)
def compiled_reference():
    import torch._dynamo

    # Each shape is its own static graph; the default limit (8) would silently fall back to eager.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    return torch.compile(reference.verify_ref, dynamic=False)


def reference_args(target, draft, tokens, seed):
    """What api.verify passes a backend after validation (all rows full, T=1, step 0)."""
    B, K = tokens.shape
    dev = target.device
    return (target.contiguous(), draft.contiguous(), tokens.to(torch.int64).contiguous(),
            torch.full((B,), K, dtype=torch.int64, device=dev), torch.ones(B, dtype=torch.float32, device=dev),
            seed, torch.zeros(B, dtype=torch.int64, device=dev), False)


def flashinfer_chain():
    try:
        from flashinfer.sampling import chain_speculative_sampling
    except Exception as exc:  # not installed, or built for another torch/CUDA
        pytest.skip(f"flashinfer unavailable: {type(exc).__name__}: {exc}")
    return chain_speculative_sampling


@pytest.mark.parametrize("provider,launch,mode,B,K,V,dtype,method", list(_cases()))
def test_verify(benchmark, bench_ctx, provider, launch, mode, B, K, V, dtype, method):
    ctx = bench_ctx
    device = ctx.device
    benchmark.group = f"verify {mode} B={B} K={K} V={V} {dtype}"
    if provider in SK_BACKENDS:
        ctx.require_backend(provider)
    if provider == "torch.compile" and not ctx.compile_enabled and benchmark.disabled:
        # Smoke runs still check the argument path the compiled provider uses.
        target, draft, tokens = make_inputs(B, K, V, getattr(torch, dtype), device)
        seed = torch.arange(B, dtype=torch.int64, device=device)
        _check(reference.verify_ref(*reference_args(target, draft, tokens, seed))[0], B, K)
    if provider == "torch.compile":
        ctx.require_compile()
    chain = flashinfer_chain() if provider == "flashinfer" else None

    target, draft, tokens = make_inputs(B, K, V, getattr(torch, dtype), device)
    seed = torch.arange(B, dtype=torch.int64, device=device)  # fixed: graph replays reuse it
    if provider in SK_BACKENDS:
        kwargs = {"seed": seed, "backend": provider, "method": method}
        if mode == "divergence":
            kwargs["return_divergence"] = True
        elif mode == "stats":
            kwargs["stats"] = sk.TaskStats(num_tasks=NUM_TASKS, max_draft=K, device=device)
            kwargs["task_ids"] = torch.arange(B, device=device) % NUM_TASKS

        def fn():
            return sk.verify(target, draft, tokens, **kwargs)

        def tokens_of(out):
            return out.tokens
    elif provider == "torch.compile":
        compiled = compiled_reference()
        args = reference_args(target, draft, tokens, seed)

        def fn():
            return compiled(*args)

        def tokens_of(out):
            return out[0]
    else:  # flashinfer: it takes probabilities, so the softmaxes are part of its time
        draft_ids = tokens.to(torch.int32)

        def fn():
            return chain(torch.softmax(draft.float(), -1), draft_ids, torch.softmax(target.float(), -1))

        def tokens_of(out):
            return out[0] if isinstance(out, (tuple, list)) else out

    try:
        out = ctx.call_or_skip(benchmark, fn, compiling=provider == "torch.compile")
    except TypeError as exc:
        if provider != "flashinfer":
            raise
        pytest.skip(f"this flashinfer's chain_speculative_sampling has another signature: {exc}")
    _check(tokens_of(out), B, K)
    if mode == "divergence":
        assert out.alpha.shape == (B, K) and out.kl.shape == (B, K)

    warm = False
    if launch == "graph":
        graph = ctx.cuda_graph(fn)
        fn, warm = graph.replay, True

    info = {"op": "verify", "provider": provider, "launch": launch, "mode": mode, "method": method,
            "B": B, "K": K, "V": V, "dtype": dtype}
    ctx.run(benchmark, fn, info=info, bytes_moved=verify_bytes(B, K, V, target.element_size(), mode), warm=warm)


def _check(tokens, B, K):
    assert tuple(tokens.shape) == (B, K + 1), f"tokens have shape {tuple(tokens.shape)}, expected {(B, K + 1)}"
