"""Stochastic ensembles of a binary CNN (Vogel et al. 2016) against its deterministic net and its float twin.

Trains, on the 55000-image Fashion-MNIST train split with the recipe of ``bench_binary_accuracy.py`` (Adam,
cosine decay, batch 128, no augmentation, one thread): the W1A1 ``BinaryCNN(channels)`` with latent weights
kept (lowbit.qat, ``Binary()`` weights and activations, first and last layers 8-bit), and the same architecture
in float (its "high-precision base model"). Then draws ``M`` bitwise members from the latent weights
(``lowbit.nn.ensemble.StochasticEnsemble``: +1 with probability ``hard_sigmoid(w)``, seed 0; a float uniform
and an ``r``-bit comparator) and reports the test accuracy of the averaged posteriors for each ``M``, beside the
deterministic binary net (``sign(w)``) and the float twin, with the cost of ``M`` passes (``M`` times the
deterministic net's binary MACs) and the measured time of the ensemble's forward passes on the test set.

Trained weights are cached in ``--cache`` (``torch.save`` state dicts read back with ``weights_only=True``),
so a rerun only evaluates.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ensemble.py
    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ensemble.py --epochs 1 --train-limit 5000  # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from _common import RESULTS, write_result
from bench_binary_accuracy import accuracy, make_model, qat_config

FAMILY = "stochastic ensemble (Vogel et al. 2016)"


def _float_twin(channels: int, train, epochs: int, lr: float, seed: int) -> torch.nn.Module:
    from lowbit.training import Adam, Cosine, CrossEntropy, LoopConfig, Shuffled, train_loop

    torch.manual_seed(seed)
    net = make_model("cnn", channels)
    train_loop(net, Shuffled(train, 128, seed, augment=False), LoopConfig(epochs, 128, seed), optimizer=Adam(lr),
               loss=CrossEntropy(), schedule=Cosine(), progress=False)
    return net.eval()


def _binary(channels: int, train, epochs: int, lr: float, seed: int) -> torch.nn.Module:
    from lowbit.qat import TrainConfig, convert_qat, prepare_qat
    from lowbit.qat import train as qat_train

    torch.manual_seed(seed)
    gm = prepare_qat(make_model("cnn", channels), qat_config("w1a1", "xnor"), train.x[:256])
    qat_train(gm, train, TrainConfig(epochs=epochs, optimizer="adam", lr=lr, augment=False, seed=seed), progress=False)
    convert_qat(gm)
    return gm.eval()


def _cached(path: Path, trained, blank):
    """``trained()``'s module, trained once: its state dict is cached at ``path`` and loaded (weights only) into
    ``blank()`` on later runs. Returns the module and whether it came from the cache."""
    if path.exists():
        model = blank()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), True
    model = trained()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model, False


def _blank_binary(channels: int, train) -> torch.nn.Module:
    """The converted W1A1 structure, for cached weights to be loaded into."""
    from lowbit.qat import convert_qat, prepare_qat

    gm = prepare_qat(make_model("cnn", channels), qat_config("w1a1", "xnor"), train.x[:256])
    convert_qat(gm)
    return gm


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rng-bits", type=int, nargs="*", default=[4], help="r-bit comparators tried beside a float draw")
    ap.add_argument("--train-limit", type=int, default=None, help="train on the first N images (quick runs)")
    ap.add_argument("--cache", default="/tmp/lowbit-ensemble", help="folder of the trained state dicts")
    ap.add_argument("--out", default="ensemble")
    args = ap.parse_args(argv)

    from lowbit.cost.integer import profile_integer
    from lowbit.data import load
    from lowbit.integer import to_integer
    from lowbit.nn.ensemble import StochasticEnsemble

    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    if args.train_limit is not None:
        train = train.take(args.train_limit)
    tag = f"c{args.channels}-e{args.epochs}-lr{args.lr}-s{args.seed}-n{len(train)}"
    cache = Path(args.cache)
    start = time.perf_counter()

    c = args.channels
    binary, was_cached = _cached(cache / f"binary-{tag}.pt", lambda: _binary(c, train, args.epochs, args.lr, args.seed),
                                 lambda: _blank_binary(c, train))
    twin, twin_cached = _cached(cache / f"float-{tag}.pt",
                                lambda: _float_twin(c, train, args.epochs, args.lr, args.seed),
                                lambda: make_model("cnn", c))
    train_seconds = time.perf_counter() - start

    det = accuracy(binary, test)
    flt = accuracy(twin, test)
    im = to_integer(binary, (test.x[:1],))
    det_integer = accuracy(im, test)
    bmacs = sum(r.macs for r in profile_integer(im))
    rows, lines = [], []
    for bits in [None, *args.rng_bits]:
        ens = StochasticEnsemble(binary, max(args.members), seed=args.seed, rng_bits=bits)
        member_acc = [accuracy(m, test) for m in ens.members]
        for m in args.members:
            t0 = time.perf_counter()
            acc = accuracy(lambda x, m=m: ens.posteriors(x, m), test)
            secs = time.perf_counter() - t0
            rng = "float uniform" if bits is None else f"{bits}-bit comparator"
            rows.append({"family": FAMILY, "model": f"fmnist-binary-cnn-c{args.channels}",
                         "config": f"W1A1, {m} member(s), {rng}, seed {args.seed}", "members": m,
                         "rng_bits": bits, "accuracy": round(acc, 2), "float_accuracy": round(flt, 2),
                         "deterministic_accuracy": round(det, 2), "gain_points": round(acc - det, 2),
                         "member_accuracy_mean": round(sum(member_acc[:m]) / m, 2), "binary_macs": bmacs * m,
                         "seconds_test_set": round(secs, 2)})
            lines.append(f"| {m} | {rng} | {acc:.2f} | {acc - det:+.2f} | {acc - flt:+.2f} | "
                         f"{sum(member_acc[:m]) / m:.2f} | {bmacs * m / 1e6:.1f} | {secs:.1f} |")
    best16 = max((r for r in rows if r["members"] == 16), key=lambda r: r["accuracy"], default=None)
    verdict = ""
    if best16 is not None:
        verdict = (f"16 members (best draw): {best16['accuracy']:.2f}%, {best16['gain_points']:+.2f} points over the "
                   f"deterministic binary CNN (target >= +1.0: {'met' if best16['gain_points'] >= 1.0 else 'NOT met'}); "
                   f"float twin {flt:.2f}% (target ensemble >= float: "
                   f"{'met' if best16['accuracy'] >= flt else 'NOT met'}).")
    md = "\n".join([
        f"- command: `PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ensemble.py "
        f"--epochs {args.epochs} --channels {args.channels}{'' if args.train_limit is None else f' --train-limit {args.train_limit}'}`",
        f"- machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); training {'cached' if was_cached and twin_cached else f'{train_seconds:.0f} s'}",
        f"- training: {len(train)} images, {args.epochs} epochs, Adam lr {args.lr}, cosine, batch 128, seed {args.seed}",
        "",
        f"Deterministic binary CNN (sign of the latent weights): {det:.2f}% (integer model {det_integer:.2f}%); "
        f"float twin (same architecture, same recipe): {flt:.2f}%.",
        "",
        "| members M | random source | ensemble % | vs deterministic | vs float | mean member % | binary MMACs | s (test set) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *lines, "", verdict])
    write_result(args.out, md)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
