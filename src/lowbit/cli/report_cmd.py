"""``lowbit report``: what quantization saves for a shipped model (HTML, Markdown, JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

ZOO_NAMES = ("mlp", "cnn", "resnet")


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="cost report: accuracy, memory, energy, BOPs and measured latency",
                       description="Compare float32 with lowbit's W8A8, power-of-two W8A8 and W4A8 integer "
                                   "models of a shipped model: accuracy, per-layer MACs/BOPs/memory, energy per "
                                   "inference (45 nm table, or --energy-table), measured latency; writes "
                                   "report.html (plots inline, works offline), report.md and report.json.")
    p.add_argument("--model", nargs="+", default=["cnn"], choices=ZOO_NAMES, help="zoo models (default cnn)")
    p.add_argument("--out", default="report", help="output folder (default ./report; one subfolder per model)")
    p.add_argument("--energy-table", default=None, metavar="JSON", help="your own per-operation energy table")
    p.add_argument("--rounds", type=int, default=10, help="latency rounds (0: do not measure)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    p.set_defaults(func=run)


def write_reports(models, out: str | Path, data_dir=None, table_path=None, rounds: int = 10) -> list[Path]:
    from lowbit.cost import report
    from lowbit.cost.build import model_report
    from lowbit.cost.energy import EnergyTable
    from lowbit.data import fashion_mnist

    table = EnergyTable.load(table_path) if table_path else EnergyTable.load()
    calib = fashion_mnist("train", root=data_dir).take(64)
    test = fashion_mnist("test", root=data_dir)
    written = []
    for name in models:
        r = model_report(name, calib, test, latency_rounds=rounds, table=table)
        paths = report.write(r, Path(out) / name)
        print(f"report for {name}: {paths['html']} (+ .md, .json)")
        for w in r.warnings:
            print(f"warning: {w}")
        written.append(paths["html"])
    return written


def run(args: argparse.Namespace) -> int:
    from lowbit.errors import ConfigError

    if args.rounds < 0:
        raise ConfigError(f"--rounds must be >= 0, got {args.rounds}")
    write_reports(args.model, args.out, args.data_dir, args.energy_table, args.rounds)
    return 0
