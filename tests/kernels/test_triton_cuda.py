"""The Triton verify kernels on a real GPU: equality with the reference at real sizes,
CUDA-graph capture, deterministic statistics and int64 offsets.  Skipped without CUDA."""
import pytest
import torch

import specfair_kernels as sk
from specfair_kernels.stats import DIVERGENCE_FIELDS

pytestmark = pytest.mark.cuda
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _case(verify_case, B, K, V, dtype, seed=0, onehot=False):
    """(target, draft | None, tokens, num_draft, temperature) on the GPU; drafts sampled from q."""
    c = verify_case(seed, B=B, K=K, V=V, tdtype=dtype, ddtype=dtype, draft="onehot" if onehot else "correlated",
                    tokens="from_q", temps=(0.0, 0.7, 1.0, 1.3), device="cuda")
    return c["target_logits"], c["draft_logits"], c["draft_tokens"], c["num_draft"], c["temperature"]


@cuda
@pytest.mark.parametrize("method", ["token", "block"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,K,V", [(1, 4, 151936), (16, 4, 32000), (64, 8, 128256)])
def test_triton_equals_reference_on_gpu(B, K, V, dtype, method, verify_case):
    target, draft, tokens, num_draft, temp = _case(verify_case, B, K, V, dtype)
    seed = torch.arange(B, device="cuda") * 7 + 1
    outs = {be: sk.verify(target, draft, tokens, num_draft=num_draft, temperature=temp, seed=seed, step=3,
                          return_divergence=True, backend=be, method=method) for be in ("triton", "torch")}
    a, b = outs["triton"], outs["torch"]
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.num_accepted, b.num_accepted)
    for k in DIVERGENCE_FIELDS:
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-4, atol=2e-4)


@cuda
@pytest.mark.parametrize("method", ["token", "block"])
def test_one_hot_drafts_on_gpu(verify_case, method):
    target, draft, tokens, num_draft, temp = _case(verify_case, 8, 4, 50000, torch.bfloat16, onehot=True)
    outs = [sk.verify(target, None, tokens, num_draft=num_draft, temperature=temp, seed=5, backend=be,
                      method=method) for be in ("triton", "torch")]
    assert torch.equal(outs[0].tokens, outs[1].tokens)


@cuda
@pytest.mark.parametrize("method", ["token", "block"])
def test_cuda_graph_capture_and_replay(verify_case, method):
    B, K, V = 4, 4, 151936
    target, draft, tokens, num_draft, temp = _case(verify_case, B, K, V, torch.bfloat16)
    seed = torch.arange(B, device="cuda") + 11
    step = torch.zeros(B, dtype=torch.int64, device="cuda")
    stats = sk.TaskStats(2, K, device="cuda")
    task_ids = torch.arange(B, device="cuda") % 2
    kw = dict(num_draft=num_draft, temperature=temp, seed=seed, step=step, task_ids=task_ids, stats=stats,
              method=method)
    eager = sk.verify(target, draft, tokens, backend="triton", **kw)  # also warms up / compiles
    stats.reset()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        sk.verify(target, draft, tokens, backend="triton", **kw)
    torch.cuda.current_stream().wait_stream(s)
    stats.reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sk.verify(target, draft, tokens, backend="triton", **kw)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.tokens, eager.tokens)
    assert int(stats.counts[:, sk.stats.COUNT_STEPS].sum()) == 3 * B
    step.add_(1)  # new randomness through the captured tensor
    graph.replay()
    fresh = sk.verify(target, draft, tokens, backend="triton", **{**kw, "stats": None, "task_ids": None})
    assert torch.equal(out.tokens, fresh.tokens)


@cuda
def test_deterministic_stats_are_bitwise_reproducible(verify_case):
    B, K, V, T = 64, 4, 32000, 7
    target, draft, tokens, num_draft, temp = _case(verify_case, B, K, V, torch.bfloat16)
    task_ids = torch.randint(0, T, (B,), device="cuda")
    sums = []
    for _ in range(2):
        stats = sk.TaskStats(T, K, device="cuda", deterministic=True)
        for step in range(5):
            sk.verify(target, draft, tokens, num_draft=num_draft, temperature=temp, seed=1, step=step,
                      task_ids=task_ids, stats=stats, backend="triton")
        sums.append(stats.sums.clone())
    assert torch.equal(sums[0], sums[1])


@cuda
def test_int64_offsets():
    # B*(K+1)*V > 2**31 elements: 32-bit offsets would wrap.
    B, K, V = 2048, 7, 151936
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs ~12 GiB of GPU memory")
    target = torch.zeros(B, K + 1, V, device="cuda", dtype=torch.bfloat16)
    draft = torch.zeros(B, K, V, device="cuda", dtype=torch.bfloat16)
    last = B - 1
    target[last, :, 123] = 30.0  # the last row is sure of token 123 everywhere
    draft[last, :, 77] = 30.0
    tokens = torch.full((B, K), 77, device="cuda")
    out = sk.verify(target, draft, tokens, temperature=0.0, backend="triton")
    assert out.tokens[last, 0].item() == 123 and out.num_accepted[last].item() == 0
    del target, draft
    torch.cuda.empty_cache()
