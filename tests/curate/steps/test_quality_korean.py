"""The rules for Korean documents: Hangul share, jamo noise, eojeol outliers, sentence endings."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raylm.curate.steps import quality_rules as rules
from raylm.curate.steps.quality import Quality, QualityConfig
from tests.corpora import KOLAW

# The preamble of the 1948 Constitution, in its mixed Hangul/Hanja script (public domain).
PREAMBLE_1948 = """\
悠久한 歷史와 傳統에 빛나는 우리들 大韓國民은 己未三一運動으로 大韓民國을 建立하여 世界에 宣布한 偉大한 \
獨立精神을 繼承하여 이제 民主獨立國家를 再建함에 있어서 正義人道와 同胞愛로써 民族의 團結을 鞏固히 하며 \
모든 社會的 弊習을 打破하고 民主主義諸制度를 樹立하여 政治, 經濟, 社會, 文化의 모든 領域에 있어서 各人의 \
機會를 均等히 하고 能力을 最高度로 發揮케 하며 各人의 責任과 義務를 完遂케 하여 안으로는 國民生活의 均等한 \
向上을 期하고 밖으로는 恒久的인 國際平和의 維持에 努力하여 우리들과 우리들의 子孫의 安全과 自由와 幸福을 \
永遠히 確保할 것을 決意하고 우리들의 正當 또 自由로히 選擧된 代表로서 構成된 國會에서 檀紀 4281年 7月 \
12日 이 憲法을 制定한다."""


def korean() -> str:
    if not KOLAW.is_file():
        pytest.skip("konlpy's constitution corpus is not installed")
    paragraphs = KOLAW.read_text(encoding="utf-8").split("\n\n")
    return "\n\n".join("\n".join(line.strip() for line in p.splitlines()) for p in paragraphs[2:4])


def judge(text: str, lang: str | None = "ko", cfg: QualityConfig | None = None) -> str | None:
    batch = pa.table({"id": ["d"], "text": pa.array([text], pa.large_string()), "lang": [lang]})
    return Quality(cfg or QualityConfig()).apply(batch).reasons[0]


def no_other_rules() -> QualityConfig:
    cfg = QualityConfig()
    for group in ("length", "gopher_repetition", "gopher", "c4", "fineweb"):
        getattr(cfg, group).enabled = False
    return cfg


def test_the_constitution_is_kept():
    assert judge(korean()) is None


def test_hanja_mixed_statute_is_korean_and_passes_the_korean_rules():
    step = Quality(QualityConfig())
    assert step.language(PREAMBLE_1948, None) == "ko"  # not Chinese, though half its letters are Han
    assert judge(PREAMBLE_1948, None, no_other_rules()) is None
    words = rules.Doc(PREAMBLE_1948, step.for_lang("ko")[1]).words
    assert words == PREAMBLE_1948.split()  # eojeol, not one word per Hanja
    assert "大韓國民은" in words


def test_text_mostly_in_english_under_a_korean_label_fails_hangul_share():
    english = "The quick brown fox jumps over the lazy dog while the cat watches from the window. " * 5
    assert judge(english + "이 문장만 한국어입니다.", "ko", no_other_rules()) == "ko_hangul_share"


def test_korean_prose_with_english_terms_and_code_is_korean():
    prose = ("Python의 dict 타입은 key-value 쌍을 저장합니다. 예를 들어 counts.get(word, 0) 은 없는 키에 0을 "
             "돌려줍니다. for 문으로 items() 를 돌면 키와 값을 함께 받습니다. 정렬하려면 sorted(counts) 를 씁니다.")
    assert judge(prose, "ko", no_other_rules()) is None


def test_jamo_noise_fails():
    chat = "\n".join(f"오늘 경기 진짜 대박이었다 ㅋㅋㅋㅋㅋ ㅠㅠ 다음에도 같이 보자 ㅎㅎ {i}" for i in range(10))
    assert judge(chat, "ko", no_other_rules()) == "ko_jamo_noise"
    assert judge(korean(), "ko", no_other_rules()) is None


def test_text_without_spaces_fails_long_eojeol():
    squeezed = "\n".join(line.replace(" ", "") for line in korean().split("\n"))
    assert judge(squeezed, "ko", no_other_rules()) == "ko_long_eojeol"


def test_korean_final_endings_end_a_line_for_c4():
    cfg = QualityConfig()
    cfg.c4.filter_no_terminal_punct = True
    text = korean().replace("민주공화국이다.", "민주공화국이다")  # the ending alone, no period
    kept = Quality(cfg).check(text, "ko")[1]
    assert "대한민국은 민주공화국이다\n" in kept
    assert "제1장 총강" not in kept  # a heading has no ending: removed
