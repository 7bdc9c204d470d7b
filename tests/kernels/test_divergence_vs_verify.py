"""The divergences `verify` measures in its pass over the logits are the ones
`token_divergence` computes (and trains on), on every backend."""
import pytest
import torch

import specfair_kernels as sk


def _usable():
    return [b for b, why in sk.available_backends("cpu").items() if why is None]


@pytest.mark.parametrize("backend", _usable())
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_verify_divergence_equals_token_divergence(backend, temperature, verify_case):
    K = 3
    case = verify_case(3, B=3, K=K, V=57, scale=2.0, draft="correlated", ragged=False)
    target, draft, tokens = case["target_logits"], case["draft_logits"], case["draft_tokens"]
    draft[0, 1, :5] = float("-inf")  # masked drafter entries
    out = sk.verify(target, draft, tokens, temperature=temperature, seed=1, return_divergence=True,
                    backend=backend)
    for kind, got in (("alpha", out.alpha), ("kl", out.kl), ("ce", out.ce)):
        want = sk.token_divergence(draft, target[:, :K], kind=kind, temperature=temperature,
                                   reduction="none", backend="torch")
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5, msg=f"{kind} on {backend}")
    # H(p) = CE - KL where both are finite (row 0, position 1 has q = 0 where p > 0: CE = KL = inf)
    assert torch.isinf(out.ce[0, 1]) and torch.isinf(out.kl[0, 1])
    finite = torch.isfinite(out.ce)
    torch.testing.assert_close(out.entropy[finite], (out.ce - out.kl)[finite], rtol=1e-4, atol=1e-4)
    tv = sk.token_divergence(draft, target[:, :K], kind="tv", temperature=temperature, reduction="none")
    torch.testing.assert_close(out.alpha, 1 - tv, rtol=2e-5, atol=2e-5)
