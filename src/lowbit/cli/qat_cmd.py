"""``lowbit qat``: quantization-aware training of a zoo model (LSQ or FAQ), on one or many processes.

The shipped models start from their float weights; the binary ones (``binary-mlp``, ``binary-cnn``: no
shipped weights) from their random init, seeded ``--seed`` (:func:`lowbit.zoo.start_model`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from lowbit.cli.args import add_run_folder_flags, at_most, data_dir, float_range, int_range, writable_dir
from lowbit.cli.ptq_cmd import act_spec, add_weight_format_args, weight_spec
from lowbit.errors import ConfigError

ZOO_NAMES = ("mlp", "cnn", "resnet", "binary-mlp", "binary-cnn")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "qat", help="quantization-aware training from the float weights (LSQ or FAQ), binary networks "
                    "included; works under torchrun",
        description="Fine-tune a shipped model with its quantizers in the loop: LSQ learns the step sizes, FAQ "
                    "keeps percentile-calibrated ones. Binary networks (BNN / XNOR-Net: --weight-format binary "
                    "[--act-format binary]) train the zoo models binary-mlp and binary-cnn from their random "
                    "init (no shipped weights; seeded --seed), best with --optimizer adam (their default). "
                    "Writes OUT/checkpoint.pt each epoch (atomically), "
                    "OUT/model.safetensors (the integer model) and OUT/result.json. Run it under "
                    "`torchrun --nproc_per_node=N` for distributed data parallel training (gloo on CPU).")
    p.add_argument("--model", default="resnet", choices=ZOO_NAMES,
                   help="zoo model (default resnet); binary-mlp and binary-cnn (Linear/Conv-BN-Hardtanh blocks) "
                        "start from their random init")
    p.add_argument("--weight-bits", type=int, default=None, help="weight bits, 2..8 (default 4)")
    p.add_argument("--act-bits", type=int, default=None, help="activation bits, 2..8 (default 4)")
    add_weight_format_args(p, binary=True)
    p.add_argument("--method", choices=("lsq", "faq"), default="lsq", help="lsq (learned steps) or faq (fixed)")
    p.add_argument("--granularity", choices=("channel", "tensor"), default="channel",
                   help="one weight step per output channel (default; binary weights need it) or per tensor")
    p.add_argument("--init", choices=("lsq", "mse"), default="lsq",
                   help="LSQ step initialisation: the paper's 2 mean|v|/sqrt(Q_P), or least squared error")
    p.add_argument("--bn-freeze-steps", type=int_range(0), default=None, metavar="N",
                   help="keep BatchNorm unfolded, training its statistics for N steps, then frozen "
                        "(default: folded before training)")
    p.add_argument("--grad-bits", type=int_range(2, 16), default=None, metavar="K",
                   help="quantize the gradient of every quantized layer's output to K bits, 2..16, stochastic "
                        "rounding (QNN uses 6; default: float gradients)")
    p.add_argument("--stochastic-weights", action="store_true",
                   help="with --weight-format binary: draw each weight's sign in every training step, +1 with "
                        "probability clip((w + 1) / 2, 0, 1) (BinaryConnect / BNN stochastic binarization; the "
                        "training that stochastic ensembles sample from)")
    p.add_argument("--epochs", type=int_range(1), default=3, help="training epochs (default 3)")
    p.add_argument("--batch-size", type=int_range(1), default=128, help="global batch size (default 128)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="sgd (Nesterov momentum 0.9, --weight-decay) or adam (no weight decay) (default: adam for "
                        "--weight-format binary, sgd otherwise)")
    p.add_argument("--lr", type=float_range(0.0, low_open=True), default=0.01, help="peak learning rate, cosine decay (default 0.01)")
    p.add_argument("--weight-decay", type=float_range(0.0), default=5e-5,
                   help="on weights only, with --optimizer sgd (default 5e-5; the LSQ paper uses 1e-4 at 2 bits, as "
                        "the shipped W2A2 does)")
    p.add_argument("--distill", type=float_range(0.0, 1.0), default=0.0, help="weight of distillation from the float model, 0..1")
    p.add_argument("--train-size", type=int_range(1), default=None,
                   help="use the first N training images, 1..55000 (default all)")
    p.add_argument("--no-augment", action="store_true", help="no random shifts and flips")
    p.add_argument("--seed", type=int, default=0)
    add_run_folder_flags(p, "qat-out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lowbit import zoo
    from lowbit.data import fashion_mnist
    from lowbit.integer import to_integer
    from lowbit.integer.io import save_integer
    from lowbit.qat import QATConfig, TrainConfig, convert_qat, init_distributed, prepare_qat, train
    from lowbit.utils.files import atomic_write_text
    from lowbit.zoo.recipes import evaluate

    data_dir(args.data_dir)
    notes = binary_args(args)
    if args.distill > 0 and not zoo.entry(args.model).shipped:
        raise ConfigError(f"--distill distills from the float model, and {args.model} has no shipped float weights "
                          "(it starts from its random init): drop --distill")
    writable_dir(args.out, "--out")  # before training, not after the first epoch
    rank, world = init_distributed()
    # LSQ trains two's complement weights (the paper's range); FAQ's fixed scales keep them narrow
    config = QATConfig(weight_spec(args, narrow=args.method == "faq"), act_spec(args), args.method, init=args.init,
                       bn_freeze_steps=args.bn_freeze_steps, grad_bits=args.grad_bits,
                       stochastic_weights=args.stochastic_weights)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      distill=args.distill,
                      weight_decay=args.weight_decay, augment=not args.no_augment, seed=args.seed)
    data = fashion_mnist("train", root=args.data_dir)
    if args.train_size is not None:
        at_most(args.train_size, len(data), "--train-size", "the Fashion-MNIST train split")
        data = data.take(args.train_size)
    test = fashion_mnist("test", root=args.data_dir)
    float_model = zoo.start_model(args.model, args.seed)  # shipped float weights, or the seeded random init
    model = prepare_qat(float_model, config, data.x[:256])
    for note in notes if rank == 0 else ():  # after every check: a refused run prints its one error line only
        print(f"lowbit: warning: {note}", file=sys.stderr)
    history = train(model, data, cfg, args.out, args.resume, float_model if args.distill else None)
    if rank != 0:
        return 0
    convert_qat(model)
    im = to_integer(model, (test.x[:2],))
    f_acc, q_acc = evaluate(float_model, test), evaluate(im, test)
    start = "float" if zoo.entry(args.model).shipped else "random init"
    save_integer(im, Path(args.out) / "model.safetensors")
    # epochs: the epochs the history holds (a resumed run continues the checkpoint's own, equal, count);
    # history: loss and accuracy over every process's share, all-reduced by the loop
    result = {"model": args.model, "start": start, "weight": config.weight.label(), "act": config.act.label(),
              "config": asdict(config), "train": asdict(cfg),
              "epochs": len(history),
              "processes": world, "float_accuracy": f_acc, "accuracy": q_acc, "history": history}
    atomic_write_text(Path(args.out) / "result.json", json.dumps(result, indent=2, default=str) + "\n")
    print(f"{args.model} {args.method.upper()} W {config.weight.label()} A {config.act.label()}, {len(history)} "
          f"epochs on {world} process(es): {start} {100 * f_acc:.2f}% -> integer model {100 * q_acc:.2f}% "
          f"({100 * (q_acc - f_acc):+.2f} points); wrote {args.out}/model.safetensors")
    return 0


def binary_args(args: argparse.Namespace) -> list[str]:
    """Resolve the defaults that depend on the formats (in place) and check the binary flags together:
    ``--weight-bits`` / ``--act-bits`` given with a binary format are ignored with a warning (1 bit by
    definition: returns the warnings); ``--binary-scale`` without ``--weight-format binary`` is refused (it would
    do nothing)."""
    notes = []
    w_binary, a_binary = args.weight_format == "binary", args.act_format == "binary"
    for flag, value, ignored in (("--weight-bits", args.weight_bits, w_binary), ("--act-bits", args.act_bits, a_binary)):
        if value is not None and ignored:
            what = "weight" if flag == "--weight-bits" else "act"
            notes.append(f"{flag} {value} is ignored with --{what}-format binary (1 bit: -1 or +1)")
    if args.stochastic_weights and not w_binary:
        raise ConfigError("--stochastic-weights draws binary signs: it needs --weight-format binary")
    if args.binary_scale is not None and not w_binary:
        raise ConfigError(f"--binary-scale {args.binary_scale} sets the scale of binary weights: add "
                          f"--weight-format binary, or drop --binary-scale (--weight-format is {args.weight_format})")
    if a_binary and args.method == "faq":
        # QATConfig.ptq() gives FAQ's activations a percentile observer, which a sign has no use for
        raise ConfigError("--method faq calibrates fixed activation steps, and --act-format binary (sign) has none: "
                          "use --method lsq (binary weights and activations train the same way under it)")
    args.weight_bits = 4 if args.weight_bits is None else args.weight_bits
    args.act_bits = 4 if args.act_bits is None else args.act_bits
    args.binary_scale = args.binary_scale or "xnor"
    if args.optimizer is None:
        args.optimizer = "adam" if w_binary else "sgd"
    return notes
