"""``raylm export``: a trained checkpoint as a Hugging Face folder that ``transformers`` loads with
our logits, and whose ``AutoTokenizer`` gives SentencePiece's ids.

Two checkpoints: the session's 2-worker FSDP2 reference run (a real Ray Train checkpoint, on
shards without a manifest, so its tokenizer is passed with ``--tokenizer``), and a μP model with
a tied embedding, input and output multipliers and an MTP head, trained a few steps in-process
on the prepared sample corpus (whose manifest names the tokenizer) and written with the
training loop's own ``checkpoint.save``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raylm.cli import main
from raylm.data.tokenizer import TokenizerConfig, load_tokenizer, train_from_iterator
from raylm.infer.checkpoint import load_model
from raylm.train.config import train_config
from raylm.train.trainer import run_dir
from tests.train.sample import SAMPLE, SEQ_LEN, VOCAB

transformers = pytest.importorskip("transformers")

TEXTS = [
    "대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다.",  # Korean
    "漢字と仮名の混じった文。中文测试：人工智能",  # CJK: mostly outside a 1024-piece vocabulary
    "emoji 🤖👩‍👩‍👧 and flags 🇰🇷",  # multi-codepoint emoji: byte fallback
    "byte fallback: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ǅ ꙮ \u200b\u00a0 tab\tnewline\n  two  spaces ",
    "It is a truth universally acknowledged, 12345 <mask> x",
]


def ours_and_theirs(checkpoint: str, exported: Path, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    model, _, _ = load_model(checkpoint)
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    x = torch.tensor(ids)
    with torch.no_grad():
        return model(x), hf(input_ids=x).logits


def assert_same_ids(exported: Path, sp_model: str, add_bos: bool) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    sp = load_tokenizer(sp_model)
    for text in TEXTS:
        ids = sp.encode(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tok(text)["input_ids"] == [sp.bos_id()] * add_bos + ids, text
        assert tok.decode(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (sp.bos_id(), sp.eos_id(), sp.pad_id())
    assert any(i == sp.piece_to_id("<0xF0>") for i in sp.encode(TEXTS[2]))  # the emoji went to bytes


def test_a_trained_run_exports_with_equal_logits_and_ids(reference_runs, shards, tmp_path, capsys):
    d, result = reference_runs["fsdp"]
    tokenizer = str(Path(shards).parent / "tok.model")
    out = tmp_path / "hf"
    assert main(["export", run_dir(train_config(d)), "-o", str(out), "--tokenizer", tokenizer]) == 0
    printed = capsys.readouterr().out
    assert "LlamaForCausalLM" in printed and "MTP" not in printed and "μP" not in printed

    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "tokenizer.model"} <= files and not any(f.endswith(".py") for f in files)  # no custom code
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["torch_dtype"] == "float32" and "auto_map" not in config
    assert config["vocab_size"] == VOCAB and config["max_position_embeddings"] == SEQ_LEN
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2

    sp = load_tokenizer(tokenizer)
    rows = [sp.encode(t)[:SEQ_LEN] for t in TEXTS[:2]]
    n = min(map(len, rows))
    expected, got = ours_and_theirs(result.checkpoint.path, out, [r[:n] for r in rows])
    assert expected.std() > 0.1  # logits that differ by token and position
    assert (got - expected).abs().max() <= 1e-3
    assert_same_ids(out, tokenizer, add_bos=False)

    assert main(["export", run_dir(train_config(d)), "-o", str(out), "--tokenizer", tokenizer]) == 2  # not over it
    assert "--overwrite" in capsys.readouterr().err


@pytest.fixture(scope="module")
def mup_checkpoint(prepared, tmp_path_factory) -> str:
    """A μP model (width 4x its base, tied embedding, input and output multipliers, one MTP head)
    after 8 AdamW steps on the prepared corpus, saved as the training loop saves."""
    from raylm.config import to_dict
    from raylm.model import Transformer
    from raylm.model.mup import mup_lr_scale
    from raylm.optim.optimizers import build_optimizer
    from raylm.train import checkpoint
    from raylm.train.strategy import build_strategy
    from raylm.tune.local import load_batches

    cfg = train_config({
        "name": "mup", "data": {"path": str(prepared["tokens"] / "books")},
        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "attention": "sdpa", "d_model": 128,
                  "parametrization": "mup", "base_width": 32, "input_mult": 3.0, "output_mult": 2.0,
                  "tie_embeddings": True, "mtp_heads": 1},
        "optim": {"lr": 3e-3},
    })
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    optimizer = build_optimizer(model, cfg.optim, mup_lr_scale(cfg.model))
    for b in load_batches(prepared["tokens"] / "books", 4, 8):
        logits = model(b["input_ids"], position_ids=b["position_ids"], cu_seqlens=b["cu_seqlens"],
                       max_seqlen=b["max_seqlen"])
        model.loss(logits, b["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("mup-run") / "checkpoint_000000"
    strategy = build_strategy(cfg, "fp32", torch.device("cpu"))  # one process: the model as it is
    strategy.wrap(model)
    strategy.setup(optimizer)
    checkpoint.save(str(folder), strategy, {"step": 8, "data": {}}, 0, config=to_dict(cfg))
    return str(folder)


def test_mup_multipliers_are_folded_and_mtp_heads_dropped(mup_checkpoint, prepared, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", mup_checkpoint, "-o", str(out)]) == 0  # the tokenizer from the shards' manifest
    printed = capsys.readouterr().out
    assert "dropped 1 MTP head(s)" in printed and "folded the μP multipliers" in printed and "untied" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # input_mult 3 != output_mult 2 / width_mult 4: two matrices

    sp = load_tokenizer(prepared["model"])
    ids = [sp.encode(TEXTS[0])[:SEQ_LEN], sp.encode(TEXTS[4])[:SEQ_LEN]]
    n = min(map(len, ids))
    expected, got = ours_and_theirs(mup_checkpoint, out, [r[:n] for r in ids])
    assert (got - expected).abs().max() <= 1e-3
    # folded: the embedding times input_mult, the output matrix times output_mult / width_mult
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    emb = load_model(mup_checkpoint)[0].tok_embeddings.weight
    torch.testing.assert_close(hf.model.embed_tokens.weight, 3.0 * emb)
    torch.testing.assert_close(hf.lm_head.weight, 2.0 / 4 * emb)
    assert_same_ids(out, prepared["model"], add_bos=False)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_the_tokenizer_encodes_as_sentencepiece(model_type, tmp_path):
    """Both SentencePiece algorithms, with <bos> added when the training documents had it."""
    import gzip

    from raylm.infer.export import write_tokenizer

    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        lines = [x for line in f for x in json.loads(line)["text"].splitlines() if x.strip()][::4]
    model = str(train_from_iterator(lines, str(tmp_path / model_type), TokenizerConfig(
        model_type=model_type, vocab_size=600, num_threads=1, character_coverage=0.98)))
    (tmp_path / "hf").mkdir()
    write_tokenizer(model, add_bos=True, max_length=SEQ_LEN, out=tmp_path / "hf")
    assert_same_ids(tmp_path / "hf", model, add_bos=True)
