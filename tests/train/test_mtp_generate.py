"""Multi-token prediction through the real Ray Train loop (2 gloo workers, FSDP2 with the MTP
module sharded), then ``raylm generate`` from the checkpoint: greedy, speculative with the MTP
drafts, and FIM.

The data is the session's prepared sample corpus (``tests/train/sample.py``: ``raylm prepare``
with FIM, so the shard manifest names the tokenizer ``raylm generate`` finds by itself).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from raylm.cli import main
from raylm.data.tokenizer import EOS_ID, load_tokenizer
from raylm.infer.checkpoint import load_model
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.sample import SEQ_LEN, VOCAB

STEPS = 14
PROMPT = "대한민국헌법"


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory) -> tuple[dict, object]:
    d = {
        "name": "mtp-fsdp", "storage_path": str(tmp_path_factory.mktemp("mtp-runs")), "steps": STEPS, "log_every": 1,
        "seed": 3,
        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "attention": "sdpa",
                  "mtp_heads": 1},
        "data": {"path": str(prepared["tokens"] / "books"), "window": 64, "prefetch": 1},
        "optim": {"lr": 1e-2, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "micro_batch_size": 4, "grad_accum": 1,
        "scale": {"num_workers": 2, "cpus_per_worker": 0.5, "strategy": "fsdp2"},
        "checkpoint": {"every": 0, "keep": 1}, "eval": {"enabled": False},
        "tensorboard": False,
    }
    result = fit(train_config(d))
    assert result.error is None
    return d, result


def test_a_two_worker_fsdp2_mtp_run_learns(run):
    """Main and MTP losses start near uniform and fall, with the MTP module sharded."""
    rows = read_metrics(run_dir(train_config(run[0])))
    for key in ("loss", "mtp_loss_1"):
        curve = [r[key] for r in rows]
        assert len(curve) == STEPS
        assert curve[0] == pytest.approx(np.log(VOCAB), rel=0.05)
        assert curve[-1] < curve[0] - 1.0, (key, curve)


def _argmax_without_cache(model, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        while len(out) < n:
            token = int(model(torch.tensor([ids + out]))[0, -1].argmax())
            if token == EOS_ID:
                break
            out.append(token)
    return out


def test_generate_greedy_and_speculative_from_the_checkpoint(run, prepared, capsys):
    """The CLI finds the tokenizer through the shard manifest; its greedy text is argmax
    decoding by full forwards; ``--speculative`` prints the same text and its acceptance."""
    from raylm.model.generate import SamplingConfig
    from raylm.model.text import complete

    ckpt = run[1].checkpoint.path
    model, _, _ = load_model(ckpt)
    sp = load_tokenizer(prepared["model"])
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


def test_generate_fills_in_the_middle(run, prepared, capsys):
    from raylm.data.tokenizer import special_ids
    from raylm.model.generate import SamplingConfig, generate
    from raylm.model.text import fim_prompt

    ckpt = run[1].checkpoint.path
    model, _, _ = load_model(ckpt)
    sp = load_tokenizer(prepared["model"])
    prefix, suffix = "제1조 ① 대한민국은 ", " 공화국이다."
    middle = generate(model, fim_prompt(sp.encode(prefix), sp.encode(suffix), special_ids(sp)),
                      SamplingConfig(max_new_tokens=12)).tokens
    expected = sp.decode(sp.encode(prefix) + middle)[len(prefix):]
    assert main(["generate", ckpt, prefix, "--fim-suffix", suffix, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", ckpt, prefix, "--fim-suffix", suffix, "--max-new-tokens", "12", "--document"]) == 0
    assert capsys.readouterr().out == prefix + expected + suffix + "\n"


def test_generate_errors_are_one_line(run, prepared, tmp_path, capsys):
    ckpt = Path(run[1].checkpoint.path)
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
    assert main(["generate", str(moved), "x", "--tokenizer", prepared["model"], "--max-new-tokens", "3"]) == 0
