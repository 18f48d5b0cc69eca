"""``raylm prepare`` on real Korean and English text: tokenise, pack, write shards per source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.cli import main
from raylm.config import ConfigError, from_dict
from raylm.data.prepare import PrepareConfig, prepare, prepare_file
from raylm.data.shards import UNIT_SHIFT, open_token_dataset, read_manifest, write_token_shards
from raylm.data.tokenizer import EOS_ID, TokenizerConfig, load_tokenizer, tokenizer_hash, train_from_iterator
from raylm.data.transforms import FIMConfig, fim_transform
from tests.corpora import KONLPY_CORPUS

CORPUS = KONLPY_CORPUS
SEQ_LEN = 64


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    if not (CORPUS / "kolaw/constitution.txt").is_file():
        pytest.skip("konlpy's corpora are not installed")
    from pydoc_data.topics import topics

    lines = [x for x in (CORPUS / "kolaw/constitution.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    ko = ["\n".join(lines[i:i + 3]) for i in range(0, len(lines), 3)]  # ~115 documents of 3 lines
    en = [p for v in list(topics.values())[:25] for p in paragraphs(v)]
    return {"ko": ko[:120], "en": en[:120]}


@pytest.fixture(scope="module")
def model(texts, tmp_path_factory) -> str:
    lines = [line for t in texts["ko"] + texts["en"] for line in t.splitlines() if line.strip()]
    prefix = tmp_path_factory.mktemp("tok") / "t"
    return str(train_from_iterator(lines, str(prefix), TokenizerConfig(vocab_size=800, character_coverage=0.98, num_threads=1)))


@pytest.fixture(scope="module")
def curated(texts, tmp_path_factory) -> dict[str, list[list[str]]]:
    """Curated folders ``<root>/<lang>/data/part-{0,1}.parquet`` (+ a rejected/ not to read);
    returns the root and, per source, the documents of each file in file order."""
    root = tmp_path_factory.mktemp("curated")
    files: dict[str, list[list[str]]] = {}
    for lang, docs in texts.items():
        (root / lang / "data").mkdir(parents=True)
        (root / lang / "rejected").mkdir()
        files[lang] = [docs[: len(docs) // 2], docs[len(docs) // 2:]]
        for i, chunk in enumerate(files[lang]):
            pq.write_table(pa.table({"id": [f"{lang}-{i}-{j}" for j in range(len(chunk))], "text": chunk}),
                           root / lang / "data" / f"part-{i}.parquet")
        pq.write_table(pa.table({"id": ["junk"], "text": ["xyzzy " * 500]}), root / lang / "rejected" / "p.parquet")
    return {"root": root, "files": files}


def config(model: str, root: Path, **kw) -> PrepareConfig:
    return PrepareConfig(tokenizer=model, seq_len=SEQ_LEN, batch_size=16, rows_per_shard=20,
                         sources={"ko": [str(root / "ko")], "en": [str(root / "en")]}, **kw)


@pytest.fixture(scope="module")
def prepared(ray_session, model, curated, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    summary = prepare(config(model, curated["root"]), str(out))
    return out, summary


def read_shards(folder: Path) -> pa.Table:
    manifest = read_manifest(str(folder))
    table = pa.concat_tables([pq.read_table(folder / s["path"]) for s in manifest["shards"]])
    return table.take(pa.array(np.argsort(table.column("seq_id").to_numpy(), kind="stable")))


def test_manifest_matches_shards(prepared, model, curated):
    out, summary = prepared
    for src in ("ko", "en"):
        m = read_manifest(str(out / src))
        assert m["tokenizer_hash"] == tokenizer_hash(model)
        assert m["seq_len"] == SEQ_LEN
        rows = [pq.ParquetFile(out / src / s["path"]).metadata.num_rows for s in m["shards"]]
        assert [s["rows"] for s in m["shards"]] == rows
        assert len(rows) > 1 and sum(rows) == m["num_sequences"] > 20
        assert max(rows) <= 20  # rows_per_shard caps a shard, however Ray Data bundles the writes
        assert m["sources"] == {src: {"sequences": sum(rows), "tokens": sum(rows) * SEQ_LEN}}
        assert [s["path"] for s in m["shards"]] == [f"shard-{i:05d}.parquet" for i in range(len(rows))]
        assert sorted(p.name for p in (out / src).iterdir()) == sorted([s["path"] for s in m["shards"]]
                                                                       + ["manifest.json"])
        # accounting: every document token is in a sequence or dropped with a file's tail
        assert m["document_tokens"] == m["num_tokens"] + m["dropped_tokens"]
        assert 0 < m["dropped_tokens"] < 2 * SEQ_LEN  # two files, each drops < seq_len
        assert m["waste_fraction"] == pytest.approx(m["dropped_tokens"] / m["document_tokens"])
        assert m["documents"] == sum(len(f) for f in curated["files"][src]) > 100
        assert summary["sources"][src]["num_tokens"] == m["num_tokens"]
    assert json.loads((out / "prepare.json").read_text())["num_tokens"] == summary["num_tokens"]


def test_sequences_are_exact_and_segments_stay_in_documents(prepared, model, curated):
    out, _ = prepared
    sp = load_tokenizer(model)
    for src in ("ko", "en"):
        table = read_shards(out / src)
        assert set(table.column("source").to_pylist()) == {src}
        seq_ids = table.column("seq_id").to_numpy()
        texts_by_file = curated["files"][src]
        for unit, docs in enumerate(texts_by_file):
            mine = (seq_ids >> UNIT_SHIFT) == unit
            assert mine.sum() > 0
            # positions inside a unit are 0..n-1
            assert ((seq_ids[mine] & (2**UNIT_SHIFT - 1)) == np.arange(mine.sum())).all()
            # the packed stream is the file's documents (+eos) in order, minus the dropped tail
            doc_tokens = [sp.encode(t) + [EOS_ID] for t in docs]
            stream = np.concatenate([np.asarray(d, np.int32) for d in doc_tokens])
            seqs = np.asarray(table.filter(pa.array(mine)).column("tokens").to_pylist(), np.int32)
            assert seqs.shape == (mine.sum(), SEQ_LEN)
            assert (seqs.reshape(-1) == stream[: seqs.size]).all()
            assert len(stream) - seqs.size < SEQ_LEN
        joined = "\n".join(t for f in texts_by_file for t in f)
        for toks, cu in zip(table.column("tokens").to_pylist(), table.column("cu_seqlens").to_pylist()):
            assert len(toks) == SEQ_LEN
            assert cu[0] == 0 and cu[-1] == SEQ_LEN and all(a < b for a, b in zip(cu, cu[1:]))
            for a, b in zip(cu, cu[1:]):
                seg = toks[a:b]
                # eos only ends a segment: no segment runs from one document into the next
                assert EOS_ID not in seg[:-1]
                text = sp.decode(seg)
                if "\ufffd" not in text:  # a cut inside a byte-fallback character decodes as U+FFFD
                    assert text in joined
            # every document end inside the sequence is a recorded boundary
            ends = {i + 1 for i, t in enumerate(toks) if t == EOS_ID}
            assert ends <= set(cu)


def test_rerun_is_deterministic_and_dataset_is_sorted(prepared, model, curated, tmp_path):
    out, summary = prepared
    cfg = config(model, curated["root"])
    cfg.sources.pop("ko")  # one source is enough here and saves a Ray run
    again = prepare(cfg, str(tmp_path / "again"))
    for src in ("en",):
        a, b = read_shards(out / src), read_shards(tmp_path / "again" / src)
        assert a.column("seq_id").equals(b.column("seq_id"))
        assert a.column("tokens").equals(b.column("tokens"))
        assert a.column("cu_seqlens").equals(b.column("cu_seqlens"))
        assert again["sources"][src]["waste_fraction"] == summary["sources"][src]["waste_fraction"]
    ds = open_token_dataset(str(out / "en"))
    rows = ds.take_all()
    ids = [r["seq_id"] for r in rows]
    assert ids == a.column("seq_id").to_pylist() and ids == sorted(ids)
    assert [list(r["tokens"]) for r in rows[:3]] == a.column("tokens").to_pylist()[:3]


def test_output_equals_the_shuffle_writer_and_a_retry_replaces_a_files_shards(prepared, model, curated, tmp_path):
    """The per-file tasks write what the Ray Data groupby writer (``write_token_shards``, the path
    prepare took before) makes of the same tokenised files: the same sequences and counts. A task
    run again on the same file (as Ray retries it) replaces that file's shards."""
    out, _ = prepared
    sp = load_tokenizer(model)
    files = curated["files"]["en"]
    tables = [pa.table({"tokens": pa.array([sp.encode(t) + [EOS_ID] for t in docs], pa.list_(pa.int32()))})
              for docs in files]
    ref = write_token_shards(tables, str(tmp_path / "ref"), SEQ_LEN, source="en", rows_per_shard=20)
    mine, theirs = read_shards(out / "en"), read_shards(tmp_path / "ref")
    assert mine.equals(theirs.select(mine.column_names)) and mine.num_rows == ref["num_sequences"]
    manifest = read_manifest(str(out / "en"))
    for key in ("units", "num_sequences", "documents", "document_tokens", "dropped_tokens", "waste_fraction"):
        assert manifest[key] == ref[key], key
    # a file's shards are contiguous seq_id ranges, in manifest order
    firsts = [s["first_seq_id"] for s in manifest["shards"]]
    assert firsts == sorted(firsts) and mine.column("seq_id").to_pylist() == sorted(mine.column("seq_id").to_pylist())

    path = str(sorted((curated["root"] / "en" / "data").glob("*.parquet"))[0])
    folders = {"all": str(tmp_path / "retry")}
    first = prepare_file(config(model, curated["root"]), folders, "en", path, 0)
    names = sorted(p.name for p in (tmp_path / "retry").iterdir())
    assert prepare_file(config(model, curated["root"]), folders, "en", path, 0) == first
    assert sorted(p.name for p in (tmp_path / "retry").iterdir()) == names
    assert sum(f["rows"] for f in first[0]["files"]) == sum(c for u, c in manifest["units"] if u == 0)


def test_fim_per_document_and_cli(ray_session, model, curated, tmp_path, capsys):
    fim = FIMConfig(rate=1.0, spm_rate=0.5, seed=3)
    cfg_yaml = tmp_path / "prep.yaml"
    cfg_yaml.write_text(f"tokenizer: {model}\nseq_len: {SEQ_LEN}\nbatch_size: 7\n"
                        f"sources:\n  en: [{curated['root'] / 'en'}]\n"
                        f"fim: {{rate: 1.0, spm_rate: 0.5, seed: 3}}\n", encoding="utf-8")
    assert main(["prepare", "-c", str(cfg_yaml), "-o", str(tmp_path / "fim")]) == 0
    assert json.loads(capsys.readouterr().out)["sources"]["en"]["num_sequences"] > 0
    sp = load_tokenizer(model)
    table = read_shards(tmp_path / "fim" / "en")
    seq_ids = table.column("seq_id").to_numpy()
    for unit, docs in enumerate(curated["files"]["en"]):
        want = np.concatenate([fim_transform(np.asarray(sp.encode(t) + [EOS_ID], np.int32),
                                             np.random.default_rng([fim.seed, unit, row]), fim)
                               for row, t in enumerate(docs)])
        got = np.asarray(table.filter(pa.array((seq_ids >> UNIT_SHIFT) == unit)).column("tokens").to_pylist(),
                         np.int32).reshape(-1)
        assert len(got) > 0 and (got == want[: len(got)]).all()
        assert (got == 5).sum() > 5  # <fim_prefix> at document starts
    # the output folder is not silently overwritten; a bad config is exit status 2
    assert main(["prepare", "-c", str(cfg_yaml), "-o", str(tmp_path / "fim")]) == 2
    assert main(["prepare", "-c", str(cfg_yaml), "-o", str(tmp_path / "x"), "--set", "seq_len=0"]) == 2


@pytest.mark.parametrize("data, match", [
    ({"sources": {"ko": ["x"]}}, "tokenizer"),
    ({"tokenizer": "t.model"}, "sources"),
    ({"tokenizer": "t.model", "sources": {"a/b": ["x"]}}, "sources.a/b"),
    ({"tokenizer": "t.model", "sources": {"ko": []}}, "no input paths"),
    ({"tokenizer": "t.model", "sources": {"ko": ["x"]}, "fim": {"rate": 2}}, "rate"),
    ({"tokenizer": "t.model", "sources": {"ko": ["x"]}, "concurrency": 0}, "concurrency"),
])
def test_bad_config(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(PrepareConfig, data)


def test_train_batches_read_prepared_shards_once_per_epoch(ray_session, prepared):
    """Shard seq_ids are ``unit << 32 | position`` (not dense): the loader maps indices
    through the manifest and every sequence comes exactly once per epoch, in both ranks."""
    from raylm.data.loader import TrainBatches

    out, _ = prepared
    folder = str(out / "ko")
    stored = read_shards(out / "ko").column("seq_id").to_numpy()
    assert (np.diff(stored >> UNIT_SHIFT) >= 0).all() and len(set(stored >> UNIT_SHIFT)) == 2
    seen = []
    for rank in (0, 1):
        with TrainBatches(folder, 2, rank, 2, seed=3, window=16, num_epochs=1) as it:
            for batch in it:
                seen.extend(batch["seq_id"].tolist())
                assert batch["input_ids"].shape == (2, SEQ_LEN)
    usable = len(stored) // 4 * 4  # whole global batches of 2 x 2
    assert len(seen) == len(set(seen)) == usable and set(seen) <= set(stored.tolist())
