"""Multi-token prediction through the real Ray Train loop (2 gloo workers, DDP and FSDP2), then
``raylm generate`` from the checkpoint: greedy, speculative with the MTP drafts, and FIM.

One module fixture prepares real text with ``raylm prepare`` (so the shard manifest names the
tokenizer that ``raylm generate`` finds by itself) and trains the two runs.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raylm.cli import main
from raylm.data.prepare import PrepareConfig, prepare
from raylm.data.tokenizer import EOS_ID, TokenizerConfig, load_tokenizer, train_from_iterator
from raylm.infer.checkpoint import load_model
from raylm.train.config import train_config
from raylm.train.trainer import fit, read_metrics, run_dir

SAMPLE = Path(__file__).parents[2] / "data/sample/corpus.jsonl.gz"
SEQ_LEN, VOCAB, STEPS = 64, 1024, 14
PROMPT = "대한민국헌법"


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory) -> dict[str, str]:
    """A BPE trained on the sample corpus's first documents; five short ones (Korean and
    English) prepared into 64-token shards with their manifest."""
    tmp = tmp_path_factory.mktemp("mtp-data")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f][:60]
    lines = [x for d in docs for x in d.splitlines() if x.strip()]
    tok = train_from_iterator(lines, str(tmp / "tok"), TokenizerConfig(vocab_size=VOCAB, num_threads=1,
                                                                        character_coverage=0.98))
    (tmp / "curated").mkdir()
    short = [docs[i] for i in (0, 1, 8, 9, 10)]
    pq.write_table(pa.table({"id": [str(i) for i in range(len(short))], "text": short}),
                   tmp / "curated" / "part-0.parquet")
    prepare(PrepareConfig(tokenizer=str(tok), seq_len=SEQ_LEN, batch_size=16, drop_tail=False,
                          sources={"sample": [str(tmp / "curated")]}), str(tmp / "tokens"))
    return {"shards": str(tmp / "tokens" / "sample"), "tokenizer": str(tok)}


def config(prepared: dict[str, str], storage: Path, name: str, **kw) -> dict:
    return {
        "name": name, "storage_path": str(storage), "steps": STEPS, "log_every": 1, "seed": 3,
        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "attention": "sdpa",
                  "mtp_heads": 1},
        "data": {"path": prepared["shards"], "window": 64, "prefetch": 1},
        "optim": {"lr": 1e-2, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "micro_batch_size": 4, "grad_accum": 1,
        "scale": {"num_workers": 2, "cpus_per_worker": 0.5, **kw},
        "checkpoint": {"every": 0, "keep": 1},
        "tensorboard": False,
    }


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory) -> dict[str, tuple[dict, object]]:
    storage = tmp_path_factory.mktemp("mtp-runs")
    out = {}
    for name, strategy in (("mtp-ddp", "ddp"), ("mtp-fsdp", "fsdp2")):
        d = config(prepared, storage, name, strategy=strategy)
        result = fit(train_config(d))
        assert result.error is None
        out[strategy] = (d, result)
    return out


def test_a_two_worker_mtp_run_learns_under_ddp_and_fsdp2(runs):
    """Main and MTP losses fall; FSDP2 (MTP module sharded) follows DDP step for step."""
    rows = {k: read_metrics(run_dir(train_config(d))) for k, (d, _) in runs.items()}
    for key in ("loss", "mtp_loss_1"):
        ddp, fsdp = ([r[key] for r in rows[k]] for k in ("ddp", "fsdp2"))
        assert len(ddp) == STEPS
        np.testing.assert_allclose(fsdp, ddp, rtol=2e-4)
        assert ddp[0] == pytest.approx(np.log(VOCAB), rel=0.05)  # both start near uniform
        assert ddp[-1] < ddp[0] - 1.0, (key, ddp)


def _argmax_without_cache(model, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        while len(out) < n:
            token = int(model(torch.tensor([ids + out]))[0, -1].argmax())
            if token == EOS_ID:
                break
            out.append(token)
    return out


def test_generate_greedy_and_speculative_from_the_checkpoint(runs, prepared, capsys):
    """The CLI finds the tokenizer through the shard manifest; its greedy text is argmax
    decoding by full forwards; ``--speculative`` prints the same text and its acceptance."""
    from raylm.infer.generate import SamplingConfig
    from raylm.infer.text import complete

    ckpt = runs["ddp"][1].checkpoint.path
    model, _, _ = load_model(ckpt)
    sp = load_tokenizer(prepared["tokenizer"])
    text, gen = complete(model, sp, PROMPT, SamplingConfig(max_new_tokens=20))
    assert gen.tokens == _argmax_without_cache(model, sp.encode(PROMPT), 20) and len(gen.tokens) > 0
    assert text == sp.decode(sp.encode(PROMPT) + gen.tokens)
    assert main(["generate", ckpt, PROMPT, "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert main(["generate", ckpt, PROMPT, "--max-new-tokens", "20", "--speculative"]) == 0
    captured = capsys.readouterr()
    assert captured.out == text + "\n"
    assert "drafts accepted (acceptance rate" in captured.err and "tokens per main-model forward" in captured.err
    sampled = ["generate", ckpt, PROMPT, "--temperature", "1.0", "--top-p", "0.9", "--seed", "5"]
    outputs = []
    for _ in range(2):
        assert main(sampled) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != text + "\n" and outputs[0].startswith(PROMPT)


def test_generate_fills_in_the_middle(runs, prepared, capsys):
    from raylm.data.tokenizer import special_ids
    from raylm.infer.generate import SamplingConfig, generate
    from raylm.infer.text import fim_prompt

    ckpt = runs["fsdp2"][1].checkpoint.path
    model, _, _ = load_model(ckpt)
    sp = load_tokenizer(prepared["tokenizer"])
    prefix, suffix = "제1조 ① 대한민국은 ", " 공화국이다."
    middle = generate(model, fim_prompt(sp.encode(prefix), sp.encode(suffix), special_ids(sp)),
                      SamplingConfig(max_new_tokens=12)).tokens
    expected = sp.decode(sp.encode(prefix) + middle)[len(prefix):]
    assert main(["generate", ckpt, prefix, "--fim-suffix", suffix, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", ckpt, prefix, "--fim-suffix", suffix, "--max-new-tokens", "12", "--document"]) == 0
    assert capsys.readouterr().out == prefix + expected + suffix + "\n"


def test_generate_errors_are_one_line(runs, prepared, tmp_path, capsys):
    ckpt = Path(runs["ddp"][1].checkpoint.path)
    cases = [
        (["generate", str(tmp_path / "nothing"), "x"], "no such checkpoint"),
        (["generate", str(ckpt), "x", "--speculative", "--temperature", "0.7"], "--speculative decodes greedily"),
        (["generate", str(ckpt), "x", "--top-p", "1.5"], "top_p: 1.5 must be in (0, 1]"),
        (["generate", str(ckpt), "x", "--tokenizer", str(tmp_path / "t.model")], "--tokenizer: tokenizer model not found"),
        (["generate", str(ckpt), PROMPT * 40], "prompt: the prompt has"),
    ]
    # a copy of the checkpoint whose data folder has no manifest: the tokenizer must be given
    moved = tmp_path / "ckpt"
    shutil.copytree(ckpt, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["data"]["path"] = str(tmp_path)
    (moved / "config.json").write_text(json.dumps(cfg))
    cases.append((["generate", str(moved), "x"], "has no token-shard manifest); pass --tokenizer PATH.model"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert main(["generate", str(moved), "x", "--tokenizer", prepared["tokenizer"], "--max-new-tokens", "3"]) == 0
