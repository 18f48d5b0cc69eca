"""The normalize step: HTML to text, Unicode forms, control characters, whitespace."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raylm.config import ConfigError, from_dict
from raylm.curate.steps import step_class
from raylm.curate.steps.normalize import Normalize, NormalizeConfig, looks_like_html


def run(texts: list[str | None], **cfg):
    batch = pa.table(
        {"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, type=pa.large_string())}
    )
    result = Normalize(NormalizeConfig(**cfg)).apply(batch)
    assert result.table.num_rows == len(texts)
    assert result.table.column("id").to_pylist() == batch.column("id").to_pylist()
    assert result.table.schema.field("text").type == pa.large_string()
    return result


def out(text: str, **cfg) -> str:
    return run([text], **cfg).table.column("text")[0].as_py()


def test_registry_builds_the_step():
    assert step_class("normalize") is Normalize


def test_nfkc_folds_fullwidth_and_nfc_does_not():
    assert out("ＡＢＣ １２３", unicode_form="NFKC") == "ABC 123"
    assert out("ＡＢＣ") == "ＡＢＣ"  # the default NFC keeps fullwidth letters
    assert out("ＡＢＣ", unicode_form="none") == "ＡＢＣ"


def test_nfc_composes_decomposed_hangul_and_accents():
    decomposed_korean = "\u1112\u1161\u11ab\u1100\u1173\u11af"  # 한글 as conjoining jamo
    assert out(decomposed_korean) == "한글"
    assert out("Cafe\u0301") == "Café"


def test_korean_stays_intact_under_nfkc():
    text = "대한민국은 민주공화국이다. ㅋㅋㅋ 정말 ㅎㅎ"
    assert out(text, unicode_form="NFKC") == text  # compatibility jamo are not decomposed


def test_html_is_converted_and_script_removed():
    page = """<!DOCTYPE html><html><head><title>Site title</title><style>p {color: red}</style></head>
    <body><script>var tracking = "secret";</script><noscript>Enable JS</noscript>
    <h1>Heading</h1><p>First   paragraph with
    <b>bold</b> text &amp; an entity &lt;tag&gt;.</p><div>Second block</div><ul><li>one</li><li>two</li></ul>
    </body></html>"""
    result = run([page])
    text = result.table.column("text")[0].as_py()
    assert "tracking" not in text and "secret" not in text
    assert "color" not in text and "Enable JS" not in text and "Site title" not in text
    assert "<" not in text.replace("<tag>", "")
    assert "First paragraph with bold text & an entity <tag>." in text
    assert text.split("\n") == [
        "Heading",
        "",
        "First paragraph with bold text & an entity <tag>.",
        "",
        "Second block",
        "one",
        "two",
    ]
    assert result.counters == {"changed": 1, "html": 1}


def test_plain_text_with_angle_brackets_is_not_html():
    for text in ["if a < b and c > d then stop", "x<y and z>w", "Use a<b>c for math", "1 &amp; 2"]:
        assert not looks_like_html(text)
        assert out(text) == text
    assert looks_like_html("<p>hello</p>")


def test_unclosed_head_does_not_hide_the_body():
    assert out("<html><head><title>T</title><body><p>Body text.</p><p>More.</p>") == "Body text.\n\nMore."


def test_html_switch_off_keeps_tags():
    assert out("<p>hello</p><p>world</p>", html=False) == "<p>hello</p><p>world</p>"
    assert out("<p>hello</p><p>world</p>") == "hello\n\nworld"


def test_control_and_zero_width_characters_are_removed():
    text = "a\x00b\x07c\u200bd\ufeffe\x85f\tg\r\nh\ri"
    assert out(text, whitespace=False) == "abcdef\tg\nh\ni"
    assert out(text, control_chars=False, whitespace=False) == text


def test_whitespace_is_collapsed_but_korean_kept():
    text = "  대한민국은   민주공화국이다. \t\n\n\n\n제2조  국민의\t요건은 법률로 정한다.   \n"
    assert out(text) == "대한민국은 민주공화국이다.\n\n제2조 국민의 요건은 법률로 정한다."
    assert out(text, whitespace=False) == text


def test_empty_docs_are_dropped_and_counted():
    result = run(["hello", "  \n\t ", "<p> </p><div></div>", "\u200b", None, "ok"])
    assert result.reasons == [None, "empty", "empty", "empty", "empty", None]
    assert result.counters["html"] == 1
    assert result.counters["changed"] == 3  # None reads as ""
    kept = run(["  "], drop_empty=False)
    assert kept.reasons == [None]


def test_unchanged_batch_is_counted_as_unchanged():
    result = run(["already clean text.", "Second line\nand more."])
    assert result.counters == {"changed": 0, "html": 0}
    assert result.reasons == [None, None]


def test_config_validation():
    assert from_dict(NormalizeConfig, {"unicode_form": "NFKC"}).unicode_form == "NFKC"
    with pytest.raises(ConfigError, match="unicode_form"):
        from_dict(NormalizeConfig, {"unicode_form": "NFD"})
    with pytest.raises(ConfigError, match="unicode_form"):
        NormalizeConfig(unicode_form="NFD").validate()  # type: ignore[arg-type]


def test_whitespace_keeps_indentation_of_code():
    text = "def f():\n    if x:\n        return  1   \n\n\n\nend"
    out = Normalize(NormalizeConfig()).apply(
        pa.table({"id": ["a"], "text": pa.array([text], type=pa.large_string())})).table
    assert out.column("text")[0].as_py() == "def f():\n    if x:\n        return 1\n\nend"
