"""The ``raylm`` command line: ``raylm curate``, ``raylm tokenizer train``, ``raylm prepare``, ``raylm demo``.

A bad config or a missing input prints one line naming the key or the path and exits with
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raylm.config import ConfigError, load
from raylm.data.read import InputError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


def _curate(args: argparse.Namespace) -> int:
    from raylm.data.pipeline import CurateConfig, run

    cfg = load(CurateConfig, args.config, args.set)
    stats = run(cfg, args.inputs, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}/data, stats.json, duplicates.parquet"
          + (", rejected/" if cfg.write_rejected else "") + (", report.html" if cfg.report else ""))
    return 0 if stats["conservation_ok"] else 1


def _tokenizer_train(args: argparse.Namespace) -> int:
    import json

    from raylm.data.pipeline import RayConfig, ensure_ray
    from raylm.data.tokenizer import TokenizerConfig, TokenizerError, train_tokenizer

    cfg = load(TokenizerConfig, args.config, args.set)
    ensure_ray(RayConfig(num_cpus=args.num_cpus))
    try:
        report = train_tokenizer(args.inputs, args.output, cfg)
    except TokenizerError as exc:
        raise InputError(str(exc)) from None
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import json

    from raylm.data.prepare import PrepareConfig, prepare

    cfg = load(PrepareConfig, args.config, args.set)
    if args.num_cpus is not None:
        cfg.ray.num_cpus = args.num_cpus
    summary = prepare(cfg, args.output, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from raylm.demo import run_demo

    return run_demo(args.output, num_cpus=args.num_cpus)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raylm", description="Raw text to a trained language model on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("curate", help="curate text with Ray Data (normalise, filter, dedup, ...)")
    c.add_argument("inputs", nargs="+", help="JSONL (.gz/.zst), Parquet or text files or folders; local or URIs")
    c.add_argument("-o", "--output", required=True, help="output folder or URI")
    c.add_argument("-c", "--config", help="YAML config (steps in run order and their options)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.set_defaults(func=_curate)

    t = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer on a curated dataset")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True)
    tt = tsub.add_parser("train", help="train on a uniform sample streamed with Ray Data")
    tt.add_argument("inputs", nargs="+", help="curated Parquet folders (OUT/data) or JSONL files")
    tt.add_argument("-o", "--output", required=True, help="model prefix: writes PREFIX.model, .vocab, .report.json")
    tt.add_argument("-c", "--config", help="YAML TokenizerConfig (model_type, vocab_size, ...)")
    tt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tt.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray")
    tt.set_defaults(func=_tokenizer_train)

    r = sub.add_parser("prepare", help="tokenize, pack and write token shards per source for training")
    r.add_argument("-c", "--config", help="YAML PrepareConfig (tokenizer, seq_len, sources, fim, ...)")
    r.add_argument("-o", "--output", required=True, help="output folder or URI: writes OUT/<source>/shard-*.parquet")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--overwrite", action="store_true", help="replace existing shards")
    r.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray")
    r.set_defaults(func=_prepare)

    d = sub.add_parser("demo", help="run the whole pipeline on the shipped sample corpus")
    d.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    d.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray (default 4)")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, InputError) as exc:
        print(f"raylm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
