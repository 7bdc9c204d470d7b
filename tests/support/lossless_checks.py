"""Chi-square checks of the generator's losslessness on a V=8 verifier, shared by the
generator's and the drafting modes' tests."""
from __future__ import annotations

import torch
from scipy import stats as scipy_stats

from specfair.decoding import process_logits

V_SMALL = 8


def exact_three_token_distribution(verifier, prompt, temperature, top_k, top_p):
    """P(x1, x2, x3 | prompt) of the verifier's processed distribution, enumerated: [V, V, V]."""
    V = V_SMALL
    pairs = torch.cartesian_prod(torch.arange(V), torch.arange(V))  # [V*V, 2]
    ids = torch.cat([torch.tensor(prompt).expand(V * V, -1), pairs], 1)
    with torch.no_grad():
        logits = verifier(input_ids=ids).logits[:, -3:, :V].float()
    probs = torch.softmax(process_logits(logits, temperature, top_k, top_p).float() / temperature, -1).double()
    p1 = probs[0, 0]                                   # [V]
    p2 = probs[:, 1].reshape(V, V, V)[:, 0]            # [x1, x2]
    p3 = probs[:, 2].reshape(V, V, V)                  # [x1, x2, x3]
    return p1[:, None, None] * p2[:, :, None] * p3


def chi_square_pvalue(counts, probs):
    counts, probs = counts.flatten().double(), probs.flatten()
    n = counts.sum()
    impossible = probs < 1e-12
    assert counts[impossible].sum() == 0, "sampled a sequence the verifier's processed distribution excludes"
    counts, expected = counts[~impossible], probs[~impossible] * n
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return float(scipy_stats.chi2.sf(stat, int(keep.sum()) - 1))


def sample_three(gen, prompts_list, rows_each, seed):
    ids = [p for p in prompts_list for _ in range(rows_each)]
    out = gen.generate(ids, max_new_tokens=3, eos_token_id=[], seed=seed)
    new = out.sequences[:, -3:]
    assert out.num_new_tokens.tolist() == [3] * len(ids)
    V = V_SMALL
    counts = []
    for i in range(len(prompts_list)):
        x = new[i * rows_each:(i + 1) * rows_each]
        counts.append(torch.bincount(x[:, 0] * V * V + x[:, 1] * V + x[:, 2], minlength=V ** 3).reshape(V, V, V))
    return counts, out
