"""The ``raylm`` command line: ``curate``, ``curate fit-thresholds``, ``tokenizer train``, ``prepare``, ``train``,
``eval``, ``generate``, ``export``, ``plan``, ``tune``, ``mup coord-check``, ``schedules``, ``recipe``,
``report``, ``demo``.

Every command is quiet about Ray's internals unless ``-v`` (``raylm.console``).

A bad config or a missing input prints one line naming the key or the path and exits with
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raylm import console
from raylm.config import ConfigError, load
from raylm.console import say
from raylm.storage import InputError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


def _curate(args: argparse.Namespace) -> int:
    from raylm.curate.pipeline import CurateConfig, run

    cfg = load(CurateConfig, args.config, args.set)
    stats = run(cfg, args.inputs, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}/data, stats.json, duplicates.parquet"
          + (", rejected/" if cfg.write_rejected else "") + (", report.html" if cfg.report else ""))
    return 0 if stats["conservation_ok"] else 1


def _fit_thresholds(args: argparse.Namespace) -> int:
    from raylm.curate.fit_thresholds import fit, parse_references
    from raylm.curate.steps.quality_table import dump

    table = fit(parse_references(args.reference), base=args.base, min_cut=args.min_cut)
    dump(table, args.output)
    print(f"wrote {args.output}; use it with: quality: {{table: {args.output}}}")
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    import json

    from raylm.cluster import RayConfig, ensure_ray
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


def _train(args: argparse.Namespace) -> int:
    from raylm.cluster import RayConfig, ensure_ray
    from raylm.train.config import load_train_config
    from raylm.train.runlog import read_metrics
    from raylm.train.trainer import fit, run_dir

    cfg = load_train_config(args.config, args.set)
    if args.from_sweep:
        from raylm.tune.sweep import transfer

        if not Path(args.from_sweep).exists():
            raise InputError(f"--from-sweep: {args.from_sweep}: no such file")
        cfg = transfer(args.from_sweep, cfg)
        print(f"from {args.from_sweep}: d_model {cfg.model.d_model} (base {cfg.model.base_width}), "
              f"{cfg.model.parametrization}, lr {cfg.optim.lr:g}, init_std {cfg.model.init_std:g}, "
              f"output_mult {cfg.model.output_mult:g}", file=sys.stderr if args.print_config else sys.stdout)
    if args.print_config:  # the config the run would get (YAML, --set and --from-sweep applied), and stop
        import yaml

        from raylm.config import to_dict
        from raylm.train.resolve import resolve_run

        cfg = resolve_run(cfg).cfg  # as fit() does: paths, a continual run's checkpoint, replay, schedule, eval sets
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    for key, path in ([("data.path", cfg.data.path)] if cfg.data.path else
                      [(f"data.sources.{k}", v) for k, v in cfg.data.sources.items()]):
        if not Path(path).exists() and "://" not in path:
            raise InputError(f"{key}: {path}: no such folder")
    ensure_ray(RayConfig(num_cpus=args.num_cpus))
    from raylm.train.progress import TrainProgress
    from raylm.train.report import run_report

    sc = cfg.scale
    say(f"train {cfg.name}: {cfg.model.num_params() / 1e6:.1f}M parameters, {sc.num_workers} Ray Train "
        f"worker{'s' * (sc.num_workers > 1)} ({sc.strategy}), {cfg.steps} steps of {cfg.global_batch_size} sequences")
    from ray.train import TrainingFailedError

    with TrainProgress(cfg) as progress:
        try:
            result = fit(cfg, callbacks=progress.callbacks)
        except TrainingFailedError as exc:  # Ray Train raises the run's error: say it in one line
            say(f"training failed: {exc}")
            return 1
    folder = run_dir(cfg)
    rows = read_metrics(folder) if folder else progress.rows
    last = rows[-1] if rows else {}
    forgot = {k: v for k, v in last.items() if k.startswith("forgetting/") and k.endswith("/loss")}
    if forgot:  # a continual run: the old domain's loss now minus at its start
        say("forgetting: " + ", ".join(f"{k.split('/')[1]} {v:+.4f}" for k, v in forgot.items()))
    run = folder or f"{cfg.storage_path.rstrip('/')}/{cfg.name}"
    say(f"checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    say(f"report: {run_report(cfg)}; metrics: {run}/metrics.jsonl; tensorboard --logdir {run}/tensorboard")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from raylm.checkpoint import CheckpointError
    from raylm.data.tokenizer import special_ids
    from raylm.infer.checkpoint import load_model
    from raylm.infer.text import resolve_tokenizer
    from raylm.model.generate import SamplingConfig
    from raylm.model.text import complete, infill

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise InputError(f"--device: {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    try:
        model, cfg, _ = load_model(args.checkpoint, device=device)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    sp, add_bos = resolve_tokenizer(cfg, args.tokenizer)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, eos_id=special_ids(sp)["<eos>"])
    sampling.validate()
    if args.fim_suffix is None:
        text, gen = complete(model, sp, args.prompt, sampling, add_bos=add_bos, speculative=args.speculative)
    else:
        text, gen = infill(model, sp, args.prompt, args.fim_suffix, sampling, speculative=args.speculative)
        if args.document:
            text = args.prompt + text + args.fim_suffix
    print(text)
    if args.speculative:
        print(f"speculative: {gen.accepted}/{gen.drafted} drafts accepted (acceptance rate "
              f"{gen.acceptance_rate:.3f}), {gen.tokens_per_forward:.3f} tokens per main-model forward "
              f"({gen.produced} tokens, {gen.forwards} forwards)", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from raylm.infer.checkpoint import CheckpointError

    try:
        from raylm.infer.export import describe, export
    except ImportError as exc:
        raise InputError(f"export needs transformers ({exc}): pip install 'raylm[export]'") from None
    try:
        summary = export(args.checkpoint, args.output, tokenizer=args.tokenizer, dtype=args.dtype,
                         overwrite=args.overwrite)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    print(describe(summary))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from raylm.infer.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.data, max_sequences=args.max_sequences,
                                 batch_size=args.batch_size, device=args.device)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    out = report["metrics"]
    print(f"{args.checkpoint}: step {report['step']}, objective {report['objective']}")
    print(f"{'set':<28} {'loss':>9} {'ppl':>11} {'tokens':>10}")
    for key in out:
        if key.endswith("/loss"):
            group = key.removesuffix("/loss")
            print(f"{group:<28} {out[key]:>9.4f} {out[group + '/ppl']:>11.2f} {out[group + '/tokens']:>10}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    import json
    import math

    from raylm.cluster import RayConfig, ensure_ray
    from raylm.tune.sweep import load_sweep, run_sweep
    from raylm.tune.table import TrialTable

    sweep, base = load_sweep(args.config, args.set)
    ensure_ray(RayConfig(num_cpus=args.num_cpus))
    grid = math.prod(len(v) for space in sweep.search.values() for k, v in space.items() if k == "grid")
    table = TrialTable(list(sweep.search), sweep.metric, sweep.mode, total=grid * sweep.num_samples)
    best = run_sweep(sweep, base, callbacks=[table])
    print(json.dumps(best, indent=2))
    print(f"results: {Path(sweep.storage_path) / sweep.name}/results.csv, best.json")
    return 0


def _coord_check(args: argparse.Namespace) -> int:
    from raylm.model.config import ModelConfig
    from raylm.tune.coord_check import run, text_batches

    if not Path(args.text).exists():
        raise InputError(f"--text: {args.text}: no such file")
    base = ModelConfig(vocab_size=256, n_layers=args.layers, n_heads=args.heads, max_seq_len=args.seq_len,
                       attention="sdpa")
    batches = text_batches(args.text, args.steps, args.batch, args.seq_len)
    result = run(base, args.widths, batches, args.output, lr=args.lr)
    for p, g in result["growth_across_widths"].items():
        print(f"{p:>4}: largest/smallest mean |activation| across widths: "
              + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
    print(f"wrote {args.output}/coord_check.json, coord_check.png")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from raylm.config import load_data
    from raylm.plan import plan, plan_config, render

    report = plan(plan_config(*load_data(args.config, args.set)))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _schedules(args: argparse.Namespace) -> int:
    from raylm.optim.schedules import ScheduleConfig, plot_schedules

    cfgs = {name: ScheduleConfig(name=name, warmup_steps=args.warmup, total_steps=args.steps,
                                 **({"d_model": 512} if name == "noam" else {}))
            for name in ("cosine", "wsd", "linear", "inverse_sqrt", "noam")}
    plot_schedules(cfgs, args.lr, args.steps, args.output)
    print(f"wrote {args.output}")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    import json

    from raylm.recipe import RecipeConfig, run_recipe

    cfg = load(RecipeConfig, args.config, args.set)
    report = run_recipe(cfg, args.output)
    print(json.dumps({k: report[k] for k in ("curate", "tokenizer", "train", "eval") if k in report},
                     indent=2, ensure_ascii=False))
    print(f"wrote {args.output}/recipe.json; the training run's report: {report['train']['report']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from raylm.train.report import write_report

    print(f"wrote {write_report(args.run, args.output, args.storage_endpoint)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from raylm.demo import run_demo

    return run_demo(args.output, num_cpus=args.num_cpus, steps=args.steps)


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

    f = sub.add_parser("fit-thresholds", help="(also: raylm curate fit-thresholds) fit the quality step's "
                       "thresholds per language on reference text")
    f.add_argument("--reference", action="append", required=True, metavar="LANG=PATH",
                   help="reference text of one language (JSONL with 'text', .gz too, or a folder); en is needed")
    f.add_argument("-o", "--output", required=True, help="the table to write (YAML)")
    f.add_argument("--base", default="builtin", help="table whose segmenters, stop words and rules_off are kept")
    f.add_argument("--min-cut", type=int, default=5,
                   help="fewest English documents a threshold must cut to be fitted by quantile")
    f.set_defaults(func=_fit_thresholds)

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
    r.add_argument("-o", "--output", required=True, help="output folder or URI: writes OUT/<source>/shard-*.parquet (and OUT/<source>/val/ with val:)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--overwrite", action="store_true", help="replace existing shards")
    r.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray")
    r.set_defaults(func=_prepare)

    tr = sub.add_parser("train", help="train a model on packed token shards with Ray Train")
    tr.add_argument("-c", "--config", help="YAML TrainConfig (model, data, optim, scale, checkpoint, ...)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tr.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray")
    tr.add_argument("--from-sweep", metavar="BEST_JSON", help="apply a sweep's best values (μP: at a new width)")
    tr.add_argument("--print-config", action="store_true",
                    help="print the resolved config as YAML (stdout) and exit without training")
    tr.set_defaults(func=_train)

    g = sub.add_parser("generate", help="continue a prompt (or fill in the middle) with a trained checkpoint")
    g.add_argument("checkpoint", help="checkpoint folder, or a run folder (its latest checkpoint)")
    g.add_argument("prompt", help="the text to continue (with --fim-suffix: the prefix)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: all)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tokenizer", help="SentencePiece .model (default: the one the training data was prepared with)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    g.add_argument("--fim-suffix", help="fill in the middle between the prompt and this suffix; prints the middle")
    g.add_argument("--document", action="store_true", help="with --fim-suffix: print prefix + middle + suffix")
    g.add_argument("--speculative", action="store_true",
                   help="greedy decoding drafted by the model's MTP heads; prints the acceptance rate to stderr")
    g.set_defaults(func=_generate)
    ex = sub.add_parser("export", help="a checkpoint as a Hugging Face Llama folder (transformers, vLLM)")
    ex.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    ex.add_argument("-o", "--output", required=True, help="the folder to write (config.json, model.safetensors, tokenizer)")
    ex.add_argument("--tokenizer", help="SentencePiece .model (default: the one the training data was prepared with)")
    ex.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="of the written weights (default float32, as trained)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    ex.set_defaults(func=_export)
    ev = sub.add_parser("eval", help="held-out loss and perplexity of a checkpoint, per set and per language")
    ev.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its latest checkpoint)")
    ev.add_argument("--data", nargs="+", required=True, metavar="FOLDER",
                    help="token-shard folders (e.g. OUT/<source>/val), or NAME=FOLDER")
    ev.add_argument("--max-sequences", type=int, default=None,
                    help="sequences per set, evenly spaced (default: the run's eval.max_sequences; 0: all)")
    ev.add_argument("--batch-size", type=int, default=None, help="sequences per forward (default: the run's)")
    ev.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument("-o", "--output", help="also write the JSON to this file")
    ev.set_defaults(func=_eval)

    tu = sub.add_parser("tune", help="a Ray Tune sweep (ASHA) over train runs, e.g. μP at a small width")
    tu.add_argument("-c", "--config", required=True, help="sweep YAML (tune/*.yaml)")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep key")
    tu.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of a local Ray")
    tu.set_defaults(func=_tune)

    mu = sub.add_parser("mup", help="μP tools")
    musub = mu.add_subparsers(dest="mup_cmd", required=True)
    cc = musub.add_parser("coord-check", help="activation size against width under SP and μP (plot + table)")
    cc.add_argument("-o", "--output", default="out/coord_check")
    cc.add_argument("--text", default=str(SAMPLE / "corpus.jsonl.gz"), help="text to train on (bytes as tokens)")
    cc.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    cc.add_argument("--steps", type=int, default=5)
    cc.add_argument("--lr", type=float, default=1e-2)
    cc.add_argument("--layers", type=int, default=2)
    cc.add_argument("--heads", type=int, default=4)
    cc.add_argument("--batch", type=int, default=8)
    cc.add_argument("--seq-len", type=int, default=64)
    cc.set_defaults(func=_coord_check)

    pl = sub.add_parser("plan", help="per-GPU memory, step time and cost of a run; recommends a strategy")
    pl.add_argument("-c", "--config", help="YAML PlanConfig (model, seq_len, micro_batch_size, num_gpus, gpu, prices)")
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    pl.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    pl.set_defaults(func=_plan)

    sc = sub.add_parser("schedules", help="plot the learning-rate schedules to a PNG")
    sc.add_argument("-o", "--output", default="schedules.png")
    sc.add_argument("--steps", type=int, default=10_000)
    sc.add_argument("--warmup", type=int, default=500)
    sc.add_argument("--lr", type=float, default=3e-4)
    sc.set_defaults(func=_schedules)

    rc = sub.add_parser("recipe", help="curate -> tokenizer -> prepare -> train -> eval, from one YAML")
    rc.add_argument("-c", "--config", required=True, help="recipe YAML (e.g. jobs/configs/recipe_ko.yaml)")
    rc.add_argument("-o", "--output", required=True, help="output folder: curated/, tokenizer/, tokens/, train/")
    rc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    rc.set_defaults(func=_recipe)

    rp = sub.add_parser("report", help="an HTML report of a training run: curves, hardware, config")
    rp.add_argument("run", help="the run folder (STORAGE/NAME), local or a URI")
    rp.add_argument("-o", "--output", help="where to write the page (default RUN/report.html)")
    rp.add_argument("--storage-endpoint", help="endpoint of an S3-compatible store for s3:// runs")
    rp.set_defaults(func=_report)

    d = sub.add_parser("demo", help="run the whole pipeline on the shipped sample corpus")
    d.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    d.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray (default 4)")
    d.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    d.set_defaults(func=_demo)
    _add_verbose(p)
    return p


def _add_verbose(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``-v``/``--verbose`` on every command (``raylm -v demo`` and ``raylm demo -v`` alike)."""
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                        help="show Ray's own logs too (-vv: debug); or set RAYLM_LOG_LEVEL=INFO")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child, top=False)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["curate", "fit-thresholds"]:
        argv = argv[1:]
    args = parser().parse_args(argv)
    console.set_verbosity(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, InputError) as exc:
        print(f"raylm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
