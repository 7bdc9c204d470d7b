"""Model cards for the pairs `specfair train-pair` trains."""
from __future__ import annotations


def _fmt(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}"


def model_card(role: str, cfg, report: dict, corpus_desc: str) -> str:
    """The Hugging Face model card (README.md) of one model of a pair trained by
    `specfair.train_pair`: ``cfg`` is its TrainPairConfig, ``report`` its pair report."""
    info = report[role]
    ev = report["eval"]
    langs = report["languages"]
    mix = report["mixtures"][role]
    size = info["size"]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [llama, specfair, speculative-decoding, " + ("drafter" if role == "drafter" else "verifier") + "]",
        "---",
        f"# specfair {role}",
        "",
        (f"The {role} of a drafter/verifier pair trained by `specfair train-pair` "
         f"(seed {cfg.seed}; config in `../train_pair_config.json`). A small Llama "
         f"(`LlamaForCausalLM`), loaded with `AutoModelForCausalLM.from_pretrained` like any "
         f"Hugging Face model. It exists to make the fairness question of speculative "
         f"decoding measurable offline; it is not a useful language model."),
        "",
        "## Model",
        f"- parameters: {info['parameters']:,} (tied input/output embeddings: {cfg.tie_embeddings})",
        f"- hidden {size['hidden']}, layers {size['layers']}, heads {size['heads']}, "
        f"kv heads {size['kv_heads'] or size['heads']}, intermediate {size['intermediate']}, "
        f"context {cfg.context_length}",
        f"- tokenizer: byte-level BPE, vocabulary {report['vocab_size']}, shared by the pair, "
        f"trained on the training split of every language below",
        f"- weights saved as {cfg.save_dtype} safetensors",
        "",
        "## Data",
        f"- corpus: {corpus_desc}",
        f"- languages ({len(langs)}): {', '.join(langs)}; perplexities below are on the held-out split "
        f"(held-out fraction {cfg.heldout_fraction}, split seed {cfg.corpus_seed}), never trained on",
        "",
        "## Training",
        f"- {info['steps']} steps of AdamW (lr {cfg.lr}, betas {tuple(cfg.betas)}, weight decay "
        f"{cfg.weight_decay}, {cfg.warmup_steps} warm-up steps, cosine to {cfg.lr * cfg.min_lr_ratio:g}), "
        f"batch {cfg.batch_size} x {cfg.context_length} tokens, gradient clipping {cfg.grad_clip}",
        f"- {info['tokens_seen']:,} training tokens seen; final training loss {info['final_train_loss']:.3f} "
        + ("(KL(p || q) to the verifier's distribution: distillation)" if info.get("objective") == "distill"
           else "(next-token cross-entropy)"),
        *([f"- initialised from: {info['init']} (embedding, first layers, final norm, head)"]
          if info.get("init", "random") != "random" else []),
        f"- device: {report['device']}",
        "",
        "## Mixture",
        ("Windows are sampled per language with these probabilities "
         + ("(balanced)." if role == "verifier" else
            "(skewed, as real drafter data is: the under-represented languages get "
            f"{cfg.under_weight:g} of the others' weight).")),
        "",
        "| language | weight | held-out perplexity | held-out tokens |",
        "|---|---|---|---|",
    ]
    ppl = ev["verifier_ppl" if role == "verifier" else "drafter_ppl"]
    for l in langs:
        lines.append(f"| {l} | {mix[l]:.4f} | {_fmt(ppl[l], 2)} | {ev['tokens'][l]} |")
    if role == "drafter":
        lines += _acceptance_section(report, langs, mix)
    return "\n".join(lines) + "\n"


def _acceptance_section(report: dict, langs: list[str], mix: dict) -> list[str]:
    """The drafter card's per-language acceptance against the verifier."""
    ev = report["eval"]
    acc = report["acceptance"]
    lines = [
        "",
        "## Acceptance against the verifier (held-out, teacher-forced, temperature 1)",
        ("Expected acceptance alpha = sum_x min(p(x), q(x)) (p: verifier, q: this drafter) "
         "and KL(p || q), averaged over every held-out token of each language, computed with "
         "`specfair_kernels.token_divergence`."),
        "",
        "| language | drafter weight | alpha | KL(p‖q) |",
        "|---|---|---|---|",
    ]
    for l in langs:
        lines.append(f"| {l} | {mix[l]:.4f} | {_fmt(ev['alpha'][l])} | {_fmt(ev['kl'][l])} |")
    lines += [
        "",
        f"- mean alpha, well-represented languages: {_fmt(acc['alpha_mean_well_represented'])}",
        f"- mean alpha, under-represented languages ({', '.join(acc['under_represented']) or 'none'}): "
        f"{_fmt(acc['alpha_mean_under_represented'])}",
        f"- spread of alpha across languages (max - min): {_fmt(acc['alpha_spread'])}",
        "",
        ("The per-language differences come from this drafter's data: languages that are "
         "under-represented in its mixture are fitted worse, so it agrees less with the "
         "verifier there, fewer drafted tokens are accepted, and speculative decoding "
         "speeds those languages up less (the mechanism of Sandler et al., *The "
         "Disparate Impacts of Speculative Decoding*, 2025)."),
    ]
    return lines
