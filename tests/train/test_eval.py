"""Held-out evaluation, end to end on the shipped sample corpus: ``raylm prepare`` with ``val:``
(and FIM), real 2-worker Ray Train runs that evaluate while they train (objective fim, and
mlm on an encoder), and ``raylm eval`` on their checkpoints.

The session fixture ``prepared`` (``tests/train/sample.py``) holds two sources that each mix
English and Korean documents; the runs share it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.cli import main
from raylm.config import ConfigError, from_dict
from raylm.data.prepare import HeldOutConfig, PrepareConfig, held_out
from raylm.data.shards import UNIT_SHIFT, read_manifest
from raylm.data.tokenizer import EOS_ID, load_tokenizer
from raylm.data.transforms import fim_transform_middle
from raylm.train.config import train_config
from raylm.train.runlog import read_metrics
from raylm.train.trainer import fit, run_dir
from tests.train.sample import FIM, SEQ_LEN, SOURCES, VAL, VOCAB, with_keys

STEPS = 8


def stream(folder: Path) -> tuple[np.ndarray, np.ndarray, list | None, np.ndarray | None]:
    """A shard folder's (seq_ids, tokens, langs, fim_middle) in seq_id order."""
    m = read_manifest(str(folder))
    t = pa.concat_tables([pq.read_table(folder / s["path"]) for s in m["shards"]])
    t = t.take(pa.array(np.argsort(t.column("seq_id").to_numpy(), kind="stable")))
    langs = t.column("langs").to_pylist() if "langs" in t.column_names else None
    middle = np.asarray(t.column("fim_middle").to_pylist(), np.int8) if "fim_middle" in t.column_names else None
    return t.column("seq_id").to_numpy(), np.asarray(t.column("tokens").to_pylist(), np.int32), langs, middle


def test_held_out_split_is_a_function_of_the_document_alone():
    texts = [f"document {i} " * (i % 7 + 1) for i in range(4000)]
    chosen = held_out(texts, VAL)
    assert 0.12 < chosen.mean() < 0.18
    order = np.random.default_rng(0).permutation(len(texts))  # another order, other batches
    assert (held_out([texts[i] for i in order], VAL) == chosen[order]).all()
    assert (np.concatenate([held_out(texts[i:i + 7], VAL) for i in range(0, len(texts), 7)]) == chosen).all()
    other = held_out(texts, HeldOutConfig(fraction=0.15, seed=2))
    assert 0.05 < (other & chosen).sum() / chosen.sum() < 0.3  # another seed: another, independent set
    with pytest.raises(ConfigError, match="val: fraction: 1.0 must be between 0 and 1"):
        from_dict(PrepareConfig, {"tokenizer": "t.model", "sources": {"a": ["x"]}, "val": {"fraction": 1.0}})


def test_prepare_writes_a_disjoint_val_split_with_languages(prepared):
    """Every document is in exactly one split; the val shards are the held-out documents
    (FIM'd as in training), packed file by file, each segment labelled with its language and
    every token of a FIM middle marked; the training shards never contain them, and the loader
    reads the training shards only."""
    from raylm.data.loader import TrainBatches

    sp = load_tokenizer(prepared["model"])
    for name in SOURCES:
        folder = prepared["tokens"] / name
        train_m, val_m = read_manifest(str(folder)), read_manifest(str(folder / "val"))
        assert train_m["val"] == "val" and train_m["split"] == "train" and val_m["split"] == "val"
        assert val_m["langs"] and val_m["fim_middle"] and not val_m["drop_tail"] and "langs" not in train_m
        n_docs = sum(len(f) for f in prepared["files"][name])
        assert train_m["documents"] + val_m["documents"] == n_docs and val_m["documents"] > 0
        for split, m in (("train", train_m), ("val", val_m)):
            seq_ids, tokens, langs, middle = stream(folder if split == "train" else folder / "val")
            for unit, docs in enumerate(prepared["files"][name]):
                keep = held_out([d["text"] for d in docs], VAL) == (split == "val")
                fims = [fim_transform_middle(np.asarray(sp.encode(d["text"]) + [EOS_ID], np.int32),
                                             np.random.default_rng([FIM.seed, unit, row]), FIM)
                        for row, d in enumerate(docs) if keep[row]]
                want = [t for t, _ in fims]
                mine = (seq_ids >> UNIT_SHIFT) == unit
                got = tokens[mine].reshape(-1)
                flat = np.concatenate(want)
                if split == "train":  # the file's last incomplete sequence is dropped
                    assert len(flat) - len(got) < SEQ_LEN and (got == flat[:len(got)]).all()
                else:  # padded instead: nothing held out is lost
                    assert (got[:len(flat)] == flat).all() and (got[len(flat):] == 0).all()
                    assert len(got) - len(flat) < SEQ_LEN
                    marks = np.concatenate([np.arange(len(t)) >= (len(t) if m is None else m) for t, m in fims])
                    assert (middle[mine].reshape(-1)[:len(flat)] == marks).all() and marks.sum() > 0
                    # every segment carries the language of its document, the padding ""
                    doc_langs = [d["lang"] for row, d in enumerate(docs) if keep[row]]
                    bounds = np.cumsum([0] + [len(w) for w in want])
                    expect = []
                    for s in range(int(mine.sum())):
                        lo, hi = s * SEQ_LEN, (s + 1) * SEQ_LEN
                        expect += [x for j, x in enumerate(doc_langs) if bounds[j] < hi and bounds[j + 1] > lo]
                        expect += [""] if hi > bounds[-1] else []
                    assert [x for i in np.flatnonzero(mine) for x in langs[i]] == expect
            assert m["num_sequences"] == len(seq_ids)
        with TrainBatches(str(folder), 4, 0, 1, seed=0, window=4096, num_epochs=1, prefetch=0) as it:
            seen = [int(i) for b in it for i in b["seq_id"]]
        assert len(seen) == train_m["num_sequences"] // 4 * 4  # the nested val/ is not read
    val_langs = {x for name in SOURCES for row in stream(prepared["tokens"] / name / "val")[2] for x in row}
    assert {"en", "ko"} <= val_langs


def test_an_empty_split_is_an_empty_set(prepared):
    """A source too small to hold anything out gets an empty val split (a manifest, no shards),
    which evaluates to no numbers rather than an error."""
    from raylm.model import ModelConfig, Transformer
    from raylm.train.heldout import evaluate, load_set

    tiny = prepared["tokens"] / "tiny"
    assert read_manifest(str(tiny))["documents"] == 1 and prepared["summary"]["sources"]["tiny"]["val"]["documents"] == 0
    assert read_manifest(str(tiny / "val"))["shards"] == []
    empty = load_set("tiny", str(tiny / "val"), 16)
    assert len(empty) == 0
    assert evaluate(Transformer(ModelConfig(vocab_size=VOCAB, max_seq_len=SEQ_LEN)), [empty]) == {}


def run_config(prepared: dict, storage: Path, name: str, **kw) -> dict:
    tokens = prepared["tokens"]
    base = {
        "name": name, "storage_path": str(storage), "steps": STEPS, "log_every": 1, "seed": 3,
        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "attention": "sdpa"},
        "data": {"sources": {n: str(tokens / n) for n in SOURCES}, "mix": {"weights": {"books": 0.5, "web": 0.5}},
                 "window": 64, "prefetch": 1},
        "optim": {"lr": 3e-3, "schedule": {"name": "cosine", "warmup_steps": 2}},
        "micro_batch_size": 4, "scale": {"num_workers": 2, "cpus_per_worker": 0.5},
        "checkpoint": {"every": 4, "keep": 3},
        "objective": "fim", "eval": {"every": 4, "at_start": True, "max_sequences": 38, "batch_size": 3},
    }
    return with_keys(base, kw)


@pytest.fixture(scope="module")
def fim_runs(prepared, tmp_path_factory):
    """A 2-worker FSDP2 FIM run that evaluates at steps 0, 4 and 8 and whose rank-1 process is
    killed at step 6 (restart from the step-4 checkpoint), and the same run without evaluation.
    38 sequences per set in forwards of 3 per rank: rank 1 has none left for the last forward
    and runs it anyway (FSDP2's all-gathers need every rank). Its generation samples are drawn
    (temperature 0.8, top-k 20, seeded) on every rank from the FSDP2-sharded model."""
    storage = tmp_path_factory.mktemp("runs")
    out = {}
    samples = {"eval.samples": {"prompts": ["It is a truth", "대한민국은"], "infill": [["The ", " of the"]],
                                "max_new_tokens": 6, "temperature": 0.8, "top_k": 20, "seed": 5}}
    for name, extra in (("eval", {"fail_at_step": 6, "max_failures": 1, **samples}), ("plain", {"eval.enabled": False})):
        d = run_config(prepared, storage, name, **{"scale.strategy": "fsdp2", **extra})
        result = fit(train_config(d))
        assert result.error is None
        out[name] = (d, result, read_metrics(run_dir(train_config(d))))
    return out


def test_eval_reports_per_source_language_and_fim_middle(fim_runs):
    d, result, rows = fim_runs["eval"]
    assert (Path(run_dir(train_config(d))) / ".failed-at-6").exists()  # it really died once
    by_step = {r["step"]: r for r in rows}
    assert [s for s in by_step if "val/loss" in by_step[s]] == [0, 4, 8]
    for step in (0, 4, 8):
        r = by_step[step]
        for group in ("val", "val/books", "val/web", "val/lang/en", "val/lang/ko",
                      "val/books/fim_middle", "val/web/fim_middle"):
            assert r[f"{group}/tokens"] > 0 and r[f"{group}/ppl"] == pytest.approx(np.exp(r[f"{group}/loss"]))
        # token-weighted: the pooled loss is the sources' (and the languages') weighted mean
        for parts in (("val/books", "val/web"), ("val/lang/en", "val/lang/ko")):
            assert sum(r[f"{p}/tokens"] for p in parts) == r["val/tokens"]
            assert sum(r[f"{p}/loss"] * r[f"{p}/tokens"] for p in parts) / r["val/tokens"] == \
                pytest.approx(r["val/loss"], rel=1e-12)
    assert by_step[0]["val/loss"] == pytest.approx(np.log(VOCAB), rel=0.05)  # untrained: near uniform
    assert by_step[8]["val/loss"] < by_step[4]["val/loss"] < by_step[0]["val/loss"] - 0.1  # it learns
    assert "val/books/loss" in result.metrics  # Ray's report (the final checkpoint's metrics)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(Path(run_dir(train_config(d))) / "tensorboard"), size_guidance={"tensors": 0})
    tb.Reload()
    assert [e.step for e in tb.Scalars("val/lang/ko/loss")][-3:] == [0, 4, 8]
    # generation samples with every evaluation: the prompt continued, the middle between prefix and suffix
    for step in (0, 4, 8):
        r = by_step[step]
        assert r["samples/0"].startswith("It is a truth") and len(r["samples/0"]) > len("It is a truth")
        assert r["samples/1"].startswith("대한민국은")
        assert r["samples/infill_0"].startswith("The [") and r["samples/infill_0"].endswith("] of the")
    assert by_step[8]["samples/0"] != by_step[0]["samples/0"]  # what the model writes changes as it learns
    assert [e.step for e in tb.Tensors("samples/0/text_summary")][-3:] == [0, 4, 8]


def test_eval_leaves_training_exactly_as_without_it(fim_runs):
    """Same weights, RNG and data order: the killed-and-resumed run with evaluation has the
    training loss curve of the uninterrupted run without it, to the last bit."""
    assert [r["loss"] for r in fim_runs["eval"][2] if "loss" in r] == [r["loss"] for r in fim_runs["plain"][2]]
    assert not any(k.startswith("val/") for r in fim_runs["plain"][2] for k in r)


def checkpoint_at(run: str, step: int) -> Path:
    return next(p for p in Path(run).glob("checkpoint_*/")
                if (p / "state.json").is_file() and json.loads((p / "state.json").read_text())["step"] == step)


def test_eval_equals_a_single_process_recomputation(fim_runs, prepared):
    """The step-4 checkpoint evaluated in one process (other batch size, no all-reduce) gives the
    numbers the 2 ranks reported at step 4."""
    from raylm.infer.checkpoint import load_model
    from raylm.train.heldout import evaluate, load_set

    d, _, rows = fim_runs["eval"]
    model, cfg, state = load_model(checkpoint_at(run_dir(train_config(d)), 4))
    assert state["step"] == 4
    sets = [load_set(n, str(prepared["tokens"] / n / "val"), cfg.eval.max_sequences) for n in SOURCES]
    got = evaluate(model, sets, batch_size=7)
    reported = {k: v for k, v in next(r for r in rows if r["step"] == 4).items() if k.startswith("val/")}
    assert got.keys() == reported.keys()
    for k, v in reported.items():
        assert got[k] == (v if k.endswith("/tokens") else pytest.approx(v, rel=1e-6)), k


def test_samples_in_training_are_the_unsharded_models(fim_runs):
    """The step-8 samples, drawn inside the 2 Ray Train workers from the FSDP2-sharded model in
    train mode, are what the step-8 checkpoint writes in one process with the same sampling."""
    from raylm.infer.checkpoint import load_model
    from raylm.infer.text import resolve_tokenizer
    from raylm.model.generate import SamplingConfig
    from raylm.model.text import complete, infill

    d, _, rows = fim_runs["eval"]
    model, cfg, _ = load_model(checkpoint_at(run_dir(train_config(d)), 8))
    s = cfg.eval.samples
    sampling = SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                              top_p=s.top_p, seed=s.seed)
    sp, add_bos = resolve_tokenizer(cfg, s.tokenizer)
    final = next(r for r in rows if r["step"] == 8)
    for i, prompt in enumerate(s.prompts):
        assert final[f"samples/{i}"] == complete(model, sp, prompt, sampling, add_bos=add_bos)[0]
    (prefix, suffix), = s.infill
    assert final["samples/infill_0"] == f"{prefix}[{infill(model, sp, prefix, suffix, sampling)[0]}]{suffix}"


def test_raylm_eval_prints_the_in_training_numbers(fim_runs, prepared, tmp_path, capsys):
    d, _, rows = fim_runs["eval"]
    run = run_dir(train_config(d))
    folders = [str(prepared["tokens"] / n / "val") for n in SOURCES]
    assert main(["eval", run, "--data", *folders, "-o", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    final = next(r for r in rows if r["step"] == STEPS)
    table = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert f"step {STEPS}" in text and set(table) >= {"val", "val/books", "val/web/fim_middle", "val/lang/ko"}
    for group, (loss, _ppl, tokens) in table.items():
        assert float(loss) == pytest.approx(final[f"{group}/loss"], abs=6e-5) and int(tokens) == final[f"{group}/tokens"]
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["step"] == STEPS and report["objective"] == "fim"
    for k, v in report["metrics"].items():
        assert v == pytest.approx(final[k], rel=1e-6), k
    # NAME=FOLDER names a set; --json prints the report
    assert main(["eval", run, "--data", f"held={folders[0]}", "--max-sequences", "8", "--json"]) == 0
    held = json.loads(capsys.readouterr().out)["metrics"]
    assert set(held) >= {"val/held/loss", "val/lang/en/loss"} and 0 < held["val/held/tokens"] <= 8 * (SEQ_LEN - 1)


def test_raylm_eval_errors_are_one_line(prepared, tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--data", str(prepared["tokens"] / "books" / "val")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_raylm_eval_bad_data_path(fim_runs, tmp_path, capsys):
    run = run_dir(train_config(fim_runs["eval"][0]))
    assert main(["eval", run, "--data", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    assert main(["eval", run, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no token-shard manifest" in err and "Traceback" not in err


def test_slices_of_the_ranks_sum_to_the_whole_and_run_alike(prepared):
    """What the all-reduce adds up: the 3 ranks' sums are one process's, and every rank runs
    the same number of forwards even where the set does not split evenly."""
    import torch

    from raylm.model import ModelConfig, Transformer
    from raylm.train.heldout import group_names, load_set, loss_sums

    sets = [load_set(n, str(prepared["tokens"] / n / "val"), 31) for n in SOURCES]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, max_seq_len=SEQ_LEN, attention="sdpa"))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    whole = loss_sums(model, sets, batch_size=4, device=torch.device("cpu"))
    parts = []
    for rank in range(3):
        calls.clear()
        parts.append(loss_sums(model, sets, batch_size=4, device=torch.device("cpu"), rank=rank, world_size=3))
        assert len(calls) == 2 * 3  # ceil(31 / 12) forwards per set, on every rank
    torch.testing.assert_close(sum(parts), whole, rtol=1e-9, atol=0)
    assert whole.shape == (len(group_names(sets)), 2) and (whole[:, 1] > 0).all()


def test_evaluator_hooks_see_the_model_and_training_state_is_untouched(prepared):
    """A hook (e.g. generation samples) gets the model in eval mode at the eval step; the
    evaluator restores train mode and every RNG stream."""
    import random

    import torch

    from raylm.model import Transformer
    from raylm.train.evaluate import Evaluator

    cfg = train_config(run_config(prepared, Path("unused"), "hooks", **{"eval.max_sequences": 8}))
    seen = []

    def hook(model, ctx):
        seen.append((model.training, ctx.step, ctx.rank))
        torch.rand(3), np.random.rand(), random.random()  # a hook that draws random numbers
        return {"gen/hello": 1.0}

    ev = Evaluator(cfg, 0, 1, torch.device("cpu"), hooks=[hook])
    assert [s.name for s in ev.sets] == list(SOURCES) and ev.due(0) and ev.due(4) and not ev.due(5)
    model = Transformer(cfg.model)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    out = ev(model, 4)
    assert seen == [(False, 4, 0)] and model.training and out["gen/hello"] == 1.0 and "val/web/loss" in out
    after = torch.rand(1), np.random.rand(), random.random()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    assert after == (torch.rand(1), np.random.rand(), random.random())


def test_wrong_objective_combinations_are_config_errors(prepared, tmp_path, capsys):
    base = run_config(prepared, tmp_path, "bad")
    with pytest.raises(ConfigError, match="objective: mlm trains an encoder; set model.causal: false"):
        train_config({**base, "objective": "mlm"})
    with pytest.raises(ConfigError, match="objective: causal predicts the next token"):
        train_config({**base, "objective": "causal", "model": {**base["model"], "causal": False}})
    encoder = {**base["model"], "causal": False}
    with pytest.raises(ConfigError, match="mlm \\(with model.vocab_size 8\\): vocab_size: 8 leaves no non-special"):
        train_config({**base, "objective": "mlm", "model": {**encoder, "vocab_size": 8}})
    with pytest.raises(ConfigError, match="objective: mlm does not take data.seq_len_schedule"):
        train_config({**base, "objective": "mlm", "model": encoder,
                      "data": {**base["data"], "seq_len_schedule": [[0, 32]]}})
    with pytest.raises(ConfigError, match="eval: sets.lang: a set name"):
        train_config({**base, "eval": {"sets": {"lang": "x"}}})
    # fim on shards prepared without FIM: one line naming the folder, before any worker starts
    from raylm.data.shards import write_token_shards

    plain = tmp_path / "plain"
    write_token_shards([pa.table({"tokens": pa.array([[9] * 200], pa.list_(pa.int32()))})], str(plain), SEQ_LEN)
    cfg = train_config({**base, "data": {"path": str(plain)}})
    with pytest.raises(ConfigError, match=f"objective: fim: data.path: {plain} was prepared without FIM"):
        fit(cfg)
    assert not (tmp_path / "bad").exists()
    yaml = tmp_path / "t.yaml"
    yaml.write_text(json.dumps({**base, "data": {"path": str(prepared["root"] / "curated" / "books")}}))
    assert main(["train", "-c", str(yaml)]) == 2
    err = capsys.readouterr().err
    assert "objective: fim: data.path" in err and "no token-shard manifest" in err and "Traceback" not in err


def test_mlm_batch_masks_by_seq_id_and_key(prepared):
    from raylm.data.loader import IGNORE_INDEX, make_batch
    from raylm.train.heldout import load_set
    from raylm.train.objective import mlm_batch

    s = load_set("books", str(prepared["tokens"] / "books" / "val"), 16)
    batch = make_batch(s.seq_ids, s.tokens, s.cu_seqlens)
    cfg = train_config({**run_config(prepared, Path("x"), "m"), "objective": "mlm",
                        "model": {"flavor": "debug", "vocab_size": VOCAB, "max_seq_len": SEQ_LEN, "causal": False}})
    mlm = cfg.mlm_config()
    a, b, c = mlm_batch(batch, mlm, 1), mlm_batch(batch, mlm, 1), mlm_batch(batch, mlm, 2)
    assert all((a[k] == b[k]).all() for k in ("input_ids", "labels"))  # a resumed step masks alike
    assert not (a["labels"] == c["labels"]).all()  # the next step masks anew
    picked = a["labels"] != IGNORE_INDEX
    assert 0.1 < float(picked.float().mean()) < 0.2
    assert (a["labels"][picked] == batch["input_ids"][picked]).all()  # the original token, unshifted
    assert (a["input_ids"][picked] == mlm.mask_id).float().mean() > 0.7
    assert (a["input_ids"][~picked] == batch["input_ids"][~picked]).all()
    # one sequence's mask does not depend on the batch it is in
    alone = mlm_batch(make_batch(s.seq_ids[3:4], s.tokens[3:4], s.cu_seqlens[3:4]), mlm, 1)
    assert (alone["labels"][0] == a["labels"][3]).all()


def test_a_tiny_mlm_encoder_learns_with_two_workers(prepared, tmp_path):
    """objective mlm on an encoder: the masked-token loss, in training and on the held-out
    split (the fixed eval mask), falls well below where it starts (ln V)."""
    d = run_config(prepared, tmp_path, "mlm", objective="mlm", steps=12, micro_batch_size=8, **{
        "model.causal": False, "data": {"path": str(prepared["tokens"] / "books"), "window": 64, "prefetch": 1},
        "optim.lr": 1e-2, "checkpoint.every": 0, "eval.every": 0})
    assert fit(train_config(d)).error is None
    rows = read_metrics(run_dir(train_config(d)))
    start, end = rows[0], rows[-1]
    assert start["step"] == 0 and end["step"] == 12
    assert start["val/books/loss"] == pytest.approx(np.log(VOCAB), rel=0.05)
    assert end["val/books/loss"] < start["val/books/loss"] - 0.5
    train = [r["loss"] for r in rows if "loss" in r]
    assert train[-1] < train[0] - 0.7
    assert "val/books/fim_middle/loss" not in end  # a masked-LM has no infilling loss
    assert 0.1 < end["val/books/tokens"] / (38 * (SEQ_LEN - 1)) < 0.2  # the masked tokens only
