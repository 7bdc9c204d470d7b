"""`specfair.pair_training`: the drafter's start from another model's weights and its
distillation to the verifier, on micro shapes, on the CPU, in seconds."""
from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from specfair.pair_training import distill_loss, init_from  # noqa: E402
from specfair.train_pair import ModelSize, TrainPairError, preset, train_pair  # noqa: E402

TEXT = {"en": "The installer asks a few questions before it partitions the disk and installs the system.",
        "fr": "L'installateur pose quelques questions avant de partitionner le disque et d'installer le système.",
        "ru": "Программа установки задаёт несколько вопросов перед разметкой диска и установкой системы."}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for lang, text in TEXT.items():
            for i in range(12):
                f.write(json.dumps({"task": lang, "id": f"s{i}", "text": f"{text} ({i})"}, ensure_ascii=False) + "\n")
    return path


def micro_config(out, corpus_path, **kw):
    return preset("micro", out_dir=str(out), corpus_source="jsonl", under_represented=["ru"],
                  corpus_options={"path": str(corpus_path), "key_column": "id"}, heldout_fraction=0.25, **kw)


def _llama(hidden=32, layers=2, heads=2, inter=64, vocab=300, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=32,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_init_from_copies_embedding_first_layers_norm_exactly():
    src, dst = _llama(layers=3, seed=0), _llama(layers=1, seed=1)
    init_from(dst, src, "src")
    s = src.state_dict()
    for k, v in dst.state_dict().items():
        assert torch.equal(v, s[k]), k        # layer 0, embedding (= tied head), norm
    ids = torch.randint(0, 300, (2, 8))
    with torch.no_grad():                     # the copy is the source cut to one layer
        src.model.layers = src.model.layers[:1]
        src.config.num_hidden_layers = 1
        assert torch.equal(dst(input_ids=ids).logits, src(input_ids=ids).logits)


def test_init_from_errors_name_the_source_and_the_shape():
    with pytest.raises(ValueError, match="'src' has 1 layers; the drafter needs 2"):
        init_from(_llama(layers=2), _llama(layers=1), "src")
    with pytest.raises(TrainPairError, match="'big'.*shape \\(300, 64\\).*needs \\(300, 32\\)"):
        init_from(_llama(hidden=32), _llama(hidden=64, heads=2, inter=128), "big", TrainPairError)


def test_distill_loss_is_kl_p_q_over_the_drafters_vocabulary():
    g = torch.Generator().manual_seed(0)
    q_logits = torch.randn(2, 5, 7, generator=g)
    p_logits = torch.randn(2, 5, 9, generator=g)         # the verifier's 2 extra rows are dropped
    p = F.softmax(p_logits[..., :7], -1)
    kl = (p * (p.log() - F.log_softmax(q_logits, -1))).sum(-1).mean()
    assert distill_loss(q_logits, p_logits).item() == pytest.approx(kl.item(), rel=1e-5)
    assert distill_loss(p_logits[..., :7], p_logits).item() == pytest.approx(0.0, abs=1e-6)
    assert kl.item() > 0.1
    a, b = q_logits.clone().requires_grad_(True), q_logits.clone().requires_grad_(True)
    distill_loss(a, p_logits).backward()
    (p * (p.log() - F.log_softmax(b, -1))).sum(-1).mean().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_distilled_drafter_from_the_verifier(tmp_path, corpus_file):
    out = tmp_path / "out"
    cfg = micro_config(out, corpus_file, steps=30, drafter_steps=30, drafter=ModelSize(32, 1, 2, 64),
                       drafter_init="verifier", drafter_objective="distill")
    report = train_pair(cfg)
    d = report["drafter"]
    assert d["objective"] == "distill" and d["init"] == "verifier"
    assert d["final_train_loss"] < 0.8 * d["first_train_loss"], d     # KL(p || q) falls
    saved = json.loads((out / "train_pair_config.json").read_text(encoding="utf-8"))
    assert saved["drafter_objective"] == "distill" and saved["drafter_init"] == "verifier"
    card = (out / "drafter" / "README.md").read_text(encoding="utf-8")
    assert "KL(p || q) to the verifier" in card and "initialised from: verifier" in card
    assert "next-token cross-entropy" in (out / "verifier" / "README.md").read_text(encoding="utf-8")
    # From a model directory: that drafter, against the same verifier, trained by a step of
    # negligible size, keeps its acceptance.
    r2 = train_pair(micro_config(tmp_path / "out2", corpus_file, drafter_steps=1, drafter=ModelSize(32, 1, 2, 64),
                                 reuse_verifier=str(out / "verifier"), drafter_init=str(out / "drafter"),
                                 lr=1e-9, warmup_steps=1))
    assert r2["drafter"]["objective"] == "ce" and r2["drafter"]["init"] == str(out / "drafter")
    assert r2["eval"]["alpha"] == pytest.approx(report["eval"]["alpha"], abs=1e-4)


@pytest.mark.parametrize("kw, match", [
    ({"drafter_objective": "mse"}, "drafter_objective must be one of"),
    ({"drafter_init": ""}, "drafter_init must be one of"),
    ({"drafter_init": "/no/such/dir"}, "drafter_init must be one of .* or a model directory"),
    ({"drafter_init": "verifier"}, "drafter_init 'verifier'.*shape"),   # micro drafter is 16 wide, verifier 32
])
def test_bad_drafter_options(tmp_path, corpus_file, kw, match):
    with pytest.raises(TrainPairError, match=match):
        train_pair(micro_config(tmp_path / "out", corpus_file, steps=1, **kw))
