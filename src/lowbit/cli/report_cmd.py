"""``lowbit report``: what quantization saves for a shipped model or the user's own (HTML, Markdown, JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli.args import data_dir, existing_file, int_range, writable_dir
from lowbit.cli.ptq_cmd import MODEL_FORMS, add_user_data_args, model_arg, user_options_given

ZOO_NAMES = ("mlp", "cnn", "resnet")


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="cost report: accuracy, memory, energy, BOPs and measured latency",
                       description="Compare float32 with lowbit's W8A8, power-of-two W8A8 and W4A8 integer "
                                   "models of a shipped model: accuracy, per-layer MACs/BOPs/memory, energy per "
                                   "inference (45 nm table, or --energy-table), measured latency, the spiking "
                                   "versions' synaptic operations and energy against the int8 ANN, and the shipped "
                                   "binary W1A1, BitSplit W1A2, Eedn and stochastic-ensemble networks (recorded "
                                   "accuracy, BOPs and compute energy, or spikes and cores); writes "
                                   "report.html (plots inline, works offline), report.md and report.json. "
                                   "Your own model (FILE.py:FUNCTION, .pt2 or a Hugging Face folder, with --calib-data) gets the same "
                                   "versions and costs, its accuracy on labelled --test-data (else the decisions "
                                   "agreeing with float32) and each version's output cosine against float32.")
    p.add_argument("--model", nargs="+", default=["cnn"], type=model_arg, metavar="MODEL",
                   help=f"zoo models (mlp, cnn, resnet; default cnn), or one model of yours alone: {MODEL_FORMS}")
    add_user_data_args(p, "your model's samples to measure on; labels 'y' give accuracy (default: the calibration "
                          "samples)")
    p.add_argument("--out", default="report", help="output folder (default ./report; one subfolder per model)")
    p.add_argument("--energy-table", default=None, metavar="JSON", help="your own per-operation energy table")
    p.add_argument("--rounds", type=int_range(0), default=10, help="latency rounds (0: do not measure)")
    p.add_argument("--snn-images", type=int_range(0, 10000), default=500,
                   help="test images for the spiking versions (ANN-to-SNN conversion, IF and AugMapping at T = 4, 8, "
                        "priced against the int8 ANN); 0: leave them out (default 500)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    p.set_defaults(func=run)


def _energy_table(path):
    """The energy table at ``path`` (the shipped one if None); a file of another shape is a ConfigError."""
    from lowbit.cost.energy import EnergyTable
    from lowbit.errors import ConfigError, LowbitError

    if path is None:
        return EnergyTable.load()
    try:
        return EnergyTable.load(path)
    except LowbitError:
        raise
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # a JSON file of another shape
        raise ConfigError(f"--energy-table {path} is not a lowbit energy table (a JSON object of operation "
                          f"-> picojoules): {type(exc).__name__}: {exc}") from None


def write_reports(models, out: str | Path, data_dir=None, table_path=None, rounds: int = 10,
                  snn_images: int = 500) -> list[Path]:
    from lowbit.cost import report
    from lowbit.cost.build import model_report
    from lowbit.cost.families import family_costs
    from lowbit.data import fashion_mnist

    table = _energy_table(table_path)
    calib = fashion_mnist("train", root=data_dir).take(64)
    test = fashion_mnist("test", root=data_dir)
    families = family_costs(table)  # the shipped binary-family networks, priced once, in every zoo model's report
    written = []
    for name in models:
        r = model_report(name, calib, test, latency_rounds=rounds, table=table, snn_images=snn_images)
        r.families = families
        paths = report.write(r, Path(out) / name)
        print(f"report for {name}: {paths['html']} (+ .md, .json)")
        for w in r.warnings:
            print(f"warning: {w}")
        written.append(paths["html"])
    return written


def write_user_report(args: argparse.Namespace) -> Path:
    """The report of the user's model ``args.model`` into ``args.out/<name>``."""
    from lowbit.cost import report
    from lowbit.cost.user_report import user_model_report
    from lowbit.user_model import load_model, load_samples, model_name

    model = load_model(args.model, args.weights)
    calib = load_samples(args.calib_data, "--calib-data")
    test = load_samples(args.test_data, "--test-data") if args.test_data else calib
    name = model_name(args.model)
    r = user_model_report(name, model, calib, test, latency_rounds=args.rounds,
                          table=_energy_table(args.energy_table))
    paths = report.write(r, Path(args.out) / name)
    print(f"report for {args.model}: {paths['html']} (+ .md, .json)")
    for w in r.warnings:
        print(f"warning: {w}")
    return paths["html"]


def _check_models(args: argparse.Namespace) -> bool:
    """Whether ``--model`` names the user's model (then it is the only one, with --calib-data); the user-model
    options are refused with zoo models."""
    from lowbit.errors import ConfigError

    user = [m for m in args.model if m not in ZOO_NAMES]
    given = user_options_given(args)
    if not user:
        if given:
            raise ConfigError(f"{', '.join(given)} belong to your own model (--model FILE.py:FUNCTION, a .pt2 or a "
                              "Hugging Face folder); "
                              f"the zoo models have their weights and use Fashion-MNIST: drop them")
        return False
    if len(args.model) > 1:
        raise ConfigError(f"--model takes zoo models, or one model of yours alone; got {' '.join(args.model)}")
    if args.calib_data is None:
        raise ConfigError(f"--model {args.model[0]} needs --calib-data: a .npy/.npz of representative input samples")
    args.model = user[0]
    return True


def run(args: argparse.Namespace) -> int:
    from lowbit.errors import ConfigError

    if args.rounds < 0:
        raise ConfigError(f"--rounds must be >= 0, got {args.rounds}")
    user = _check_models(args)
    data_dir(args.data_dir)
    writable_dir(args.out, "--out")
    if args.energy_table:
        existing_file(args.energy_table, "--energy-table", ".json")
        _energy_table(args.energy_table)  # a foreign table is refused before the models are quantized
    if user:
        write_user_report(args)
    else:
        write_reports(args.model, args.out, args.data_dir, args.energy_table, args.rounds, args.snn_images)
    return 0
