"""`specfair train-pair` on a micro pair, on the CPU, in seconds.

The corpus is a small parallel JSONL file written to tmp_path and read through
``load_corpus("jsonl", path=...)``, so no installed corpus is needed.  The saved models
are loaded back through ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``,
the path every user takes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("tqdm")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from specfair import cli  # noqa: E402
from specfair.corpus import load_corpus  # noqa: E402
from specfair.train_pair import ModelSize, TrainPairConfig, TrainPairError, preset, resolve_mixtures, train_pair  # noqa: E402

# Parallel sentences (same item ids in every language): Latin, Cyrillic, Greek, Japanese.
SENTENCES = {
    "en": ["The installer asks a few questions before it partitions the disk.",
           "Choose a mirror close to you so that packages download quickly.",
           "The boot loader is installed on the first hard disk by default.",
           "You can change the keyboard layout later with the configuration tool.",
           "If the network is not configured automatically, enter the address by hand.",
           "Make backups of important data before the installation starts.",
           "The graphical installer looks the same as the text installer.",
           "Each partition needs a mount point and a file system type."],
    "ru": ["Программа установки задаёт несколько вопросов перед разметкой диска.",
           "Выберите ближайшее к вам зеркало, чтобы пакеты загружались быстро.",
           "Системный загрузчик по умолчанию устанавливается на первый жёсткий диск.",
           "Раскладку клавиатуры можно изменить позже с помощью программы настройки.",
           "Если сеть не настроилась автоматически, введите адрес вручную.",
           "Перед началом установки сделайте резервные копии важных данных.",
           "Графическая программа установки выглядит так же, как текстовая.",
           "Каждому разделу нужна точка монтирования и тип файловой системы."],
    "el": ["Το πρόγραμμα εγκατάστασης κάνει μερικές ερωτήσεις πριν διαμερίσει τον δίσκο.",
           "Επιλέξτε έναν καθρέφτη κοντά σας ώστε τα πακέτα να κατεβαίνουν γρήγορα.",
           "Ο φορτωτής εκκίνησης εγκαθίσταται από προεπιλογή στον πρώτο σκληρό δίσκο.",
           "Μπορείτε να αλλάξετε τη διάταξη του πληκτρολογίου αργότερα.",
           "Αν το δίκτυο δεν ρυθμιστεί αυτόματα, εισάγετε τη διεύθυνση με το χέρι.",
           "Κρατήστε αντίγραφα ασφαλείας των σημαντικών δεδομένων πριν την εγκατάσταση.",
           "Ο γραφικός εγκαταστάτης μοιάζει με τον εγκαταστάτη κειμένου.",
           "Κάθε κατάτμηση χρειάζεται σημείο προσάρτησης και τύπο συστήματος αρχείων."],
    "ja": ["インストーラはディスクを分割する前にいくつか質問します。",
           "パッケージを速くダウンロードするために近いミラーを選んでください。",
           "ブートローダはデフォルトで最初のハードディスクにインストールされます。",
           "キーボードの配置は後で設定ツールを使って変更できます。",
           "ネットワークが自動的に設定されない場合は、アドレスを手で入力してください。",
           "インストールを始める前に、重要なデータのバックアップを取ってください。",
           "グラフィカルインストーラはテキストインストーラと同じように見えます。",
           "各パーティションにはマウントポイントとファイルシステムの種類が必要です。"],
}
LANGS = sorted(SENTENCES)
HELDOUT = 0.25


def write_corpus(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for lang in LANGS:
            for i, text in enumerate(SENTENCES[lang]):
                for rep in range(3):   # 24 parallel items per language
                    t = text if rep == 0 else f"{text} ({rep})"
                    f.write(json.dumps({"task": lang, "id": f"s{i}r{rep}", "text": t},
                                       ensure_ascii=False) + "\n")
    return path


def micro_config(out: Path, corpus_path: Path, **kw) -> TrainPairConfig:
    return preset("micro", out_dir=str(out), corpus_source="jsonl",
                  corpus_options={"path": str(corpus_path), "key_column": "id"},
                  heldout_fraction=HELDOUT, **kw)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "micro.jsonl")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("pair") / "out"
    cfg = micro_config(out, corpus_file)
    report = train_pair(cfg)
    return out, cfg, report


# ------------------------------------------------------------------ files, loading, cards
def test_files_exist(pair):
    out, _, _ = pair
    assert (out / "train_pair_config.json").is_file() and (out / "pair_report.json").is_file()
    for role in ("verifier", "drafter"):
        d = out / role
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "README.md"):
            assert (d / f).is_file(), f"{role}/{f} missing"
    assert not list(out.rglob("*.tmp")), "temporary files were left behind"


def test_loads_through_auto_classes_and_generates(pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, cfg, report = pair
    ver = AutoModelForCausalLM.from_pretrained(out / "verifier")
    dra = AutoModelForCausalLM.from_pretrained(out / "drafter")
    assert ver.config.model_type == dra.config.model_type == "llama"
    assert ver.config.vocab_size == dra.config.vocab_size == report["vocab_size"] == cfg.vocab_size
    n_ver = sum(p.numel() for p in ver.parameters())
    n_dra = sum(p.numel() for p in dra.parameters())
    assert n_dra < n_ver
    assert (n_ver, n_dra) == (report["verifier"]["parameters"], report["drafter"]["parameters"])

    tok = AutoTokenizer.from_pretrained(out / "verifier")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert tok.bos_token_id == ver.config.bos_token_id and tok.eos_token_id == ver.config.eos_token_id
    enc = tok("The installer", return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id
    torch.manual_seed(0)
    gen = ver.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=True, pad_token_id=tok.pad_token_id)
    assert gen.shape == (1, enc["input_ids"].shape[1] + 5)
    assert int(gen.max()) < ver.config.vocab_size
    greedy = dra.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert greedy.shape[1] == enc["input_ids"].shape[1] + 3


def test_tokenizer_round_trip_every_language(pair, corpus_file):
    from transformers import AutoTokenizer

    out, _, _ = pair
    c = load_corpus("jsonl", path=str(corpus_file), key_column="id", heldout_fraction=HELDOUT)
    assert sorted(c.task_names) == LANGS
    for role in ("verifier", "drafter"):
        tok = AutoTokenizer.from_pretrained(out / role)
        extra = ["  two  spaces, a tab\tand a newline\n", "Ελληνικά, русский, 日本語 and émojis 🙂",
                 " leading and trailing "]
        for lang in LANGS:
            for text in c.tasks[lang].train + c.tasks[lang].heldout + extra:
                ids = tok(text)["input_ids"]
                assert tok.decode(ids, skip_special_tokens=True) == text, (lang, text)
                assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_report_and_cards(pair):
    out, cfg, report = pair
    assert report == json.loads((out / "pair_report.json").read_text(encoding="utf-8"))
    assert report["languages"] == LANGS
    ev = report["eval"]
    for lang in LANGS:
        assert ev["tokens"][lang] > 0
        assert 0.0 <= ev["alpha"][lang] <= 1.0
        assert ev["kl"][lang] >= -1e-5
        for k in ("verifier_ppl", "drafter_ppl"):
            assert math.isfinite(ev[k][lang]) and ev[k][lang] >= 1.0
    # The default skew under-represents el, ja and ru (weight 1/10), not en.
    mix = report["mixtures"]
    assert mix["verifier"] == pytest.approx({l: 0.25 for l in LANGS})
    assert mix["drafter"]["en"] == pytest.approx(10 * mix["drafter"]["ru"])
    assert sum(mix["drafter"].values()) == pytest.approx(1.0)
    acc = report["acceptance"]
    assert acc["under_represented"] == ["el", "ja", "ru"] and acc["well_represented"] == ["en"]
    assert 0.0 <= acc["alpha_spread"] <= 1.0

    ver_card = (out / "verifier" / "README.md").read_text(encoding="utf-8")
    dra_card = (out / "drafter" / "README.md").read_text(encoding="utf-8")
    for card, role in ((ver_card, "verifier"), (dra_card, "drafter")):
        assert f"{report[role]['parameters']:,}" in card
        assert f"{report[role]['steps']} steps" in card
        assert "held-out perplexity" in card and "Mixture" in card
        for lang in LANGS:
            assert f"| {lang} |" in card
    assert "alpha" in dra_card and "under-represented" in dra_card
    assert f"{ev['alpha']['ja']:.3f}" in dra_card

    saved = json.loads((out / "train_pair_config.json").read_text(encoding="utf-8"))
    assert saved["resolved"]["languages"] == LANGS
    assert TrainPairConfig.from_dict(saved) == cfg


# ------------------------------------------------------------------ determinism
def _state(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


def test_same_seed_same_tokenizer_and_weights(pair, tmp_path, corpus_file):
    out1, _, _ = pair
    out2 = tmp_path / "again"
    # The second run goes through the command line with the same settings.
    rc = cli.main(["train-pair", "--out", str(out2), "--preset", "micro", "--corpus", "jsonl",
                   "--corpus-option", f"path={corpus_file}", "--corpus-option", "key_column=id",
                   "--heldout-fraction", str(HELDOUT), "--no-progress"])
    assert rc == 0
    for role in ("verifier", "drafter"):
        for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            assert (out1 / role / f).read_bytes() == (out2 / role / f).read_bytes(), f"{role}/{f}"
        s1, s2 = _state(out1 / role), _state(out2 / role)
        assert s1.keys() == s2.keys()
        for k in s1:
            assert torch.equal(s1[k], s2[k]), f"{role}: {k} differs"
    r1 = json.loads((out1 / "pair_report.json").read_text(encoding="utf-8"))
    r2 = json.loads((out2 / "pair_report.json").read_text(encoding="utf-8"))
    assert r1["eval"] == r2["eval"]


def test_other_seed_other_weights(pair, tmp_path, corpus_file):
    out1, _, _ = pair
    out2 = tmp_path / "seed1"
    train_pair(micro_config(out2, corpus_file, seed=1, steps=1))
    # The tokenizer depends on the data only; the weights on the seed.
    assert (out1 / "drafter" / "tokenizer.json").read_bytes() == (out2 / "drafter" / "tokenizer.json").read_bytes()
    s1, s2 = _state(out1 / "drafter"), _state(out2 / "drafter")
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)


# ------------------------------------------------------------------ reuse_verifier
def test_reuse_verifier_trains_only_the_drafter(pair, tmp_path, corpus_file):
    out1, _, r1 = pair
    out2 = tmp_path / "reused"
    rc = cli.main(["train-pair", "--out", str(out2), "--preset", "micro", "--corpus", "jsonl",
                   "--corpus-option", f"path={corpus_file}", "--corpus-option", "key_column=id",
                   "--heldout-fraction", str(HELDOUT), "--no-progress", "--seed", "1",
                   "--reuse-verifier", str(out1 / "verifier")])
    assert rc == 0
    # The verifier (weights, tokenizer, card) is copied byte for byte; the drafter shares its tokenizer.
    for f in sorted((out1 / "verifier").iterdir()):
        assert (out2 / "verifier" / f.name).read_bytes() == f.read_bytes(), f.name
    assert (out2 / "drafter" / "tokenizer.json").read_bytes() == (out1 / "verifier" / "tokenizer.json").read_bytes()
    # The drafter is a new one (seed 1), evaluated against the same verifier on the same held-out split.
    s1, s2 = _state(out1 / "drafter"), _state(out2 / "drafter")
    assert any(not torch.equal(s1[k], s2[k]) for k in s1)
    r2 = json.loads((out2 / "pair_report.json").read_text(encoding="utf-8"))
    assert r2["eval"]["verifier_ppl"] == pytest.approx(r1["eval"]["verifier_ppl"], rel=1e-6)
    assert r2["eval"]["alpha"] != r1["eval"]["alpha"]
    assert r2["verifier"]["reused_from"] == str(out1 / "verifier")
    assert r2["verifier"]["steps"] == r1["verifier"]["steps"]     # the source pair's training record
    saved = json.loads((out2 / "train_pair_config.json").read_text(encoding="utf-8"))
    assert saved["reuse_verifier"] == str(out1 / "verifier")
    assert saved["verifier"] == json.loads((out1 / "train_pair_config.json").read_text())["verifier"]


def test_reuse_verifier_not_a_verifier_dir(tmp_path, corpus_file):
    with pytest.raises(TrainPairError, match="reuse_verifier .* is not a verifier directory"):
        train_pair(micro_config(tmp_path / "out", corpus_file, reuse_verifier=str(tmp_path)))


# ------------------------------------------------------------------ configuration errors
def test_mixture_resolution():
    cfg = TrainPairConfig(under_represented=["ja"], under_weight=0.1)
    ver, dra = resolve_mixtures(cfg, ["en", "fr", "ja"])
    assert ver == pytest.approx({"en": 1 / 3, "fr": 1 / 3, "ja": 1 / 3})
    assert dra == pytest.approx({"en": 1 / 2.1, "fr": 1 / 2.1, "ja": 0.1 / 2.1})
    cfg = TrainPairConfig(drafter_mixture={"en": 2, "fr": 2})
    with pytest.raises(TrainPairError, match="missing: \\['ja'\\]"):
        resolve_mixtures(cfg, ["en", "fr", "ja"])
    cfg = TrainPairConfig(drafter_mixture={"en": 0, "fr": 0, "ja": 0})
    with pytest.raises(TrainPairError, match="not all 0"):
        resolve_mixtures(cfg, ["en", "fr", "ja"])


@pytest.mark.parametrize("kw, match", [
    ({"vocab_size": 100}, "vocab_size must be >= 260"),
    ({"verifier": ModelSize(30, 1, 4, 8)}, "not divisible"),
    ({"steps": 0}, "steps must be a positive int"),
    ({"save_dtype": "int8"}, "save_dtype"),
])
def test_bad_config(tmp_path, corpus_file, kw, match):
    with pytest.raises(TrainPairError, match=match):
        train_pair(micro_config(tmp_path / "out", corpus_file, **kw))


# ------------------------------------------------------------------ CLI
def _cli(argv, capsys):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def test_cli_unknown_language_lists_available(tmp_path, corpus_file, capsys):
    rc, err = _cli(["train-pair", "--out", str(tmp_path / "o"), "--preset", "micro",
                    "--corpus", "jsonl", "--corpus-option", f"path={corpus_file}",
                    "--languages", "en,xx"], capsys)
    assert rc == 2
    assert err.startswith("error:") and "xx" in err
    for lang in LANGS:
        assert lang in err


def test_cli_output_dir_not_writable(tmp_path, corpus_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, err = _cli(["train-pair", "--out", str(blocker / "out"), "--preset", "micro",
                    "--corpus", "jsonl", "--corpus-option", f"path={corpus_file}"], capsys)
    assert rc == 2 and "not writable" in err and str(blocker / "out") in err


def test_cli_missing_corpus_says_how_to_install(tmp_path, capsys):
    rc, err = _cli(["train-pair", "--out", str(tmp_path / "o"), "--preset", "micro",
                    "--corpus-option", f"root={tmp_path / 'no-guide-here'}"], capsys)
    assert rc == 2 and "apt-get install -y installation-guide-amd64" in err
    rc, err = _cli(["train-pair", "--out", str(tmp_path / "o"), "--preset", "micro",
                    "--corpus", "jsonl", "--corpus-option", f"path={tmp_path / 'missing.jsonl'}"], capsys)
    assert rc == 2 and "no such file" in err


def test_cli_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "train-pair" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["train-pair", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--languages" in out and "--preset" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["train-pair"])              # --out is required
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["train-pair", "--out", "x", "--preset", "huge"])
    assert e.value.code == 2
