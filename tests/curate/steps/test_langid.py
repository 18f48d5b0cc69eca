"""The langid step on real Korean, English, Japanese and Chinese text, offline."""

from __future__ import annotations

import socket

import pyarrow as pa
import pytest

from raylm.config import ConfigError, from_dict
from raylm.curate.steps import step_class
from raylm.curate.steps.langid import LangID, LangIDConfig, bundled_model_path
from tests.corpora import KOLAW

ENGLISH = (
    "The history of the printing press begins in the middle of the fifteenth century, when Johannes "
    "Gutenberg, a goldsmith from Mainz, combined several existing technologies into a single working "
    "system.\nWithin a few decades, printing shops had opened in more than two hundred cities."
)
JAPANESE = (
    "富士山は静岡県と山梨県にまたがる活火山で、標高は三千七百七十六メートルである。\n"
    "日本で最も高い山として知られ、古くから信仰の対象とされてきた。"
)
CHINESE = (
    "造纸术是中国古代的四大发明之一。东汉时期，蔡伦总结了前人的经验，用树皮、麻头、破布和旧渔网等原料制成了纸张。\n"
    "这种纸质地轻薄，价格低廉，很快就取代了竹简和丝帛，成为人们书写的主要材料。"
)
CONSTITUTION = KOLAW


@pytest.fixture(scope="module")
def korean() -> str:
    if not CONSTITUTION.is_file():
        pytest.skip("konlpy's constitution corpus is not installed")
    return CONSTITUTION.read_text(encoding="utf-8").split("\n\n")[2]  # chapter 1, several lines


def run(texts: list[str], cfg: LangIDConfig | None = None):
    batch = pa.table(
        {"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, type=pa.large_string())}
    )
    step = LangID(cfg or LangIDConfig())
    step.setup()
    result = step.apply(batch)
    assert result.table.num_rows == len(texts)
    assert len(result.reasons) == len(texts)
    return result


def langs(result) -> list[str]:
    return result.table.column("lang").to_pylist()


def test_registry_builds_the_step_as_an_actor():
    assert step_class("langid") is LangID
    assert LangID.needs_actor is True


def test_real_text_gets_its_language(korean):
    assert "\n" in korean
    result = run([korean, ENGLISH, JAPANESE, CHINESE])
    assert langs(result) == ["ko", "en", "ja", "zh"]
    assert result.reasons == [None] * 4
    scores = result.table.column("lang_score")
    assert scores.type == pa.float32()
    assert all(0.5 < s <= 1.0 for s in scores.to_pylist())
    assert result.table.column("lang").type == pa.string()
    assert result.counters["lang_ko"] == 1 and result.counters["lang_en"] == 1


def test_keep_list_drops_other_languages(korean):
    result = run([korean, ENGLISH, JAPANESE, CHINESE], LangIDConfig(keep=["ko", "en"]))
    assert result.reasons == [None, None, "lang_not_kept", "lang_not_kept"]
    assert langs(result) == ["ko", "en", "ja", "zh"]  # the columns are filled for dropped rows too


def test_min_score_drops_unsure_predictions(korean):
    texts = [korean, "ok"]
    loose = run(texts)
    score_short = loose.table.column("lang_score")[1].as_py()
    score_korean = loose.table.column("lang_score")[0].as_py()
    assert score_short < score_korean
    threshold = (score_short + score_korean) / 2
    strict = run(texts, LangIDConfig(min_score=threshold))
    assert strict.reasons == [None, "lang_low_score"]


def test_documents_without_letters_are_undetermined():
    result = run(["12345 67890 !!! ---", "", ENGLISH])
    assert langs(result)[:2] == ["und", "und"]
    assert result.table.column("lang_score").to_pylist()[:2] == [0.0, 0.0]
    assert result.reasons == [None, None, None]
    kept = run(["12345", ENGLISH], LangIDConfig(keep=["en"]))
    assert kept.reasons == ["lang_not_kept", None]
    assert run(["12345"], LangIDConfig(keep=["en", "und"])).reasons == [None]


def test_only_the_first_max_chars_are_classified(korean):
    text = ENGLISH + "\n" + korean * 3
    assert langs(run([text])) == ["ko"]
    assert langs(run([text], LangIDConfig(max_chars=len(ENGLISH)))) == ["en"]


def test_uppercase_english_is_still_english():
    # lid.176 reads this all-caps line as German (0.40); lower-cased it is English.
    result = run(["PLEASE READ THE INSTRUCTIONS BEFORE USE", ENGLISH.upper()])
    assert langs(result) == ["en", "en"]
    assert result.table.column("lang_score")[0].as_py() > 0.6


def test_model_loads_and_predicts_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("langid tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert bundled_model_path().is_file()
    assert langs(run([ENGLISH])) == ["en"]
    # model_path loads a local file the same way
    assert langs(run([ENGLISH], LangIDConfig(model_path=str(bundled_model_path())))) == ["en"]


def test_missing_model_file_fails_at_setup(tmp_path):
    step = LangID(LangIDConfig(model_path=str(tmp_path / "lid.176.bin")))
    with pytest.raises(FileNotFoundError, match="lid.176.bin"):
        step.setup()


def test_config_checks():
    with pytest.raises(ConfigError, match="model_path"):
        from_dict(LangIDConfig, {"model": "full"})
    with pytest.raises(ConfigError, match="min_score"):
        from_dict(LangIDConfig, {"min_score": 1.5})
    with pytest.raises(ConfigError, match="max_chars"):
        from_dict(LangIDConfig, {"max_chars": 0})
    with pytest.raises(ConfigError, match="keep"):
        from_dict(LangIDConfig, {"keep": ["__label__ko"]})
    cfg = from_dict(LangIDConfig, {"keep": "ko,en", "model": "full", "model_path": "/models/lid.176.bin"})
    assert cfg.keep == ["ko", "en"] and cfg.model == "full"
