"""kitoken against SentencePiece, the reference: identical ids on raylm's BPE models, or not used (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raylm.data.encode import Tokenize, TokenizeConfig, encode_to_arrow
from raylm.data.fast_bpe import PROBES, FastEncoder, load_fast_encoder, not_exact_reason
from raylm.data.tokenizer import TokenizerConfig, load_tokenizer, train_from_iterator
from tests.corpora import KONLPY_CORPUS

pytest.importorskip("kitoken")

# outside any vocabulary trained here: byte fallback (rare Hanja, emoji sequences, astral planes)
RARE = ["龘靐齉 𠀋𪚥", "👩‍👩‍👧‍👦 🏳️‍🌈 🇰🇷🇯🇵", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd \ufeff", "ꙮ ᚠᛇᚻ ᠮᠣᠩᠭᠣᠯ"]
CJK = ["中华人民共和国宪法是国家的根本法。", "日本国憲法は、日本の最高法規である。ひらがなとカタカナ。",
       "大韓民國憲法 前文 悠久한 歷史와 傳統에 빛나는 우리 大韓國民은"]


@pytest.fixture(scope="module")
def korean() -> list[str]:
    """Real Korean documents: the constitution and the bills konlpy ships, a document per file."""
    if not (KONLPY_CORPUS / "kolaw/constitution.txt").is_file():
        pytest.skip("konlpy's corpora are not installed")
    files = [KONLPY_CORPUS / "kolaw/constitution.txt", *sorted((KONLPY_CORPUS / "kobill").glob("*.txt"))]
    return [f.read_text(encoding="utf-8") for f in files]


def train(tmp_path_factory, korean: list[str], **kw) -> str:
    from pydoc_data.topics import topics

    lines = [x for t in korean + list(topics.values())[:40] for x in t.splitlines() if x.strip()]
    prefix = tmp_path_factory.mktemp("tok") / "t"
    cfg = TokenizerConfig(vocab_size=kw.pop("vocab_size", 1200), num_threads=1, character_coverage=0.995, **kw)
    return str(train_from_iterator(lines, str(prefix), cfg))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, korean) -> str:
    return train(tmp_path_factory, korean)


def test_ids_equal_sentencepiece_on_korean_cjk_emoji_and_byte_fallback(bpe, korean):
    from pydoc_data.topics import topics

    sp = load_tokenizer(bpe)
    fast, why = load_fast_encoder(bpe, sp)
    assert why == "kitoken" and fast is not None
    texts = korean + CJK + RARE + PROBES + list(topics.values())[40:80]
    texts += [a + " " + b for a, b in zip(korean, RARE * 10)]  # byte fallback inside Korean text
    assert any(i >= 8 and sp.id_to_piece(i).startswith("<0x") for t in RARE for i in sp.encode(t))  # bytes used
    for t in texts:
        assert fast.kit.encode(t) == sp.encode(t), t[:60]
    for add_bos, add_eos in ((False, True), (True, False), (True, True)):
        flat, lengths = fast.encode_flat(texts, add_bos, add_eos)
        want = sp.encode(texts, add_bos=add_bos, add_eos=add_eos)
        assert lengths.tolist() == [len(w) for w in want]
        assert flat.dtype == np.int32 and flat.tolist() == [i for w in want for i in w]
    assert fast.fallbacks == 0


def test_tokenize_step_uses_kitoken_and_matches_the_sentencepiece_step(bpe, korean):

    batch = pa.table({"text": pa.array(korean[:20] + CJK + RARE + ["", None], pa.large_string())})
    auto, plain = Tokenize(TokenizeConfig(model=bpe)), Tokenize(TokenizeConfig(model=bpe, encoder="sentencepiece"))
    a, b = auto.apply(batch), plain.apply(batch)
    assert auto.encoder == "kitoken" and plain.fast is None and plain.encoder == "sentencepiece (configured)"
    assert a.table.equals(b.table) and a.counters == b.counters


def test_other_models_fall_back_to_sentencepiece(tmp_path_factory, korean):
    for kw, reason in (({"model_type": "unigram"}, "model_type is not BPE"),
                       ({"byte_fallback": False, "vocab_size": 1000}, "byte_fallback is off")):
        model = train(tmp_path_factory, korean, **kw)
        assert not_exact_reason(model) == reason
        step = Tokenize(TokenizeConfig(model=model))
        step.setup()
        assert step.fast is None and step.encoder == reason
        tokens = step.apply(pa.table({"text": korean[:3]})).table.column("tokens").to_pylist()
        assert tokens == [step.sp.encode(t) + [step.sp.eos_id()] for t in korean[:3]]


def test_a_batch_that_differs_goes_to_sentencepiece_for_good(bpe, korean, tmp_path_factory):
    """A kitoken that encodes another model's ids (a real one, trained on other text) fails the
    check on the batch's first document: that batch and all later ones are SentencePiece's."""
    from kitoken import Kitoken

    other = train(tmp_path_factory, korean[::-1][:5], vocab_size=700)
    sp = load_tokenizer(bpe)
    fast = FastEncoder(Kitoken.from_sentencepiece_file(other), sp)
    for texts in (korean[:4], CJK):
        tokens, lengths = encode_to_arrow(sp, texts, False, True, fast=fast)
        assert tokens.to_pylist() == sp.encode(texts, add_eos=True)
    assert fast.fallbacks == 1
