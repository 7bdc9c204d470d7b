"""What the s-CDF comparison measures beside teacher-forced held-out figures: the measured
generation of every drafter (through the audit's own timing path) and the teacher-forced
figures on a second, out-of-domain corpus (a tiny Django-format catalogue tree written
here), with the verifier frozen bit for bit."""
from __future__ import annotations

import sys

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from scdf_assets import CTX, config, load, write_assets  # noqa: E402

from specfair import audit, cli, scdf_compare, scdf_measure  # noqa: E402
from specfair.scdf_config import ScdfError  # noqa: E402
from specfair.scdf_measure import MeasureOptions  # noqa: E402
from specfair.training import fingerprint  # noqa: E402

_HEADER = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
# msgid -> translations; "en" is the source language (its msgstr stays empty, the msgid is the text)
_MESSAGES = {
    "Log out": {"ru": "Выйти", "de": "Abmelden", "fr": "Déconnexion", "zh_Hans": "注销"},
    "Change password": {"ru": "Изменить пароль", "de": "Passwort ändern", "fr": "Modifier le mot de passe",
                        "zh_Hans": "修改密码"},
    "Enter a valid email address.": {"ru": "Введите правильный адрес электронной почты.",
                                     "de": "Bitte gültige E-Mail-Adresse eingeben.",
                                     "fr": "Saisissez une adresse e-mail valide.",
                                     "zh_Hans": "输入一个有效的 Email 地址。"},
    "This field is required.": {"ru": "Обязательное поле.", "de": "Dieses Feld ist zwingend erforderlich.",
                                "fr": "Ce champ est obligatoire.", "zh_Hans": "这个字段是必填项。"},
}


def write_catalogues(root, locales=("en", "ru", "de")):
    """A Django-layout tree of gettext catalogues: <root>/conf/locale/<loc>/LC_MESSAGES/django.po."""
    for loc in locales:
        body = "".join(f'msgid "{m}"\nmsgstr "{"" if loc == "en" else tr[loc]}"\n\n' for m, tr in _MESSAGES.items())
        p = root / "conf" / "locale" / loc / "LC_MESSAGES" / "django.po"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(_HEADER + body, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = write_assets(tmp_path_factory.mktemp("scdf_measure"))
    write_catalogues(root / "django")
    return root


SMALL = dict(num_prompts=2, prompt_tokens=4, max_new_tokens=3, timing_repeats=1)


def test_comparison_measures_generation_and_out_of_domain(assets, tmp_path, monkeypatch, one_thread):
    calls = []
    real = audit.generative

    def spy(acfg, tok, corpus, tasks, drafter, verifier, **kw):
        calls.append((acfg.num_prompts, acfg.max_new_tokens, tuple(tasks), fingerprint(drafter), fingerprint(verifier)))
        return real(acfg, tok, corpus, tasks, drafter, verifier, **kw)

    monkeypatch.setattr(audit, "generative", spy)       # scdf_measure calls the audit's own function
    base = config(assets, tmp_path / "cmp", steps=2, checkpoint_every=2)
    opts = MeasureOptions(**SMALL, ood_corpus="django", ood_options={"root": str(assets / "django")})
    rep = scdf_compare.run_comparison(base, methods=["uniform", "scdf"], seeds=[0], budget=1, n_boot=10,
                                      search={"lr": [1e-2]}, work_dir=str(tmp_path / "runs"), measure=opts)
    tasks = rep["task_names"]
    ver = fingerprint(load(assets / "verifier"))
    assert rep["verifier_unchanged"] and rep["verifier_fingerprint"] == ver
    # generation: the original drafter once, then each chosen drafter, same settings, frozen verifier
    drafters = [fingerprint(load(assets / "drafter"))] + [
        fingerprint(load(tmp_path / "runs" / f"{m}-c0-seed0" / "drafter")) for m in ("uniform", "scdf")]
    assert [c[3] for c in calls] == drafters
    assert {c[:3] for c in calls} == {(2, 3, tuple(tasks))} and {c[4] for c in calls} == {ver}
    g0 = rep["generation_before"]
    speeds = {t: g0["per_task"][t]["measured_speedup"] for t in tasks}
    assert all(s > 0 for s in speeds.values())
    assert g0["disparity"] == pytest.approx(max(speeds.values()) / min(speeds.values()))
    for r in rep["runs"]:
        g = r["generation"]
        after = {t: g["per_task"][t]["measured_speedup_after"] for t in tasks}
        assert {t: g["per_task"][t]["measured_speedup_before"] for t in tasks} == speeds
        assert g["disparity_after"] == pytest.approx(max(after.values()) / min(after.values()))
        assert g["disparity_smaller"] == (g["disparity_after"] < g0["disparity"])
    # out of domain: the tasks the catalogues have ("el" has none), all of their text
    ood = rep["ood"]
    assert ood["task_match"] == {"en": "en", "ru": "ru"} and ood["tasks_missing"] == ["el"]
    _check_ood_figures(assets, tmp_path, base, rep)
    md = (tmp_path / "cmp" / "scdf_compare.md").read_text()
    assert "## Measured generation" in md and "## Out of domain: `django`" in md and "no counterpart for el" in md
    assert f"{g0['disparity']:.3f}" in md


def _check_ood_figures(assets, tmp_path, base, rep):
    """The reported out-of-domain alpha of the scdf run is its drafter's, recomputed here."""
    from transformers import AutoTokenizer

    from specfair import corpus as C
    from specfair import teacher_forced as tf

    c = C.load_corpus("django", root=str(assets / "django"), heldout_fraction=1.0, tasks=["en", "ru"])
    tok = AutoTokenizer.from_pretrained(assets / "verifier")
    win = tf.token_windows(tok, {t: c.tasks[t].heldout for t in ("en", "ru")}, CTX, base.eval_tokens_per_task)
    got = tf.evaluate(load(assets / "verifier"), load(tmp_path / "runs" / "scdf-c0-seed0" / "drafter"), win,
                      temperature=1.0, batch_size=8, device="cpu")
    run = next(r for r in rep["runs"] if r["method"] == "scdf")["ood"]
    for t in ("en", "ru"):
        assert run["per_task"][t]["alpha_after"] == pytest.approx(got.alpha[t], rel=1e-5)
        assert run["per_task"][t]["tokens"] == got.tokens[t] > 0
    agg = rep["aggregate"]["scdf"]["ood"]
    assert agg["gap_closes_all_seeds"] == (run["alpha_variance_change"] < 0)


def test_ood_tasks_match_by_name_then_alias(tmp_path):
    root = write_catalogues(tmp_path / "dj", ("fr", "zh_Hans", "de"))
    c, match, missing = scdf_measure.load_ood_corpus("django", {"root": str(root)}, ["zh_CN", "fr", "el"])
    assert match == {"zh_CN": "zh_Hans", "fr": "fr"} and missing == ["el"]
    assert list(c.tasks) == ["zh_CN", "fr"] and "注销" in c.tasks["zh_CN"].heldout
    assert not c.tasks["fr"].train and len(c.tasks["fr"].heldout) == len(_MESSAGES)   # every item evaluated
    with pytest.raises(ScdfError, match="none of the training tasks"):
        scdf_measure.load_ood_corpus("django", {"root": str(root)}, ["el"])
    with pytest.raises(ScdfError, match="ood corpus 'nope'"):
        scdf_measure.load_ood_corpus("nope", {}, ["fr"])


def test_auto_ood_is_django_when_installed_else_skipped_with_a_note(monkeypatch):
    said = []
    assert scdf_measure.resolve_ood("none", said.append) is None and scdf_measure.resolve_ood(None) is None
    assert scdf_measure.resolve_ood("jsonl", said.append) == "jsonl" and not said
    monkeypatch.setitem(sys.modules, "django", None)     # makes `import django` fail
    assert scdf_measure.resolve_ood("auto", said.append) is None
    assert len(said) == 1 and "pip install" in said[0]


def test_cli_measure_options_and_bad_values(assets, tmp_path, capsys):
    a = cli.parser().parse_args(["scdf", "--compare", "--no-generate", "--ood-corpus", "django",
                                 "--ood-corpus-option", "root=/x", "--generate-prompts", "3"])
    o = cli.measure_options(a)
    assert (o.generate, o.num_prompts, o.ood_corpus, o.ood_options) == (False, 3, "django", {"root": "/x"})
    assert cli.measure_options(cli.parser().parse_args(["scdf", "--generate-seeds", "0,2"])).generate_seeds == [0, 2]
    d = cli.measure_options(cli.parser().parse_args(["scdf", "--compare"]))
    assert d == MeasureOptions() and d.generate and d.ood_corpus == "auto"
    common = ["scdf", "--compare", "--out", str(tmp_path / "o"), "--verifier", str(assets / "verifier"),
              "--drafter", str(assets / "drafter"), "--corpus", "jsonl", "--corpus-option",
              f"path={assets / 'corpus.jsonl'}", "--no-progress"]
    assert cli.main([*common, "--generate-prompts", "0"]) == 2
    assert "num_prompts" in capsys.readouterr().err
    assert cli.main([*common, "--generate-seeds", "first"]) == 2
    assert "seeds must be comma-separated integers" in capsys.readouterr().err
    assert cli.main([*common, "--ood-corpus", "nope"]) == 2
    assert "ood corpus 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "scdf_compare.json").exists()
    with pytest.raises(ScdfError, match="generation"):
        scdf_measure.generation_config(config(assets, tmp_path), MeasureOptions(max_new_tokens=0))
