"""``lowbit <command>``: run ``lowbit --help`` or ``lowbit <command> --help``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lowbit import __version__
from lowbit.cli.args import data_dir, int_range, writable_dir

ZOO_NAMES = ("mlp", "cnn", "resnet")
FLOAT_ZOO_NAMES = (*ZOO_NAMES, "cnn-avgpool")  # every zoo model with float weights to train and evaluate


def _cmd_run(args: argparse.Namespace) -> int:
    from lowbit import main_job

    data_dir(args.data_dir)
    if args.report_dir:
        writable_dir(args.report_dir, "--report-dir")
    print(f"lowbit {__version__}: shipped models on the Fashion-MNIST test set (10,000 images)\n")
    table = main_job.run(models=args.models, data_root=args.data_dir)
    print(table.render())
    print(f"\n({table.seconds:.1f} s)")
    start = time.perf_counter()
    print("\n" + main_job.delta_rows().render())
    print(f"\n({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    binary = main_job.binary_rows(data_root=args.data_dir)
    if binary.rows:
        print("\n" + binary.render())
        print(f"\n({time.perf_counter() - start:.1f} s)")
    from lowbit.main_families import family_rows

    start = time.perf_counter()
    families = family_rows(data_root=args.data_dir)
    if families.rows:
        print("\n" + families.render())
        print(f"\n({time.perf_counter() - start:.1f} s)")
    from lowbit.main_lowprec import lowprec_rows

    start = time.perf_counter()
    print("\n" + lowprec_rows(data_root=args.data_dir).render())
    print(f"\n({time.perf_counter() - start:.1f} s)")
    from lowbit.main_snn import snn_rows

    start = time.perf_counter()
    print("\n" + snn_rows(data_root=args.data_dir).render())
    print(f"\n({time.perf_counter() - start:.1f} s)")
    if args.report_dir:
        from lowbit.cli.report_cmd import write_reports

        write_reports(args.models, args.report_dir, args.data_dir, snn_images=200)
    return 0


def _cmd_zoo_list(args: argparse.Namespace) -> int:
    from lowbit import zoo

    for name, e in zoo.ZOO.items():
        try:
            acc = (f"{100 * zoo.shipped_accuracy(name):.2f}%" if e.shipped
                   else "none (no shipped weights: binary QAT from random init, lowbit qat)")
        except Exception as exc:  # noqa: BLE001 - listing must not fail on one bad file
            acc = f"unavailable ({exc})"
        n_params = sum(p.numel() for p in e.build().parameters())
        print(f"{name:10} {n_params:>9,} params  test acc {acc:>8}  {e.description}")
    return 0


def _cmd_zoo_train(args: argparse.Namespace) -> int:
    import dataclasses

    from lowbit import zoo

    data_dir(args.data_dir)
    writable_dir(args.out, "--out")  # before training, not after it
    recipe = zoo.entry(args.name).recipe
    if args.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    if args.seed is not None:
        recipe = dataclasses.replace(recipe, seed=args.seed)
    _, acc = zoo.train_and_save(args.name, args.out, data_root=args.data_dir, recipe=recipe)
    print(f"{args.name}: test accuracy {100 * acc:.2f}%  -> {zoo.weights_path(args.name, args.out)}")
    return 0


def _cmd_zoo_eval(args: argparse.Namespace) -> int:
    from lowbit import zoo
    from lowbit.data import fashion_mnist
    from lowbit.errors import ConfigError

    data_dir(args.data_dir)
    if args.weights_dir is not None and Path(args.weights_dir).is_file():
        raise ConfigError(f"--weights-dir {args.weights_dir} is a file: pass the folder that holds "
                          f"{args.name}.npz and {args.name}.json")
    model = zoo.pretrained(args.name, args.weights_dir)
    acc = zoo.evaluate(model, fashion_mnist("test", root=args.data_dir))
    recorded = zoo.shipped_accuracy(args.name, args.weights_dir)
    print(f"{args.name}: test accuracy {100 * acc:.2f}% (recorded {100 * recorded:.2f}%)")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from lowbit.data import load
    from lowbit.errors import LowbitError

    status = 0
    for name in ("fashion-mnist", "mnist5k", "digits"):
        try:
            split = load(name, "test", root=args.data_dir if name == "fashion-mnist" else None)
            print(f"{name:14} ok       test split: {len(split)} images {tuple(split.x.shape[1:])}")
        except LowbitError as exc:
            print(f"{name:14} MISSING  {exc}")
            status = 1
    return status


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the subcommand parsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lowbit",
        description="Take trained networks to low precision, run them in integer arithmetic, measure the savings.",
    )
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the main job: shipped models, float vs quantized accuracy table",
                       description="Evaluate the shipped reference models on the Fashion-MNIST test set, "
                                   "in float and with each lowbit method, and print one table; then the tables of "
                                   "the shipped delta GRU, binary (W1A1), BitSplit / Eedn / stochastic-ensemble, "
                                   "low-precision and spiking networks, and write the cost reports.")
    p.add_argument("--models", nargs="+", default=list(ZOO_NAMES), choices=ZOO_NAMES, help="zoo models to evaluate")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files "
                   "(default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--report-dir", default="report", help="where the cost report is written, one folder per "
                   "model (default ./report; '' for none)")
    p.set_defaults(func=_cmd_run)

    zp = sub.add_parser("zoo", help="reference models: list, train, evaluate",
                        description="The reference models shipped with lowbit.")
    zsub = zp.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zl = zsub.add_parser("list", help="list the models and their recorded test accuracy",
                         description="List the zoo models, their size and recorded test accuracy.")
    zl.set_defaults(func=_cmd_zoo_list)
    zt = zsub.add_parser("train", help="train a model with its recipe (seeded) and save the weights",
                         description="Train a zoo model on the Fashion-MNIST train split with its recipe, "
                                     "evaluate on the test split and write NAME.npz + NAME.json to --out.")
    zt.add_argument("name", choices=FLOAT_ZOO_NAMES)
    zt.add_argument("--out", default="zoo-weights", help="output folder (default ./zoo-weights)")
    zt.add_argument("--epochs", type=int_range(1), default=None, help="override the recipe's epochs")
    zt.add_argument("--seed", type=int_range(0, 2**63 - 1), default=None, help="override the recipe's seed")
    zt.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    zt.set_defaults(func=_cmd_zoo_train)
    ze = zsub.add_parser("eval", help="evaluate a model's weights on the test set",
                         description="Evaluate shipped (or --weights-dir) weights on the Fashion-MNIST test set.")
    ze.add_argument("name", choices=FLOAT_ZOO_NAMES)
    ze.add_argument("--weights-dir", default=None, help="folder with NAME.npz/NAME.json (default: shipped)")
    ze.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    ze.set_defaults(func=_cmd_zoo_eval)
    zp.set_defaults(func=lambda a: (zp.print_help(), 0)[1])

    from lowbit.cli import ptq_cmd

    ptq_cmd.add_parser(sub)
    from lowbit.cli import deploy_cmd, qat_cmd, report_cmd

    deploy_cmd.add_parsers(sub)
    report_cmd.add_parser(sub)
    qat_cmd.add_parser(sub)
    from lowbit.cli import delta_cmd, lowprec_cmd, snn_cmd

    delta_cmd.add_parser(sub)
    lowprec_cmd.add_parser(sub)
    snn_cmd.add_parser(sub)

    dp = sub.add_parser("data", help="data sets: check which are installed",
                        description="Data sets lowbit loads without downloading.")
    dsub = dp.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dc = dsub.add_parser("check", help="check that the data sets load",
                         description="Try to load every data set and say how to install a missing one.")
    dc.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    dc.set_defaults(func=_cmd_data_check)
    dp.set_defaults(func=lambda a: (dp.print_help(), 0)[1])

    parser.set_defaults(func=lambda a: (parser.print_help(), 0)[1])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a usage error (printed on one line): its status; --help and --version exit 0
        if exc.code in (0, None):
            raise
        return int(exc.code)
    from lowbit.errors import LowbitError

    try:
        return int(args.func(args))
    except LowbitError as exc:
        print(f"lowbit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output folder, full disk, ...
        print(f"lowbit: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
