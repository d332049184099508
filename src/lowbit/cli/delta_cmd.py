"""``lowbit delta``: convert a shipped recurrent model to a delta network (Neil et al., ICML 2017).

``convert`` evaluates one ``(theta_x, theta_h)`` pair, ``sweep`` a list of them; both print the
test accuracy and the recurrent layers' MAC and weight-fetch reductions against the dense layers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowbit.cli.args import float_range, int_range, writable_dir, writable_file
from lowbit.errors import CheckpointError

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
    t = dsub.add_parser("train", help="fine-tune the shipped GRU as a delta network (temporal L1 on h)",
                        description="Fine-tune the shipped model as a delta network at --theta-x/--theta-h with "
                                    "lowbit.delta.training.train_delta (thresholded forward, straight-through "
                                    "gradient, loss + lam * sum_t |h_t - h_(t-1)|), then print accuracy and "
                                    "MAC/fetch reduction; --out writes MODEL.npz + MODEL.json (the same layout "
                                    "as the shipped weights, loadable with --weights-dir).")
    t.add_argument("--model", default="vowels_gru", choices=MODELS, help="shipped recurrent model (default vowels_gru)")
    t.add_argument("--theta-x", type=float_range(0.0), default=0.5, help="input delta threshold, >= 0 (default 0.5)")
    t.add_argument("--theta-h", type=float_range(0.0), default=0.3, help="hidden delta threshold, >= 0 (default 0.3)")
    t.add_argument("--lam", type=float_range(0.0), default=0.0, help="temporal L1 weight, >= 0 (default 0)")
    t.add_argument("--epochs", type=int_range(1, 1000), default=5, help="fine-tuning epochs (default 5)")
    t.add_argument("--lr", type=float_range(0.0, 1.0, low_open=True), default=1e-3, help="Adam learning rate")
    t.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed (default 0)")
    t.add_argument("--out", default=None, metavar="DIR", help="write the fine-tuned weights to DIR")
    t.set_defaults(func=run_train)
    for q in (c, s):
        q.add_argument("--weights-dir", default=None, metavar="DIR",
                       help="folder with MODEL.npz/MODEL.json (default: shipped; e.g. from 'lowbit delta train')")
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _points(model_name: str, thetas, weights_dir=None):
    from lowbit.delta import sweep
    from lowbit.zoo import recurrent

    if weights_dir is not None and not Path(weights_dir, f"{model_name}.json").is_file():
        raise CheckpointError(f"--weights-dir {weights_dir}: no {model_name}.json/.npz there; write them with "
                              f"'lowbit delta train --out {weights_dir}' (or leave the flag out for the shipped weights)")
    model = recurrent.pretrained(model_name, weights_dir)
    test = recurrent.eval_split(model_name)
    dense = recurrent.accuracy(model, test)
    return dense, sweep(model, thetas, lambda m: recurrent.accuracy(m, test))


def run_convert(args: argparse.Namespace) -> int:
    dense, (p,) = _points(args.model, [(args.theta_x, args.theta_h)], args.weights_dir)
    print(f"{args.model}: dense accuracy {100 * dense:.2f}%; delta theta_x={p.theta_x:g} theta_h={p.theta_h:g}: "
          f"accuracy {100 * p.metric:.2f}% ({100 * (p.metric - dense):+.2f} points), "
          f"MACs /{p.cost.mac_reduction:.2f}, weight fetches /{p.cost.fetch_reduction:.2f} "
          f"(occupancy dx {p.cost.x_occupancy:.3f}, dh {p.cost.h_occupancy:.3f})")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    if args.json:
        writable_file(args.json, "--json")  # before the sweep, not after it
    dense, points = _points(args.model, SWEEP_THETAS, args.weights_dir)
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


def run_train(args: argparse.Namespace) -> int:
    import platform
    import time

    import torch

    from lowbit.data.japanese_vowels import japanese_vowels
    from lowbit.delta import DeltaGRU, record_counts
    from lowbit.delta.training import DeltaClassifier, train_delta
    from lowbit.training import LoopConfig
    from lowbit.zoo import recurrent
    from lowbit.zoo.weights_io import save_weights

    if args.out:
        writable_dir(args.out, "--out")  # before training, not after it
    dense = recurrent.pretrained(args.model)
    test = recurrent.eval_split(args.model)
    dense_acc = recurrent.accuracy(dense, test)
    model = DeltaClassifier(DeltaGRU.from_torch(dense.rnn, args.theta_x, args.theta_h), dense.head)
    start = time.perf_counter()
    train_delta(model, recurrent.LengthBatches(japanese_vowels("train"), 32, args.seed),
                LoopConfig(epochs=args.epochs, batch_size=32, seed=args.seed), lam=args.lam,
                optimizer=lambda params: torch.optim.Adam(params, args.lr), progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad(), record_counts(model) as rec:
        right = sum(int((model(x).logits.argmax(1) == y).sum()) for x, y in recurrent.length_batches(test, 512))
    acc, cost = right / len(test), rec.total()
    tuned = recurrent.entry(args.model).build()
    tuned.load_state_dict(model.state_dict())  # the same keys: the fine-tuned weights as a dense model
    tuned_dense = recurrent.accuracy(tuned.eval(), test)
    print(f"{args.model}: shipped dense {100 * dense_acc:.2f}%; fine-tuned {args.epochs} epochs (lam {args.lam:g}, "
          f"{seconds:.1f} s) as delta theta_x={args.theta_x:g} theta_h={args.theta_h:g}: accuracy {100 * acc:.2f}%, "
          f"MACs /{cost.mac_reduction:.2f}, weight fetches /{cost.fetch_reduction:.2f} "
          f"(run dense: {100 * tuned_dense:.2f}%)")
    if args.out:
        meta = {"model": args.model, "description": recurrent.entry(args.model).description,
                "test_accuracy": tuned_dense, "delta_test_accuracy": acc, "theta_x": args.theta_x,
                "theta_h": args.theta_h, "lam": args.lam, "mac_reduction": cost.mac_reduction,
                "fetch_reduction": cost.fetch_reduction, "dataset": "japanese_vowels",
                "recipe": {"from": f"shipped {args.model}", "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                           "optimizer": "adam", "batch": 32},
                "command": f"lowbit delta train --model {args.model} --theta-x {args.theta_x:g} --theta-h "
                           f"{args.theta_h:g} --lam {args.lam:g} --epochs {args.epochs} --lr {args.lr:g} "
                           f"--seed {args.seed} --out DIR",
                "train_seconds": round(seconds, 1), "torch": torch.__version__,
                "machine": platform.processor() or platform.machine()}
        path = recurrent.weights_path(args.model, args.out)
        save_weights(tuned, path, meta)
        print(f"weights -> {path}")
    return 0
