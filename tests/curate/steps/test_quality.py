"""The quality step on real prose (English, Korean, Chinese, Japanese) and on typical junk."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

import raylm.curate.steps.quality_rules as rules
from raylm.config import ConfigError, from_dict
from raylm.curate.steps import step_class
from raylm.curate.steps.quality import Quality, QualityConfig
from tests.corpora import KOLAW

ENGLISH = """\
The history of the printing press begins in the middle of the fifteenth century, when Johannes \
Gutenberg, a goldsmith from Mainz, combined several existing technologies into a single working \
system. His movable metal type, oil-based ink and wooden press made it possible to produce books \
far more quickly and cheaply than scribes had ever managed.

Within a few decades, printing shops had opened in more than two hundred cities across Europe. \
Historians estimate that millions of volumes were printed before the year 1500, and the spread of \
cheap books changed the way that people learned, argued and worshipped. Scholars could compare \
identical copies of a text, which made it easier to correct errors and to build on the work of others.

The consequences were not only intellectual. Printers became merchants with a stake in what people \
wanted to read, and governments soon tried to control what could be published. The press therefore \
played a part in the Reformation, in the growth of science and in the slow rise of literacy among \
ordinary people."""

CHINESE = """\
造纸术是中国古代的四大发明之一。东汉时期，蔡伦总结了前人的经验，用树皮、麻头、破布和旧渔网等原料制成了纸张。\
这种纸质地轻薄，价格低廉，很快就取代了竹简和丝帛，成为人们书写的主要材料。

造纸术后来经由朝鲜和日本向东传播，又沿着丝绸之路向西传到了阿拉伯世界。公元八世纪，撒马尔罕建立了第一家造纸作坊。\
此后，这项技术逐渐传入欧洲，为印刷术的普及和知识的传播奠定了基础。

今天，纸张仍然是我们日常生活中不可缺少的物品。虽然电子媒体越来越普及，但书籍、报纸和包装材料依然大量使用纸张。\
人们也在不断改进造纸工艺，以减少对森林资源的消耗和对环境的污染。"""

JAPANESE = """\
富士山は静岡県と山梨県にまたがる活火山で、標高は三千七百七十六メートルである。日本で最も高い山として知られ、\
古くから信仰の対象とされてきた。江戸時代には多くの人々が富士講と呼ばれる集団を作り、山頂を目指して登った。

二〇一三年には、富士山は「信仰の対象と芸術の源泉」として世界文化遺産に登録された。葛飾北斎の浮世絵をはじめ、\
多くの芸術作品に描かれてきたことが評価されたのである。夏の登山シーズンには、毎年二十万人以上の登山者が訪れる。

一方で、登山者の増加によるごみの問題や、噴火の危険性についての議論も続いている。地元の自治体は入山料の導入や\
登山道の整備を進め、自然環境の保全と観光の両立を図っている。"""

CONSTITUTION = KOLAW


def korean_text() -> str:
    """Chapters 1 and 2 of the Korean constitution (real text), with lines stripped."""
    if not CONSTITUTION.is_file():
        pytest.skip("konlpy's constitution corpus is not installed")
    paragraphs = CONSTITUTION.read_text(encoding="utf-8").split("\n\n")
    return "\n\n".join("\n".join(line.strip() for line in p.splitlines()) for p in paragraphs[2:4])


def run(texts: list[str], cfg: QualityConfig | None = None):
    batch = pa.table(
        {"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, type=pa.large_string())}
    )
    result = Quality(cfg or QualityConfig()).apply(batch)
    assert result.table.num_rows == len(texts)
    assert len(result.reasons) == len(texts)
    return result


def reason(text: str, cfg: QualityConfig | None = None) -> str | None:
    return run([text], cfg).reasons[0]


# --- real text is kept -------------------------------------------------------------------------


def test_registry_builds_the_step():
    assert step_class("quality") is Quality


@pytest.mark.parametrize("name", ["english", "chinese", "japanese"])
def test_real_prose_is_kept(name):
    text = {"english": ENGLISH, "chinese": CHINESE, "japanese": JAPANESE}[name]
    result = run([text])
    assert result.reasons == [None]
    assert result.table.column("text")[0].as_py() == text  # nothing for C4 to remove


def test_korean_constitution_is_kept_and_only_headings_are_removed():
    text = korean_text()
    result = run([text])
    assert result.reasons == [None]
    kept = result.table.column("text")[0].as_py()
    assert "제1조 ① 대한민국은 민주공화국이다." in kept
    assert "제1장 총강" not in kept  # a heading without terminal punctuation: C4 removes the line
    assert result.counters["changed"] == 1
    assert result.counters["c4_lines_removed"] >= 1


def test_each_language_gets_its_own_words():
    step = Quality(QualityConfig())
    for code, text, min_words in (("zh", CHINESE, 100), ("ja", JAPANESE, 100), ("en", ENGLISH, 150)):
        _, lang = step.for_lang(step.language(text, None))  # no lang column: read from the script
        assert lang.code == code
        words = rules.Doc(text, lang).words
        assert len(words) > min_words
    zh_words = rules.Doc(CHINESE, step.for_lang("zh")[1]).words
    assert "造纸术" in zh_words and "蔡伦" in zh_words  # real words, not one Han character each
    assert step.language("Der Text ist deutsch und lang genug.", "de") == "de"
    assert step.language("text", "zh-cn") == "zh" and step.language("text", "und") == "en"


def test_counters_say_which_language_judged_each_document():
    batch = pa.table({"id": ["a", "b", "c"], "text": pa.array([ENGLISH, CHINESE, JAPANESE], pa.large_string()),
                      "lang": ["en", None, "ja"]})
    result = Quality(QualityConfig()).apply(batch)
    assert result.reasons == [None, None, None]
    assert {k: v for k, v in result.counters.items() if k.startswith("judged_as_")} == {
        "judged_as_en": 1, "judged_as_zh": 1, "judged_as_ja": 1}


# --- junk is dropped with the rule that caught it ----------------------------------------------


def test_short_document_fails_length():
    assert reason("Too short to be useful.") == "length_min_chars"


def test_repeated_lines_fail_repetition():
    line = "Click here to subscribe to our newsletter and get the best deals today."
    text = "\n".join([line] * 10 + [ENGLISH.split("\n\n")[0]])
    assert reason(text) == "rep_dup_line_frac"


def test_repeated_paragraphs_fail_repetition():
    para = ENGLISH.split("\n\n")[0]
    assert reason("\n\n".join([para, para, para])) == "rep_dup_para_frac"


def test_repeated_phrase_fails_top_ngram():
    text = " ".join(["buy cheap watches online"] * 30) + ". " + ENGLISH
    assert reason(text).startswith("rep_top_")


def test_lorem_ipsum_fails_c4():
    lorem = (
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
        "labore et dolore magna aliqua."
    )
    assert reason(ENGLISH + "\n" + lorem) == "c4_lorem_ipsum"


def test_code_fails_c4_curly_bracket():
    assert reason(ENGLISH + '\nThe config is written as {"key": "value"} in the file.') == "c4_curly_bracket"


BULLETS = """\
- Fresh organic apples from local farms, picked this week
- Handmade leather wallet with six card slots and a coin pocket
- Stainless steel water bottle that keeps drinks cold for a day
- Wireless headphones with noise cancelling and long battery life
- Cotton bed sheets in white, grey, navy and forest green
- A set of kitchen knives with a wooden storage block
- Children's picture book about a fox who learns to swim
- Garden hose of twenty metres with an adjustable spray nozzle
- Ceramic coffee mug painted by hand in a small studio
- Yoga mat with a non-slip surface and a carrying strap
- Desk lamp with three brightness levels and a USB port
- Wool socks for hiking, sold in packs of three pairs
- Notebook with dotted pages and a hard cover in red
- Umbrella that folds small enough to fit in any bag"""


def test_bullet_list_fails_gopher():
    assert reason(BULLETS) == "gopher_bullet_lines"
    assert reason(BULLETS.replace("- ", "")) != "gopher_bullet_lines"


def test_page_of_symbols_fails():
    page = " ".join(["### *** ... ### !!! >>> ###", "+++ ### === ... ||| ###"] * 20)
    assert reason(page) is not None
    cfg = QualityConfig()
    cfg.gopher_repetition.enabled = False
    assert reason(page, cfg) == "gopher_word_count"  # no word with a letter or digit in it
    hashes = " ".join(f"#{word}" for word in ENGLISH.split())
    assert reason(hashes) == "gopher_symbol_ratio"


def test_english_word_salad_without_stop_words_fails():
    text = " ".join(f"product{i % 7} shipping quality price" for i in range(30)) + "."
    cfg = QualityConfig()
    cfg.gopher_repetition.enabled = False
    assert reason(text, cfg) == "gopher_stop_words"


def test_korean_stop_words_are_particles_and_endings_among_morphemes():
    text = korean_text()
    step = Quality(QualityConfig())
    _, lang = step.for_lang("ko")
    assert lang.stop_words_on == "morphemes" and "은" in lang.stop_words
    assert rules.stop_word_count(rules.Doc(text, lang), 10) >= 10
    cfg = QualityConfig()
    cfg.gopher.min_stop_words = 10_000  # set in the config: applies to Korean too
    assert reason(text, cfg) == "gopher_stop_words"
    # English's stop words would have dropped it: the table, not English, decides for Korean
    assert rules.stop_word_count(rules.Doc(text, rules.ENGLISH), 2) == 0


GERMAN = """Die Geschichte des Buchdrucks beginnt in der Mitte des fünfzehnten Jahrhunderts, als Johannes Gutenberg, ein Goldschmied aus Mainz, mehrere bekannte Techniken zu einem funktionierenden System verband. Seine beweglichen Lettern aus Metall, die Druckfarbe auf Ölbasis und die hölzerne Presse machten es möglich, Bücher viel schneller und billiger herzustellen, als es die Schreiber je vermocht hatten.

Innerhalb weniger Jahrzehnte gab es Druckereien in mehr als zweihundert Städten Europas. Historiker schätzen, dass vor dem Jahr 1500 Millionen von Bänden gedruckt wurden, und die Verbreitung billiger Bücher veränderte die Art, wie Menschen lernten, stritten und beteten. Gelehrte konnten identische Exemplare eines Textes vergleichen, was es leichter machte, Fehler zu korrigieren."""


def test_german_is_judged_by_german_stop_words_from_the_lang_column():
    batch = pa.table({"id": ["de", "as_en"], "text": pa.array([GERMAN, GERMAN], pa.large_string()),
                      "lang": ["de", "en"]})
    assert Quality(QualityConfig()).apply(batch).reasons == [None, "gopher_stop_words"]


def test_no_terminal_punctuation_fails_c4_sentences():
    text = "\n".join(ENGLISH.replace(".", "").split("\n"))
    assert reason(text) == "c4_too_few_sentences"


def test_fineweb_short_lines_and_line_punct():
    cfg = QualityConfig()
    cfg.c4.enabled = False
    menu = "Home, About us, Products, Contact, Careers, Press, Blog, Shop, Help, Sitemap, Login, Search"
    text = ENGLISH.split("\n\n")[0] + "\n" + menu.replace(", ", "\n")
    assert reason(text, cfg) == "fineweb_line_punct"
    cfg.fineweb.line_punct_thr = 0.0
    assert reason(text, cfg) == "fineweb_short_lines"


# --- thresholds are configurable ---------------------------------------------------------------


def test_tightening_a_threshold_drops_a_doc_that_passes_by_default():
    assert reason(ENGLISH) is None
    cfg = QualityConfig()
    cfg.gopher.min_words = 500
    assert reason(ENGLISH, cfg) == "gopher_word_count"
    cfg = QualityConfig()
    cfg.length.min_chars = 5000
    assert reason(ENGLISH, cfg) == "length_min_chars"
    cfg = QualityConfig()
    cfg.gopher_repetition.top_ngrams = {2: 0.005}
    assert reason(ENGLISH, cfg) == "rep_top_2gram"
    cfg = QualityConfig()
    cfg.c4.min_sentences = 50
    assert reason(ENGLISH, cfg) == "c4_too_few_sentences"


def test_disabling_groups_keeps_docs():
    cfg = QualityConfig()
    for group in ("length", "gopher", "gopher_repetition", "c4", "fineweb"):
        getattr(cfg, group).enabled = False
    text = "lorem ipsum {"
    result = run([text], cfg)
    assert result.reasons == [None]
    assert result.table.column("text")[0].as_py() == text


def test_c4_filter_lines_off_keeps_text():
    text = ENGLISH + "\nShare this page"
    kept = run([text]).table.column("text")[0].as_py()
    assert kept == ENGLISH
    cfg = QualityConfig()
    cfg.c4.filter_lines = False
    assert run([text], cfg).table.column("text")[0].as_py() == text


def test_config_from_dict_and_validation():
    cfg = from_dict(
        QualityConfig, {"gopher": {"min_words": 10}, "gopher_repetition": {"dup_ngrams": {"5": 0.2}}}
    )
    assert cfg.gopher.min_words == 10 and cfg.gopher_repetition.dup_ngrams == {5: 0.2}
    with pytest.raises(ConfigError, match="min_chars"):
        from_dict(QualityConfig, {"length": {"min_chars": 100, "max_chars": 10}})
    with pytest.raises(ConfigError, match="dup_line_frac"):
        from_dict(QualityConfig, {"gopher_repetition": {"dup_line_frac": 1.5}})
    with pytest.raises(ConfigError):
        QualityConfig(gopher=dataclasses.replace(QualityConfig().gopher, max_words=1)).validate()


def test_batch_mixes_kept_and_dropped_in_order():
    junk = "\n".join(["Buy now! Best price guaranteed today only."] * 20)
    result = run([ENGLISH, junk, CHINESE, "", JAPANESE])
    assert result.reasons == [None, "rep_dup_line_frac", None, "length_min_chars", None]
    assert result.table.column("id").to_pylist() == ["d0", "d1", "d2", "d3", "d4"]
