"""``lowbit lowprec``: training in low precision (paper B, Park et al. 2018).

``bound`` prints the last FC layer's bit-width lower bound for a class count; ``slices`` the bit-slice sparsity
and ADC bits of a shipped model's weights (paper M); ``train`` trains a small
Fashion-MNIST CNN from scratch with its parameters held in a low-precision storage format (Kahan-compensated SGD,
plain low-precision SGD with nearest or stochastic rounding, or float SGD for reference) and prints its test
accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowbit.cli.args import add_run_folder_flags, at_most, data_dir, float_range, int_range, writable_dir
from lowbit.errors import ConfigError

OPTIMIZERS = ("kahan", "nearest", "stochastic", "float")  # lowbit.optim.STORAGE_SGD, kahan first (the default)


def add_parser(sub) -> None:
    p = sub.add_parser("lowprec", help="low-precision training: Kahan SGD on fixed-point/bf16 weights, the last-FC "
                                       "bit-width bound",
                       description="Training with parameters in few bits (Park et al. 2018: SGD with Kahan "
                                   "summation; the last FC layer's bit-width bound from the class count).")
    lsub = p.add_subparsers(dest="lowprec_command", metavar="LOWPREC_COMMAND")
    b = lsub.add_parser("bound", help="the last FC layer's bit-width lower bound for N classes",
                        description="Sign + integer + fractional bits the last FC layer's output (logits) and its "
                                    "error need for N classes: frac >= log2 N (non-target errors ~1/N must not round "
                                    "to 0) and a logit range R = 1/2 ln((N-1) p/(1-p)) for a target probability p.")
    b.add_argument("--classes", type=int_range(2), required=True, metavar="N", help="number of classes, >= 2")
    b.add_argument("--p-target", type=float_range(0.0, 1.0, low_open=True), default=0.99,
                   help="target probability the logit range must allow, in (1/N, 1) (default 0.99)")
    b.set_defaults(func=run_bound)
    sl = lsub.add_parser("slices", help="bit-slice sparsity and ADC bits of a shipped model's weights",
                         description="Read every Linear/Conv weight of a shipped model as dynamic fixed point "
                                     "(sign + BITS magnitude bits per tensor), cut the magnitude into SLICE_BITS-bit "
                                     "slices (ReRAM cells, paper M) and print each slice's zero ratio per layer and "
                                     "the ADC bits a ROWS-row crossbar column needs (lowbit.cost.bitslice).")
    sl.add_argument("--model", default="mlp", help="shipped zoo model (default mlp; see 'lowbit zoo list')")
    sl.add_argument("--bits", type=int_range(2, 16), default=8, help="magnitude bits, 2..16 (default 8)")
    sl.add_argument("--slice-bits", type=int_range(1, 16), default=2, help="bits per slice, a divisor of --bits "
                                                                           "(default 2)")
    sl.add_argument("--rows", type=int_range(1), default=128, help="crossbar rows per column (default 128)")
    sl.set_defaults(func=run_slices)
    t = lsub.add_parser("train", help="train the small Fashion-MNIST CNN with low-precision parameters",
                        description="Train LeNetBN(16, 32, 64) from scratch on Fashion-MNIST with every parameter "
                                    "held in --storage (per-layer power-of-two gains give each weight its own "
                                    "fractional length: lowbit.optim.with_weight_gains) and print its test accuracy. "
                                    "Writes OUT/checkpoint.pt every epoch (atomically; --resume continues it) and "
                                    "OUT/result.json.")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="kahan",
                   help="kahan (KahanSGD), nearest / stochastic (LowPrecisionSGD without compensation), or float "
                        "(torch SGD, float32 parameters) (default kahan)")
    t.add_argument("--storage", default="fixed8.6",
                   help="parameter storage: fixed<bits>.<frac> (e.g. fixed8.6, fixed12.10), bf16 or fp16 "
                        "(default fixed8.6; ignored with --optimizer float)")
    t.add_argument("--epochs", type=int_range(1, 1000), default=5, help="epochs (default 5)")
    t.add_argument("--lr", type=float_range(0.0, low_open=True), default=0.05, help="peak lr, cosine decay (default 0.05)")
    t.add_argument("--momentum", type=float_range(0.0, 0.999), default=0.9, help="momentum, 0..0.999 (default 0.9)")
    t.add_argument("--batch-size", type=int_range(1), default=128, help="batch size (default 128)")
    t.add_argument("--train-size", type=int_range(1), default=None, help="first N of the 60000 training images")
    t.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed (default 0)")
    add_run_folder_flags(t, "lowprec-out")
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def run_bound(args: argparse.Namespace) -> int:
    from lowbit.optim import min_bits_last_fc

    if not 1.0 / args.classes < args.p_target < 1.0:
        raise ConfigError(f"--p-target {args.p_target} is out of range: with {args.classes} classes it must be in "
                          f"({1.0 / args.classes:g}, 1)")
    bd = min_bits_last_fc(args.classes, args.p_target)
    print(f"{bd.num_classes} classes, target probability {bd.p_target:g}: the last FC layer's output needs "
          f">= {bd.bits} bits = 1 sign + {bd.int_bits} integer (logit range R = {bd.logit_range:.2f}) + "
          f"{bd.frac_bits} fractional (step 2^-{bd.frac_bits} <= 1/{bd.num_classes}); e.g. FixedPoint({bd.bits}, "
          f"{bd.frac_bits})")
    return 0


def run_slices(args: argparse.Namespace) -> int:
    from lowbit import zoo
    from lowbit.cost.bitslice import render

    if args.bits % args.slice_bits:
        raise ConfigError(f"--slice-bits {args.slice_bits} does not divide --bits {args.bits}: pick a divisor of "
                          f"{args.bits} ({', '.join(str(d) for d in range(1, args.bits + 1) if args.bits % d == 0)})")
    model = zoo.pretrained(args.model)
    print(f"{args.model}: weights as {args.bits}-bit dynamic fixed point, {args.bits // args.slice_bits} slices of "
          f"{args.slice_bits} bits (most significant first), {args.rows}-row crossbars\n")
    print(render(model, args.rows, args.bits, args.slice_bits))
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch

    from lowbit.data import fashion_mnist
    from lowbit.optim import as_storage, storage_sgd
    from lowbit.training import LoopConfig, train
    from lowbit.utils.files import atomic_write_text
    from lowbit.zoo.lowprec_zoo import build
    from lowbit.zoo.recipes import evaluate

    storage = "float32" if args.optimizer == "float" else as_storage(args.storage).name  # a bad name fails now
    data_dir(args.data_dir)
    writable_dir(args.out, "--out")
    data = fashion_mnist("train+val", root=args.data_dir)
    if args.train_size is not None:
        at_most(args.train_size, len(data), "--train-size", "the Fashion-MNIST training images")
        data = data.take(args.train_size)
    test = fashion_mnist("test", root=args.data_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build()
    opt = storage_sgd(model, args.optimizer, args.lr, args.momentum, args.storage, args.seed)
    options = {"optimizer": args.optimizer, "storage": storage, "momentum": args.momentum, "lr": args.lr}
    history = train(model, data, LoopConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed),
                    optimizer=opt, out_dir=args.out, resume=args.resume, options=options)
    acc = evaluate(model, test)
    result = {"model": "LeNetBN(16, 32, 64)", **options, "epochs": len(history), "train_size": len(data),
              "accuracy": acc, "history": history}
    atomic_write_text(Path(args.out) / "result.json", json.dumps(result, indent=2) + "\n")
    print(f"LeNetBN(16, 32, 64), {args.optimizer} SGD, parameters in {storage}, {len(history)} epochs: test accuracy "
          f"{100 * acc:.2f}%; wrote {args.out}/result.json")
    return 0
