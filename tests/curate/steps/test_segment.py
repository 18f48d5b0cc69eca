"""Each segmenter's words on sentences whose words are known, and the check before a run."""

from __future__ import annotations

import pytest

from raylm.config import ConfigError
from raylm.curate.steps import segment
from raylm.curate.steps.quality import Quality, QualityConfig


@pytest.mark.parametrize(("name", "text", "words"), [
    ("whitespace", "The cat sat on the mat.", ["The", "cat", "sat", "on", "the", "mat."]),
    ("korean", "대한민국은 민주공화국이다.", ["대한민국은", "민주공화국이다."]),
    ("sudachi", "東京タワーは高い。", ["東京", "タワー", "は", "高い。"]),
    ("jieba", "我爱北京天安门。", ["我", "爱", "北京", "天安门。"]),
    ("thai", "การประมวลผลภาษาธรรมชาติ เป็นสาขาหนึ่ง", ["การประมวลผล", "ภาษาธรรมชาติ", "เป็น", "สาขา", "หนึ่ง"]),
])
def test_words_of_known_sentences(name, text, words):
    assert segment.get(name).words(text) == words


def test_korean_morphemes_split_particles_and_endings():
    morphemes = segment.get("korean").morphemes("대한민국은 민주공화국이다.")
    assert morphemes[:2] == ["대한민국", "은"]
    assert "이" in morphemes and "다" in morphemes


def test_lines_and_long_lines_are_segmented_whole():
    seg = segment.get("jieba")
    assert seg.words("北京\n\n天安门") == ["北京", "天安门"]
    long = "我爱北京天安门。" * 2000  # longer than one analyser call takes
    assert len(seg.words(long)) == 4 * 2000


def test_punctuation_sticks_to_the_word_before_it():
    assert segment.glue_punctuation(["東京", "、", " ", "大阪", "。", "」"]) == ["東京、", "大阪。」"]
    assert segment.glue_punctuation(["「", "東京"]) == ["「", "東京"]


@pytest.mark.parametrize(("text", "lang"), [
    ("대한민국은 민주공화국이다.", "ko"),
    ("悠久한 歷史와 傳統에 빛나는 우리들 大韓國民은 己未三一運動으로 大韓民國을 建立하여", "ko"),  # Hanja-mixed Korean
    ("東京タワーは高い。", "ja"),
    ("我爱北京天安门。", "zh"),
    ("การประมวลผลภาษาธรรมชาติ", "th"),
    ("The cat sat on the mat.", None),
    ("Кошка сидела на ковре.", None),
])
def test_script_names_the_language(text, lang):
    assert segment.guess_script_lang(text) == lang


def test_script_segmenter_follows_the_text():
    assert segment.for_text("script", "我爱北京天安门。").name == "jieba"
    assert segment.for_text("script", "Кошка сидела на ковре.").name == "whitespace"
    assert segment.for_text("sudachi", "The cat").name == "sudachi"


def test_a_missing_segmenter_package_fails_when_the_step_is_built(monkeypatch):
    Quality.check_available(QualityConfig())  # every segmenter of the shipped table installs
    real = segment.importlib.util.find_spec
    monkeypatch.setattr(segment.importlib.util, "find_spec", lambda name: None if name == "rjieba" else real(name))
    with pytest.raises(ConfigError, match=r"segmenter 'jieba' needs rjieba \(pip install rjieba\)"):
        Quality.check_available(QualityConfig())
    with pytest.raises(ConfigError, match="is not one of"):
        segment.get("mecab")
