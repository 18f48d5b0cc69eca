"""Tokenizer training on a Ray dataset of real Korean and English text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.config import ConfigError, from_dict
from raylm.data.tokenizer import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    TokenizerError,
    _split_batch,
    detect_script,
    fertility,
    load_tokenizer,
    special_ids,
    tokenizer_hash,
    train_tokenizer,
)
from tests.corpora import KONLPY_CORPUS

CORPUS = KONLPY_CORPUS

KO_SENTENCES = [
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.\n\n  제2조  ",
]
EN_SENTENCES = [
    "The quick brown fox jumps over the lazy dog; it was 1,234 metres away.",
    "def f(x):\n    return x  # indented code\tand a tab\n",
]
RARE = "이모지 😀 와 희귀 한자 龘 그리고 ＡＢＣ full-width, é and ß."


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    if not (CORPUS / "kolaw/constitution.txt").is_file():
        pytest.skip("konlpy's corpora are not installed")
    from pydoc_data.topics import topics

    ko = paragraphs((CORPUS / "kolaw/constitution.txt").read_text(encoding="utf-8"))
    for p in sorted((CORPUS / "kobill").glob("*.txt")):
        ko += paragraphs(p.read_text(encoding="utf-8"))
    en = [p for v in topics.values() for p in paragraphs(v)]
    return {"ko": ko, "en": en}


@pytest.fixture(scope="module")
def curated(texts, tmp_path_factory) -> Path:
    """A curated output folder: data/*.parquet plus rejected/ that must not be read."""
    out = tmp_path_factory.mktemp("curated")
    docs = [(f"ko-{i}", t) for i, t in enumerate(texts["ko"])] + [(f"en-{i}", t) for i, t in enumerate(texts["en"])]
    (out / "data").mkdir()
    (out / "rejected").mkdir()
    for part in range(2):
        chunk = docs[part::2]
        pq.write_table(pa.table({"id": [d[0] for d in chunk], "text": [d[1] for d in chunk],
                                 "source": ["konlpy/pydoc"] * len(chunk)}), out / "data" / f"part-{part}.parquet")
    pq.write_table(pa.table({"id": ["junk"], "text": ["xyzzy " * 100], "source": ["x"], "reason": ["r"]}),
                   out / "rejected" / "part-0.parquet")
    return out


@pytest.fixture(scope="module")
def bpe(ray_session, curated, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "bpe"
    report = train_tokenizer([str(curated)], str(prefix),
                             TokenizerConfig(model_type="bpe", vocab_size=1000, heldout_fraction=0.1))
    return prefix, report


def check_round_trip(sp) -> None:
    for text in KO_SENTENCES + EN_SENTENCES + [RARE, ""]:
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert 3 not in ids  # byte_fallback: never <unk>


def test_bpe_special_ids_round_trip_and_report(bpe, texts):
    prefix, report = bpe
    sp = load_tokenizer(f"{prefix}.model")
    assert special_ids(sp) == {piece: i for i, piece in enumerate(SPECIAL_TOKENS)}
    assert [sp.id_to_piece(i) for i in range(8)] == SPECIAL_TOKENS
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.get_piece_size() == 1000
    check_round_trip(sp)
    # the rare characters were not in training: they come out as byte pieces
    assert any(sp.id_to_piece(i).startswith("<0x") for i in sp.encode("😀"))
    # the curated folder's data/ was read, its rejected/ was not
    assert report["documents_in"] == len(texts["ko"]) + len(texts["en"])
    assert report["train_docs"] + report["heldout_docs_evaluated"] == report["documents_in"]
    assert 0.05 * report["documents_in"] < report["heldout_docs_evaluated"] < 0.15 * report["documents_in"]
    fert = report["fertility"]
    assert {"ko", "en", "all"} <= set(fert)
    for lang in ("ko", "en"):
        assert fert[lang]["docs"] > 5
        assert 0.5 < fert[lang]["tokens_per_word"] < 10
        assert 0.05 < fert[lang]["tokens_per_char"] < 1.5
    # Korean packs fewer characters per token than English with such a small vocabulary
    assert fert["ko"]["tokens_per_char"] > fert["en"]["tokens_per_char"]
    on_disk = json.loads(Path(f"{prefix}.report.json").read_text(encoding="utf-8"))
    assert on_disk["fertility"] == fert
    assert Path(f"{prefix}.vocab").is_file()
    # the hash names this model file's bytes: what checkpoints and token shards record
    h = tokenizer_hash(f"{prefix}.model")
    assert h == hashlib.sha256(Path(f"{prefix}.model").read_bytes()).hexdigest()[:16]
    assert report["tokenizer_hash"] == h


def test_unigram_from_jsonl_with_a_sample(ray_session, texts, tmp_path):
    docs = texts["ko"] + texts["en"]
    with open(tmp_path / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(docs):
            f.write(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n")
    cfg = TokenizerConfig(model_type="unigram", vocab_size=800, sample_docs=1200, heldout_fraction=0.05, seed=3)
    report = train_tokenizer([str(tmp_path / "corpus.jsonl")], str(tmp_path / "uni"), cfg)
    sp = load_tokenizer(tmp_path / "uni.model")
    assert special_ids(sp) == {piece: i for i, piece in enumerate(SPECIAL_TOKENS)}
    check_round_trip(sp)
    assert report["documents_in"] == len(docs)
    assert 900 < report["train_docs"] < 1500  # a uniform sample, not the whole corpus
    assert report["model_type"] == "unigram" and report["vocab_size"] == 800
    for lang in ("ko", "en"):
        assert 0.5 < report["fertility"][lang]["tokens_per_word"] < 10


def test_split_is_deterministic_and_disjoint():
    batch = pa.table({"id": [f"x{i}" for i in range(5000)], "text": ["t"] * 5000})
    kw = {"text_field": "text", "seed": 7, "heldout": 0.1, "train_p": 0.5, "eval_p": 1.0}
    a, b = _split_batch(batch, **kw), _split_batch(batch, **kw)
    assert a.equals(b)
    parts = a.column("part").to_pylist()
    assert 350 < parts.count(1) < 650  # ~10 % held out
    assert 2000 < parts.count(0) < 2500  # ~50 % of the remaining 90 %
    other = _split_batch(batch, **{**kw, "seed": 8}).column("part").to_pylist()
    assert other != parts


def test_detect_script_and_lang_column_win():
    assert detect_script(KO_SENTENCES[0]) == "ko"
    assert detect_script(EN_SENTENCES[0]) == "en"
    assert detect_script("富士山は静岡県と山梨県にまたがる活火山") == "zh/ja"
    assert detect_script("12345 !!! ...") == "other"

    class Fake:  # two tokens per text
        def encode(self, texts, out_type=int):
            return [[5, 6] for _ in texts]

    fert = fertility(Fake(), ["one two", "한국어 문장"], ["xx", None])
    assert fert["xx"]["tokens_per_word"] == 1.0 and fert["ko"]["tokens"] == 2
    assert fert["all"]["docs"] == 2


def test_too_small_corpus_is_a_clear_error(ray_session, tmp_path):
    (tmp_path / "small").mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["짧은 문서", "a tiny document", "또 하나"]}),
                   tmp_path / "small" / "part-0.parquet")
    with pytest.raises(TokenizerError, match=r"could not train a bpe vocabulary of 1000 on 3 documents"):
        train_tokenizer([str(tmp_path / "small")], str(tmp_path / "t"),
                        TokenizerConfig(vocab_size=1000, heldout_fraction=0.0))


def test_missing_input_and_missing_text_column(ray_session, tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        train_tokenizer([str(tmp_path / "nope")], str(tmp_path / "t"))
    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp_path / "c" / "p.parquet")
    with pytest.raises(TokenizerError, match="no 'text' column"):
        train_tokenizer([str(tmp_path / "c")], str(tmp_path / "t"))


@pytest.mark.parametrize("data, match", [
    ({"model_type": "wordpiece"}, "model_type"),
    ({"vocab_size": 100}, "vocab_size: 100 is too small"),
    ({"heldout_fraction": 0.7}, "heldout_fraction"),
    ({"character_coverage": 1.5}, "character_coverage"),
    ({"sample_docs": 0}, "sample_docs"),
    ({"vocab_sise": 1000}, "unknown key 'vocab_sise'"),
])
def test_bad_config(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TokenizerConfig, data)
