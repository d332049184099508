"""``lowbit delta``: convert a shipped recurrent model to a delta network (Neil et al., ICML 2017).

``convert`` evaluates one ``(theta_x, theta_h)`` pair, ``sweep`` a list of them; both print the
test accuracy and the recurrent layers' MAC and weight-fetch reductions against the dense layers.
"""

from __future__ import annotations

import argparse
import json

from lowbit.cli.args import float_range, writable_file

MODELS = ("vowels_gru",)
SWEEP_THETAS = ((0.0, 0.0), (0.05, 0.05), (0.1, 0.1), (0.2, 0.1), (0.2, 0.2), (0.3, 0.2), (0.4, 0.3),
                (0.5, 0.3), (0.6, 0.4), (0.8, 0.5), (1.0, 0.5))


def add_parser(sub) -> None:
    p = sub.add_parser("delta", help="delta networks: convert a shipped GRU, sweep its thresholds",
                       description="Run a shipped recurrent model as a delta network (only changes above a "
                                   "threshold are propagated) and measure accuracy against MACs and weight fetches.")
    dsub = p.add_subparsers(dest="delta_command", metavar="DELTA_COMMAND")
    c = dsub.add_parser("convert", help="convert at one threshold pair and compare with the dense model",
                        description="Convert the shipped model's GRU with lowbit.delta.to_delta (no retraining) "
                                    "and print test accuracy, MAC and weight-fetch reduction vs the dense model.")
    c.add_argument("--model", default="vowels_gru", choices=MODELS, help="shipped recurrent model (default vowels_gru)")
    c.add_argument("--theta-x", type=float_range(0.0), default=0.5, help="input delta threshold, >= 0 (default 0.5)")
    c.add_argument("--theta-h", type=float_range(0.0), default=0.3, help="hidden delta threshold, >= 0 (default 0.3)")
    c.set_defaults(func=run_convert)
    s = dsub.add_parser("sweep", help="accuracy against MAC reduction over a threshold sweep",
                        description="Convert the shipped model at a sweep of (theta_x, theta_h) pairs and print "
                                    "the table; --json writes its rows.")
    s.add_argument("--model", default="vowels_gru", choices=MODELS, help="shipped recurrent model (default vowels_gru)")
    s.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON to PATH")
    s.set_defaults(func=run_sweep)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _points(model_name: str, thetas):
    from lowbit.delta import sweep
    from lowbit.zoo import recurrent

    model = recurrent.pretrained(model_name)
    test = recurrent.eval_split(model_name)
    dense = recurrent.accuracy(model, test)
    return dense, sweep(model, thetas, lambda m: recurrent.accuracy(m, test))


def run_convert(args: argparse.Namespace) -> int:
    dense, (p,) = _points(args.model, [(args.theta_x, args.theta_h)])
    print(f"{args.model}: dense accuracy {100 * dense:.2f}%; delta theta_x={p.theta_x:g} theta_h={p.theta_h:g}: "
          f"accuracy {100 * p.metric:.2f}% ({100 * (p.metric - dense):+.2f} points), "
          f"MACs /{p.cost.mac_reduction:.2f}, weight fetches /{p.cost.fetch_reduction:.2f} "
          f"(occupancy dx {p.cost.x_occupancy:.3f}, dh {p.cost.h_occupancy:.3f})")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    if args.json:
        writable_file(args.json, "--json")  # before the sweep, not after it
    dense, points = _points(args.model, SWEEP_THETAS)
    print(f"{args.model}: dense test accuracy {100 * dense:.2f}%")
    print(f"{'theta_x':>8}{'theta_h':>8}{'accuracy':>10}{'loss':>8}{'MACs':>9}{'fetches':>9}{'occ dx':>8}{'occ dh':>8}")
    rows = []
    for p in points:
        c = p.cost
        print(f"{p.theta_x:>8.2f}{p.theta_h:>8.2f}{100 * p.metric:>9.2f}%{100 * (dense - p.metric):>8.2f}"
              f"{c.mac_reduction:>8.2f}x{c.fetch_reduction:>8.2f}x{c.x_occupancy:>8.3f}{c.h_occupancy:>8.3f}")
        rows.append({"model": args.model, "theta_x": p.theta_x, "theta_h": p.theta_h, "accuracy": p.metric,
                     "dense_accuracy": dense, "mac_reduction": c.mac_reduction,
                     "fetch_reduction": c.fetch_reduction, "x_occupancy": c.x_occupancy,
                     "h_occupancy": c.h_occupancy})
    if args.json:
        from lowbit.utils.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
        print(f"rows -> {args.json}")
    return 0
