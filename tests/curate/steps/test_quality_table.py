"""The shipped per-language table, and tables that fail validation."""

from __future__ import annotations

import pytest
import yaml

from raylm.config import ConfigError, from_dict
from raylm.curate.steps import quality_table
from raylm.curate.steps.quality import Quality, QualityConfig

LANGS = ("en", "ko", "ja", "zh", "de", "fr", "es")


def test_the_shipped_table_has_every_language_fitted():
    table = quality_table.load("builtin", QualityConfig)
    assert set(LANGS) | {"*"} <= set(table.languages)
    assert table.languages["ko"].segmenter == "korean" and table.languages["ja"].segmenter == "sudachi"
    assert table.languages["zh"].segmenter == "jieba" and table.languages["*"].segmenter == "script"
    for lang in LANGS[1:]:
        entry = table.languages[lang]
        assert entry.thresholds and entry.stop_words, lang
        assert set(entry.thresholds) <= set(entry.fit), lang  # every threshold says how it was fitted
    # a denser script: fewer characters, fewer (longer) words per page than English
    assert table.languages["zh"].thresholds["length.min_chars"] < QualityConfig().length.min_chars
    assert table.languages["zh"].thresholds["fineweb.short_line_length"] < QualityConfig().fineweb.short_line_length
    # Thai has no sentence punctuation: its sentence rules are off, and the table says so
    assert "c4_too_few_sentences" in table.languages["th"].rules_off


def write(tmp_path, languages: dict) -> str:
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"languages": {"*": {"segmenter": "script"}, **languages}}, allow_unicode=True))
    return str(path)


@pytest.mark.parametrize(("entry", "message"), [
    ({"thresholds": {"gopher_repetition.dup_line_frac": 1.5}}, r"language 'ko'.*dup_line_frac: 1.5 is not a fraction"),
    ({"thresholds": {"gopher.min_wrds": 3}}, r"language 'ko', threshold 'gopher.min_wrds' is not a threshold"),
    ({"thresholds": {"gopher.min_words": "many"}}, r"language 'ko', threshold 'gopher.min_words': 'many' is not a number"),
    ({"thresholds": {"gopher.max_words": 10}}, r"language 'ko', thresholds: gopher.max_words: 10 is below min_words"),
    ({"segmenter": "mecab"}, r"language 'ko', segmenter: 'mecab' is not one of"),
    ({"rules_off": ["gopher_vibes"]}, r"language 'ko', rules_off: 'gopher_vibes' is not one of"),
    ({"stop_words_on": "morphemes"}, r"language 'ko', stop_words_on: morphemes needs the korean segmenter"),
    ({"thresholds": {"c4.min_sentences": 2}, "colour": "blue"}, r"language 'ko': unknown key 'colour'"),
])
def test_a_bad_table_names_the_language_and_key(tmp_path, entry, message):
    path = write(tmp_path, {"ko": entry})
    with pytest.raises(ConfigError, match=message):
        from_dict(QualityConfig, {"table": path}, "steps[2].quality")


def test_a_table_needs_the_fallback(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("languages: {en: {segmenter: whitespace}}\n")
    with pytest.raises(ConfigError, match=r"language '\*' \(every other language\) is missing"):
        quality_table.load(path, QualityConfig)


def test_a_threshold_set_in_the_config_wins_for_every_language(tmp_path):
    path = write(tmp_path, {"ko": {"segmenter": "korean", "thresholds": {"gopher.min_words": 20, "c4.min_sentences": 2}}})
    cfg = from_dict(QualityConfig, {"table": path, "gopher": {"min_words": 7}})
    ko, _ = Quality(cfg).for_lang("ko")
    assert ko.gopher.min_words == 7  # set by the user
    assert ko.c4.min_sentences == 2  # left at its default: the table's
    assert Quality(cfg).for_lang("xx")[0].c4.min_sentences == QualityConfig().c4.min_sentences  # fallback: English
    off = from_dict(QualityConfig, {"table": path, "fitted_thresholds": False})
    assert Quality(off).for_lang("ko")[0].c4.min_sentences == QualityConfig().c4.min_sentences
