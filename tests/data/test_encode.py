"""The tokenize step on a pyarrow batch, with a tokenizer trained on real text (no Ray)."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest

from raylm.config import ConfigError, from_dict
from raylm.data.encode import Tokenize, TokenizeConfig
from raylm.data.tokenizer import BOS_ID, EOS_ID, TokenizerConfig, train_from_iterator
from tests.corpora import KOLAW

TEXTS = [
    "대한민국은 민주공화국이다.\n대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "The President shall be elected by universal, equal, direct and secret ballot.",
    "",
    "  spaces\tand 😀 and 龘  ",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    if not KOLAW.is_file():
        pytest.skip("konlpy's constitution corpus is not installed")
    from pydoc_data.topics import topics

    lines = KOLAW.read_text(encoding="utf-8").splitlines()
    lines += [line for v in list(topics.values())[:30] for line in v.splitlines()]
    prefix = tmp_path_factory.mktemp("tok") / "t"
    path = train_from_iterator((x for x in lines if x.strip()), str(prefix),
                               TokenizerConfig(vocab_size=1000, num_threads=1))
    return str(path)


def batch(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.large_string())})


def run(cfg: TokenizeConfig, texts: list[str]):
    step = Tokenize(cfg)
    step.setup()
    return step, step.apply(batch(texts))


def test_tokens_decode_back_and_end_with_eos(model):
    step, result = run(TokenizeConfig(model=model), TEXTS)
    table = result.table
    assert table.column_names == ["id", "text", "tokens", "num_tokens"]
    assert table.schema.field("tokens").type == pa.list_(pa.int32())
    assert table.schema.field("num_tokens").type == pa.int32()
    assert table.num_rows == len(TEXTS) and table.column("id").to_pylist() == [f"d{i}" for i in range(len(TEXTS))]
    tokens = table.column("tokens").to_pylist()
    for text, ids, n in zip(TEXTS, tokens, table.column("num_tokens").to_pylist(), strict=True):
        assert ids[-1] == EOS_ID and BOS_ID not in ids
        assert n == len(ids)
        assert step.sp.decode(ids[:-1]) == text
    assert tokens[2] == [EOS_ID]  # an empty document is just <eos>
    assert result.counters == {"tokens": sum(map(len, tokens))}
    assert result.reasons is None
    # the same ids as sentencepiece one document at a time
    assert tokens[0][:-1] == step.sp.encode(TEXTS[0])


def test_bos_without_eos(model):
    step, result = run(TokenizeConfig(model=model, add_bos=True, add_eos=False), TEXTS[:2])
    assert result.table.num_rows == 2
    for text, ids in zip(TEXTS[:2], result.table.column("tokens").to_pylist(), strict=True):
        assert ids[0] == BOS_ID and ids[-1] != EOS_ID
        assert step.sp.decode(ids[1:]) == text


def test_step_pickles_without_the_model(model):
    step, _ = run(TokenizeConfig(model=model), TEXTS[:1])
    clone = pickle.loads(pickle.dumps(step))
    assert clone.sp is None
    clone.setup()
    assert clone.apply(batch(TEXTS[:1])).table.column("tokens").to_pylist() == \
        step.apply(batch(TEXTS[:1])).table.column("tokens").to_pylist()


def test_config_errors(tmp_path):
    assert Tokenize.needs_actor is True and Tokenize.name == "tokenize"
    with pytest.raises(ConfigError, match="model: the path"):
        from_dict(TokenizeConfig, {})
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Tokenize.check_available(TokenizeConfig(model=str(tmp_path / "missing.model")))
    with pytest.raises(FileNotFoundError):
        Tokenize(TokenizeConfig(model=str(tmp_path / "missing.model"))).setup()
