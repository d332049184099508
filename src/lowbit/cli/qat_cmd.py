"""``lowbit qat``: quantization-aware training of a shipped model (LSQ or FAQ), on one or many processes."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from lowbit.cli.args import at_most, data_dir, float_range, int_range, writable_dir
from lowbit.cli.ptq_cmd import act_spec, add_weight_format_args, weight_spec

ZOO_NAMES = ("mlp", "cnn", "resnet")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "qat", help="quantization-aware training from the float weights (LSQ or FAQ); works under torchrun",
        description="Fine-tune a shipped model with its quantizers in the loop: LSQ learns the step sizes, FAQ "
                    "keeps percentile-calibrated ones. Writes OUT/checkpoint.pt each epoch (atomically), "
                    "OUT/model.safetensors (the integer model) and OUT/result.json. Run it under "
                    "`torchrun --nproc_per_node=N` for distributed data parallel training (gloo on CPU).")
    p.add_argument("--model", default="resnet", choices=ZOO_NAMES, help="zoo model (default resnet)")
    p.add_argument("--weight-bits", type=int, default=4, help="weight bits, 2..8 (default 4)")
    p.add_argument("--act-bits", type=int, default=4, help="activation bits, 2..8 (default 4)")
    add_weight_format_args(p)
    p.add_argument("--method", choices=("lsq", "faq"), default="lsq", help="lsq (learned steps) or faq (fixed)")
    p.add_argument("--granularity", choices=("channel", "tensor"), default="channel",
                   help="one weight step per output channel (default) or per tensor")
    p.add_argument("--init", choices=("lsq", "mse"), default="lsq",
                   help="LSQ step initialisation: the paper's 2 mean|v|/sqrt(Q_P), or least squared error")
    p.add_argument("--bn-freeze-steps", type=int_range(0), default=None, metavar="N",
                   help="keep BatchNorm unfolded, training its statistics for N steps, then frozen "
                        "(default: folded before training)")
    p.add_argument("--epochs", type=int_range(1), default=3, help="training epochs (default 3)")
    p.add_argument("--batch-size", type=int_range(1), default=128, help="global batch size (default 128)")
    p.add_argument("--lr", type=float_range(0.0, low_open=True), default=0.01, help="peak learning rate, cosine decay (default 0.01)")
    p.add_argument("--weight-decay", type=float_range(0.0), default=5e-5,
                   help="on weights only (default 5e-5; the LSQ paper uses 1e-4 at 2 bits, as the shipped W2A2 does)")
    p.add_argument("--distill", type=float_range(0.0, 1.0), default=0.0, help="weight of distillation from the float model, 0..1")
    p.add_argument("--train-size", type=int_range(1), default=None,
                   help="use the first N training images, 1..55000 (default all)")
    p.add_argument("--no-augment", action="store_true", help="no random shifts and flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="qat-out", help="output folder (default ./qat-out)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
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
    writable_dir(args.out, "--out")  # before training, not after the first epoch
    rank, world = init_distributed()
    # LSQ trains two's complement weights (the paper's range); FAQ's fixed scales keep them narrow
    config = QATConfig(weight_spec(args, narrow=args.method == "faq"), act_spec(args), args.method, init=args.init,
                       bn_freeze_steps=args.bn_freeze_steps)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, distill=args.distill,
                      weight_decay=args.weight_decay, augment=not args.no_augment, seed=args.seed)
    data = fashion_mnist("train", root=args.data_dir)
    if args.train_size is not None:
        at_most(args.train_size, len(data), "--train-size", "the Fashion-MNIST train split")
        data = data.take(args.train_size)
    test = fashion_mnist("test", root=args.data_dir)
    float_model = zoo.pretrained(args.model)
    model = prepare_qat(float_model, config, data.x[:256])
    history = train(model, data, cfg, args.out, args.resume, float_model if args.distill else None)
    if rank != 0:
        return 0
    convert_qat(model)
    im = to_integer(model, (test.x[:2],))
    f_acc, q_acc = evaluate(float_model, test), evaluate(im, test)
    save_integer(im, Path(args.out) / "model.safetensors")
    # epochs: the epochs the history holds (a resumed run continues the checkpoint's own, equal, count);
    # history: loss and accuracy over every process's share, all-reduced by the loop
    result = {"model": args.model, "config": asdict(config), "train": asdict(cfg), "epochs": len(history),
              "processes": world, "float_accuracy": f_acc, "accuracy": q_acc, "history": history}
    atomic_write_text(Path(args.out) / "result.json", json.dumps(result, indent=2, default=str) + "\n")
    print(f"{args.model} {args.method.upper()} W {config.weight.label()} A{args.act_bits}, {len(history)} epochs on "
          f"{world} process(es): float {100 * f_acc:.2f}% -> integer model {100 * q_acc:.2f}% "
          f"({100 * (q_acc - f_acc):+.2f} points); wrote {args.out}/model.safetensors")
    return 0
