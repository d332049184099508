"""``lowbit snn``: spiking networks.

``convert`` turns a shipped ReLU CNN into a spiking network (threshold balancing; IF, TerMapping or AugMapping
neurons) and prints its accuracy against time steps, with spikes and synaptic operations per inference.
``train`` trains a spiking CNN by backprop through time (paper D) on Fashion-MNIST frames or their saccade
events and prints its test accuracy, spikes and synaptic operations per inference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowbit.cli.args import add_run_folder_flags, data_dir, float_range, int_range, writable_dir

NEURONS = ("if", "termapping", "augmapping")
CONVERT_MODELS = ("cnn-avgpool", "cnn", "mlp", "resnet")


def add_parser(sub) -> None:
    p = sub.add_parser("snn", help="spiking networks: ANN-to-SNN conversion, spiking training",
                       description="Spiking networks: convert a trained ReLU network into integrate-and-fire "
                                   "neurons (Rueckauer et al. 2017; TerMapping / AugMapping, Yu et al. 2022).")
    ssub = p.add_subparsers(dest="snn_command", metavar="SNN_COMMAND")
    c = ssub.add_parser("convert", help="convert a shipped CNN and sweep accuracy against time steps",
                        description="Convert a shipped zoo model to a spiking network (BatchNorm folded, ReLU -> "
                                    "neurons with thresholds balanced on calibration images, max pooling -> a gate on "
                                    "cumulative spike counts or average pooling) and print, for each T, the test "
                                    "accuracy, spikes and synaptic operations per inference.")
    c.add_argument("--model", default="cnn-avgpool", choices=CONVERT_MODELS,
                   help="shipped zoo model (default cnn-avgpool)")
    c.add_argument("--neuron", choices=NEURONS, default="augmapping",
                   help="if: one threshold (0/1 spikes); termapping: double threshold (-1/0/+1); augmapping: "
                        "augmented spikes carrying up to --max-spikes per step (default augmapping)")
    c.add_argument("--max-spikes", type=int_range(1, 255), default=4,
                   help="augmapping: largest spike coefficient per step (default 4)")
    c.add_argument("--initial-potential", type=float_range(0.0, 0.999), default=0.5,
                   help="membrane at rest as a fraction of the threshold, 0..0.999 (default 0.5)")
    c.add_argument("--percentile", type=float_range(0.0, 100.0, low_open=True), default=99.9,
                   help="threshold = this percentile of each layer's calibration activations, in (0, 100]; 100 = "
                        "the maximum (default 99.9)")
    c.add_argument("--per-channel", action="store_true", help="one threshold per channel")
    c.add_argument("--max-pool", choices=("gate", "average"), default="gate",
                   help="max pooling: gate on cumulative spike counts, or replace with average pooling")
    c.add_argument("--coding", choices=("analog", "rate"), default="analog",
                   help="input: constant current (analog) or Bernoulli rate-coded spikes (default analog)")
    c.add_argument("--time-steps", type=int_range(1, 100000), nargs="+", default=[1, 2, 4, 8, 16, 32],
                   help="time steps to report (one run of the largest; default 1 2 4 8 16 32)")
    c.add_argument("--calib-size", type=int_range(1, 60000), default=1000,
                   help="calibration images from the train split (default 1000)")
    c.add_argument("--test-size", type=int_range(1, 10000), default=10000, help="test images (default 10000)")
    c.add_argument("--json", default=None, help="also write the rows to this JSON file")
    c.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    c.set_defaults(func=run_convert)
    t = ssub.add_parser("train", help="train a spiking CNN by backprop through time",
                        description="Train lowbit.snn.models.SpikingCNN (conv3x3-BN-LIF-maxpool stages, FC-LIF, mean "
                                    "readout over T) with the one training loop (Adam, cosine decay, shifts and flips) "
                                    "on Fashion-MNIST frames (direct coding) or saccade DVS events, then print its "
                                    "test accuracy, spikes and synaptic operations per inference. Writes "
                                    "OUT/checkpoint.pt every epoch (atomically; --resume continues it) and "
                                    "OUT/spiking-cnn.npz + .json (checksummed).")
    t.add_argument("--data", choices=("frames", "events"), default="frames",
                   help="frames (direct coding) or saccade DVS events made from them (default frames)")
    t.add_argument("--time-steps", type=int_range(1, 256), default=4, help="T, 1..256 (default 4)")
    t.add_argument("--channels", default="24,48", help="conv widths, comma-separated (default 24,48)")
    t.add_argument("--hidden", type=int_range(0, 4096), default=128, help="FC-LIF width, 0 for none (default 128)")
    t.add_argument("--surrogate", choices=("triangle", "fast-sigmoid", "arctan", "membrane"), default="triangle",
                   help="spike derivative: membrane is paper D's 1/V_th (default triangle)")
    t.add_argument("--epochs", type=int_range(1, 1000), default=10, help="epochs (default 10)")
    t.add_argument("--lr", type=float_range(0.0, low_open=True), default=2e-3, help="Adam peak lr (default 2e-3)")
    t.add_argument("--batch-size", type=int_range(1), default=128, help="batch size (default 128)")
    t.add_argument("--train-size", type=int_range(1), default=None, help="first N training images (default all)")
    t.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed (default 0)")
    add_run_folder_flags(t, "snn-out")
    t.set_defaults(func=run_train)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def neuron_spec(args: argparse.Namespace):
    from lowbit.snn import NeuronSpec, Spikes

    kind = {"if": Spikes.BINARY, "termapping": Spikes.TERNARY, "augmapping": Spikes.AUGMENTED}[args.neuron]
    return NeuronSpec(spikes=kind, max_spikes=args.max_spikes if kind is Spikes.AUGMENTED else 1,
                      initial_potential=args.initial_potential)


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from lowbit import snn, zoo
    from lowbit.data import fashion_mnist
    from lowbit.utils.files import atomic_write_text

    data_dir(args.data_dir)
    ann = zoo.pretrained(args.model)
    train, test = fashion_mnist("train", root=args.data_dir), fashion_mnist("test", root=args.data_dir)
    calib = [train.x[i: i + 250] for i in range(0, args.calib_size, 250)]
    net = snn.convert(ann, calib, neuron=neuron_spec(args), norm=snn.Norm(args.percentile, args.per_channel),
                      max_pool=snn.MaxPool(args.max_pool), coding=snn.Coding(args.coding))
    print("\n".join(net.report.lines()))
    x, y = test.x[: args.test_size], test.y[: args.test_size]
    with torch.no_grad():
        ann_acc = 100.0 * float((ann(x).argmax(1) == y).float().mean())
    rows = snn.sweep(net, x, y, args.time_steps, progress=True)
    print(f"\nANN (float): {ann_acc:.2f}% on {len(x)} test images")
    print(f"{'T':>6} {'accuracy %':>11} {'spikes/inf':>11} {'events/inf':>11} {'synops/inf (M)':>15}")
    for r in rows:
        print(f"{r.time_steps:>6} {r.accuracy:>11.2f} {r.spikes_per_inference:>11.0f} {r.events_per_inference:>11.0f} "
              f"{r.synops / 1e6:>15.2f}")
    last = rows[-1]
    print(f"spikes per inference by layer at T={last.time_steps}: "
          + ", ".join(f"{name.removeprefix('snn_')} {v:,.0f}" for name, v in last.spikes_per_layer.items()))
    if args.json:
        payload = [{"method": f"convert-{args.neuron}", "dataset": f"fashion-mnist ({args.model})",
                    "time_steps": r.time_steps, "accuracy": round(r.accuracy, 2), "ann_accuracy": round(ann_acc, 2),
                    "spikes_per_inference": round(r.spikes_per_inference, 1), "synops": round(r.synops),
                    "latency_us": None, "tool": "lowbit"} for r in rows]
        atomic_write_text(Path(args.json), json.dumps(payload, indent=2) + "\n")
    return 0


def _channels(text: str) -> tuple[int, ...]:
    from lowbit.errors import ConfigError

    try:
        widths = tuple(int(c) for c in text.split(","))
    except ValueError:
        widths = ()
    if not widths or any(w < 1 or w > 1024 for w in widths):
        raise ConfigError(f"--channels {text!r} must be comma-separated conv widths in 1..1024, e.g. 24,48")
    return widths


def run_train(args: argparse.Namespace) -> int:
    import torch

    from lowbit.data import Split, fashion_mnist
    from lowbit.snn.models import SpikingCNN, SpikingCNNSpec, evaluate_spiking, spec_dict
    from lowbit.training import Adam, Cosine, LoopConfig, Shuffled, train
    from lowbit.zoo.weights_io import save_state

    data_dir(args.data_dir)
    writable_dir(args.out, "--out")
    spec = SpikingCNNSpec(channels=_channels(args.channels), hidden=args.hidden, time_steps=args.time_steps,
                          coding="direct" if args.data == "frames" else "events", surrogate=args.surrogate)
    train_split, test = fashion_mnist("train", root=args.data_dir), fashion_mnist("test", root=args.data_dir)
    if args.train_size:
        train_split = Split(train_split.x[: args.train_size], train_split.y[: args.train_size])
    torch.manual_seed(args.seed)
    model = SpikingCNN(spec)
    batches = Shuffled(train_split, args.batch_size, args.seed, augment=True)
    train(model, batches, LoopConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed),
          optimizer=Adam(lr=args.lr), schedule=Cosine(warmup_steps=max(len(batches) // 4, 1)),
          out_dir=args.out, resume=args.resume)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        r = evaluate_spiking(model, test.x, test.y)
    print(f"spiking CNN {spec.channels}-{spec.hidden}, {spec.coding} coding, T={spec.time_steps}: test accuracy "
          f"{100 * r['accuracy']:.2f}%, {r['spikes_per_inference']:,.0f} spikes and {r['synops'] / 1e6:.2f} M "
          "synaptic operations per inference")
    meta = {"model": "spiking-cnn", "dataset": f"fashion-mnist ({args.data})", "test_accuracy": r["accuracy"],
            "time_steps": spec.time_steps, "spec": spec_dict(spec),
            "recipe": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed}}
    save_state(model.state_dict(), Path(args.out) / "spiking-cnn.npz", meta)
    return 0
