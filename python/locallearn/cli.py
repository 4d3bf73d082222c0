"""The `locallearn` command line: `train`, `reproduce`, `analyze`, `demo` and `info`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from locallearn import config


def _info(args: argparse.Namespace) -> int:
    from locallearn import info

    print(info.report())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from locallearn import demo, info
    from locallearn.engine.compare import format_summaries

    print(info.report(), end="\n\n")
    settings = {name.replace("_", "-"): getattr(args, name) for name in _setting_names(skip=DEMO_FIXED)}
    settings = {key: value for key, value in settings.items() if value is not None}
    try:
        settings, note = demo.resolve_data(settings)
    except ValueError as error:
        print(f"locallearn demo: error: {error}", file=sys.stderr)
        return 2
    if note:
        print(note, end="\n\n")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        rows = demo.run(settings, args.runs_dir, progress=not args.no_progress)
    except RuntimeError as error:
        print(f"locallearn demo: {error}", file=sys.stderr)
        return 1
    print(format_summaries(rows, settings, device))
    return 0


def _train(args: argparse.Namespace) -> int:
    from locallearn import engine
    from locallearn.engine import distributed
    from locallearn.engine.trainer import train_error_text

    finished = False
    try:
        world = distributed.world_from_environment()
        progress = not args.no_progress
        if args.resume:
            changed = [name for name in _setting_names() if getattr(args, name) != args.command_parser.get_default(name)]
            if changed:
                raise ValueError(f"--resume continues a run with its own config.toml; drop "
                                 f"{', '.join('--' + name.replace('_', '-') for name in changed)}")
            trainer = engine.resume_run(args.resume, progress=progress, world=world)
        elif _restarted_by_torchrun() and args.run_dir and (Path(args.run_dir) / engine.CONFIG_NAME).is_file():
            trainer = engine.resume_run(args.run_dir, progress=progress, world=world)  # torchrun --max-restarts
        else:
            settings = engine.TrainSettings(**{name: getattr(args, name) for name in _setting_names()})
            trainer = engine.start_run(settings, progress=progress, world=world)
        if world.is_main:
            print(f"run directory: {trainer.run_dir}", flush=True)
        record = trainer.fit()
        finished = True
    except engine.DivergenceError as error:
        print(f"locallearn train: stopped: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"locallearn train: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.leave(finished)
    if record and world.is_main:
        error = trainer.rule.model.task.error_name
        print(f"epoch {record['epoch']}: test {error} {record['test_error']:.4f}, "
              f"train {error} {train_error_text(record, 4)}, {record['images_per_s']:.0f} images/s")
        if "best_epoch" in record:
            print(f"lowest validation {error} {record['best_validation_error']:.4f} at epoch {record['best_epoch']} "
                  f"(checkpoints/best.pt): test {error} there {record['test_error_at_best']:.4f}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from locallearn.analysis.report import FIGURES_DIR, REPORT_NAME, analyze_run

    try:
        report = analyze_run(args.run_dir, compare=args.compare, split=args.split, max_samples=args.max_samples,
                             device=args.device, tsne_layers=args.tsne_layers, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"locallearn analyze: error: {error}", file=sys.stderr)
        return 2
    for name, run in report["runs"].items():
        print(f"{name} (epoch {run['epoch']}, {report['samples']} {report['split']} examples)")
        print(f"  {'layer':<8} {'features':>8} {'ID':>7} {'95% CI':>16} {'inter/intra':>11}")
        for layer, features, dimension, separation in zip(run["layers"], run["features"],
                                                          run["intrinsic_dimension"], run["class_separation"]):
            low, high = dimension["ci95"]
            print(f"  {layer:<8} {features:>8} {dimension['dimension']:>7.2f} {f'[{low:.2f}, {high:.2f}]':>16} "
                  f"{separation['ratio']:>11.3f}")
        angles = ", ".join(f"{module} {'-' if angle is None else f'{angle:.1f}'}"
                           for module, angle in run["alignment_degrees"].items())
        print(f"  angle to backprop's update (degrees): {angles}")
    print(f"figures and {REPORT_NAME}: {Path(args.run_dir) / FIGURES_DIR}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from locallearn.engine.reproduce import reproduce

    try:
        rows = [] if args.report_only else args.rows
        markdown_path, json_path, failed = reproduce(args.table, args.out, jobs=args.jobs, epochs=args.epochs,
                                                     rows=rows, progress=not args.no_progress)
    except ValueError as error:
        print(f"locallearn reproduce: error: {error}", file=sys.stderr)
        return 2
    print(markdown_path.read_text(), end="")
    print(f"written: {markdown_path}, {json_path}")
    if failed:
        print(f"locallearn reproduce: {len(failed)} cell(s) failed; rerun to resume them", file=sys.stderr)
        return 1
    return 0


def _restarted_by_torchrun() -> bool:
    """Whether torchrun restarted this process after a failure (``--max-restarts``): the run
    then continues from its last checkpoint instead of refusing its existing run directory."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _setting_names(skip: tuple = ()) -> list[str]:
    from locallearn.engine.run import settings_fields

    return [item.name for item in settings_fields() if item.name not in skip]


DEMO_FIXED = ("rule", "run_dir")
"""Settings the demo chooses itself: it runs every rule, each in its own directory."""


def _add_setting_flags(parser: argparse.ArgumentParser, defaults: dict | None = None, skip: tuple = ()) -> None:
    """One flag per TrainSettings field (``--batch-size`` for ``batch_size``)."""
    from locallearn.engine.run import settings_fields

    for item in settings_fields():
        if item.name in skip:
            continue
        default = (defaults or {}).get(item.name.replace("_", "-"), item.default)
        options = {key: value for key, value in item.metadata.items() if key != "help"}
        if isinstance(item.default, bool):
            options["action"] = argparse.BooleanOptionalAction
        parser.add_argument("--" + item.name.replace("_", "-"), default=default,
                            help=f"{item.metadata['help']} (default: {default})", **options)


def _add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train a network with a learning rule and write a run directory")
    train.add_argument("--config", help="TOML file of settings (e.g. configs/vgg8b-fashion-mnist.toml); "
                                        "flags override it")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_setting_flags(train)
    train.set_defaults(run=_train, command_parser=train)


def _add_demo_parser(commands) -> None:
    from locallearn.demo import DEMO_RULES, DEMO_SETTINGS

    demo = commands.add_parser("demo", help=f"train {' and '.join(DEMO_RULES)} side by side on real data")
    demo.add_argument("--config", help="TOML file of settings (e.g. configs/demo.toml); flags override it")
    demo.add_argument("--runs-dir", default="runs", help="where the demo's run directories go (default: runs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_setting_flags(demo, DEMO_SETTINGS, skip=DEMO_FIXED)
    demo.set_defaults(run=_demo, command_parser=demo)


def _add_reproduce_parser(commands) -> None:
    reproduce = commands.add_parser("reproduce", help="run a paper's table (recipes x columns x seeds, "
                                                      "configs/tables/) and print ours beside the paper's numbers")
    reproduce.add_argument("table", metavar="TABLE", help="a table file, e.g. configs/tables/seed002-table2.toml")
    reproduce.add_argument("--jobs", type=int, default=1, help="cells trained at once (default: 1)")
    reproduce.add_argument("--out", help="directory of the cells' runs and the table (default: results/TABLE)")
    reproduce.add_argument("--epochs", type=int, help="a quick look: every cell trains this many epochs, in a "
                                                       "directory of its own, and the table says so")
    reproduce.add_argument("--rows", nargs="+", metavar="ROW", help="train only these rows' cells (the table "
                                                                      "still shows every row)")
    reproduce.add_argument("--report-only", action="store_true", help="train nothing: write the table from the "
                                                                      "cells as they are")
    reproduce.add_argument("--no-progress", action="store_true", help="no progress bar")
    reproduce.set_defaults(run=_reproduce)


def _add_analyze_parser(commands) -> None:
    from locallearn.analysis.report import SPLITS

    analyze = commands.add_parser("analyze", help="measure a trained run's representations (intrinsic dimension, "
                                                  "CKA, RSA, class separation, t-SNE) and draw them")
    analyze.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by locallearn train")
    analyze.add_argument("--compare", metavar="OTHER_RUN_DIR", help="also compare every layer with this run's")
    analyze.add_argument("--split", choices=SPLITS, default="test", help="examples to use (default: test)")
    analyze.add_argument("--max-samples", type=int, default=2000,
                         help="the first N examples of the split (default: 2000)")
    analyze.add_argument("--tsne-layers", nargs="+", metavar="LAYER",
                         help="layers to embed, e.g. block2 output (default: the last hidden block and the output)")
    analyze.add_argument("--device", help="cpu or cuda (default: the run's)")
    analyze.add_argument("--no-progress", action="store_true", help="no progress bars")
    analyze.set_defaults(run=_analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locallearn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands)
    _add_reproduce_parser(commands)
    _add_analyze_parser(commands)
    info = commands.add_parser("info", help="versions, the native extension and the devices each op serves")
    info.set_defaults(run=_info)
    _add_demo_parser(commands)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a subcommand's ``--config`` file supplies its defaults.

    A recipe serves several rules (``--rule`` picks one), so a rule option it sets applies
    to the rules that take it and is dropped, with a note, for one that does not; the same
    option given as a flag is still an error there."""
    parser = build_parser()
    flags = parser.parse_args(argv)
    if not getattr(flags, "config", None):
        return flags
    try:
        config.apply_defaults(flags.command_parser, config.load_toml(flags.config), flags.config)
    except ValueError as error:
        parser.error(str(error))
    args = parser.parse_args(argv)
    if getattr(args, "rule", None):
        _drop_recipe_options_the_rule_does_not_take(args, flags)
    return args


def _drop_recipe_options_the_rule_does_not_take(args: argparse.Namespace, flags: argparse.Namespace) -> None:
    from locallearn.engine.run import RULE_OPTIONS
    from locallearn.rules import RULE_NAMES, rule_options

    if args.rule not in RULE_NAMES:
        return  # build_rule names the known rules
    dropped = [name for name in RULE_OPTIONS if name not in rule_options(args.rule)
               and getattr(args, name) is not None and getattr(flags, name) is None]
    for name in dropped:
        setattr(args, name, None)
    if dropped:
        print(f"locallearn: {args.config} sets {', '.join(name.replace('_', '-') for name in dropped)}, which rule "
              f"{args.rule!r} does not take; left out", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
