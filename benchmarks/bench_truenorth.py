"""TrueNorth-style (Eedn, Esser et al. PNAS 2016) nets on Fashion-MNIST: accuracy, cores, spikes per inference.

``lowbit.snn.eedn.EednNet``: a host-side transduction layer (3x3 conv to 16 spike maps), six on-core layers of
trinary grouped 3x3 / 1x1 convolutions with binary neurons (every filter's fan-in <= 128) and an output layer of
10 populations whose spike counts are the class scores. Training: ``lowbit.training.train`` with Adam (lr 1e-2
for the trinary copies: on a CPU probe, 20000 images x 2 epochs, 63.1% validation accuracy against 51.9% at
5e-3; lr 5e-3 for the float reference), cosine decay after a quarter-epoch warm-up, batch 256, random
shifts of up to 2 px and flips, the hidden weights clipped to [-1, 1] after every step; the Fashion-MNIST
train split (55000 images). Each copy of the ensemble is trained the same way with its own seed (0, 1, ...).
The reported accuracy is the **folded** net's (BN folded into integer thresholds, int8 trinary synapses:
what TrueNorth would run), on the 10000 test images; the ensemble sums the copies' spike counts. Unless
``--no-float``, the same architecture with real weights and ReLU is trained once (seed 0) as the reference.

Every tensor lives on ``--device``; batches move there one at a time (the data set is 55000 28x28 images);
no per-sample Python loop. ``--from-state`` evaluates on the CPU by default.

    # train on a GPU (4 copies x 15 epochs + the float reference), keep the weights:
    python benchmarks/bench_truenorth.py --device cuda --epochs 15 --copies 4 --save-state runs/truenorth
    # or as two jobs side by side (their copies in one folder; only one trains the float reference):
    python benchmarks/train_on_device.py --epochs 15 --budget 500 --out /tmp/tn --tar /tmp/tn.tgz \
        --job "benchmarks/bench_truenorth.py --epochs {E} --copies 2" \
        --job "benchmarks/bench_truenorth.py --epochs {E} --copies 2 --first-seed 2 --no-float"
    # re-evaluate the saved weights on the CPU, no training:
    python benchmarks/bench_truenorth.py --from-state runs/truenorth
    # smoke test on the CPU:
    python benchmarks/bench_truenorth.py --epochs 1 --copies 2 --train-limit 512

Writes ``results/truenorth.md`` and ``results/truenorth.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, write_result  # noqa: E402

from lowbit.data import load  # noqa: E402
from lowbit.data.datasets import FASHION_MNIST_DIR, Split  # noqa: E402
from lowbit.errors import CheckpointError, ConfigError  # noqa: E402
from lowbit.snn.eedn import (EednNet, EednSpec, clip_hidden_, core_rows, cores, ensemble_counts, fold,  # noqa: E402
                             run_batched, spec_dict)
from lowbit.training import Adam, Cosine, Hooks, LoopConfig, Shuffled, train  # noqa: E402
from lowbit.utils.files import atomic_write_text  # noqa: E402
from lowbit.zoo.weights_io import load_weights, save_state  # noqa: E402


def accuracy(counts: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((counts.argmax(1) == y).float().mean())


def train_one(spec: EednSpec, seed: int, data: Split, val: Split, args: argparse.Namespace) -> tuple[EednNet, dict]:
    lr = args.lr if spec.kind == "truenorth" else args.float_lr
    torch.manual_seed(seed)
    model = EednNet(spec).to(args.device)
    batches = Shuffled(data, args.batch_size, seed, augment=True)
    log: list[dict] = []

    def epoch_end(m: torch.nn.Module, row: dict) -> None:
        r = run_batched(m, val.x, 1000)
        log.append({**row, "val_accuracy": round(accuracy(r.counts, val.y), 2), "seconds": round(time.time() - t0, 1)})
        print(f"  {spec.kind} seed {seed}: {json.dumps(log[-1])}", flush=True)

    hooks = Hooks(after_step=(clip_hidden_,) if spec.kind == "truenorth" else (), epoch_end=(epoch_end,))
    t0 = time.time()
    train(model, batches, LoopConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed),
          optimizer=Adam(lr=lr), schedule=Cosine(warmup_steps=max(1, len(batches) // 4)), hooks=hooks,
          progress=False)
    seconds = time.time() - t0
    recipe = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "Adam", "lr": lr,
              "schedule": "cosine, warm-up 1/4 epoch", "augment": "shift 2 px + flip", "seed": seed,
              "train_images": len(data), "device": str(args.device),
              "device_name": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "cpu"}
    return model.eval(), {"spec": spec_dict(spec), "recipe": recipe, "train_seconds": round(seconds, 1),
                          "history": log, "torch": torch.__version__}


def save(model: EednNet, meta: dict, path: Path) -> None:
    save_state(model.state_dict(), path, meta)
    print(f"saved {path}", flush=True)


def load_saved(path: Path) -> tuple[EednNet, dict]:
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        spec = EednSpec(**meta["spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path}: not an Eedn state written by --save-state ({exc})") from exc
    model = EednNet(spec)
    load_weights(model, path)
    return model.eval(), meta


def evaluate(models: list[tuple[EednNet, dict]], float_model: tuple[EednNet, dict] | None, test: Split,
             device: str) -> tuple[list[dict], str]:
    rows, lines, runs = [], [], []
    float_acc = None
    if float_model is not None:
        fr = run_batched(float_model[0].to(device), test.x)
        float_acc = accuracy(fr.counts, test.y)
    n_cores = cores(models[0][0])
    layer_rows = core_rows(models[0][0])
    for i, (model, meta) in enumerate(models):
        bn_run = run_batched(model.to(device), test.x)
        folded = fold(model.cpu()).to(device)
        r = run_batched(folded, test.x)
        runs.append(r)
        same = float((r.counts == bn_run.counts).all(1).float().mean())
        acc, spikes = accuracy(r.counts, test.y), float(r.spikes.mean())
        seed = meta["recipe"]["seed"]
        lines.append(f"| copy {i} (seed {seed}) | {acc:.2f}% | {accuracy(bn_run.counts, test.y):.2f}% | "
                     f"{100 * same:.2f}% | {n_cores} | {spikes:.0f} | {meta['recipe']['epochs']} | "
                     f"{meta['train_seconds']:.0f} s on {meta['recipe']['device_name']} |")
        rows.append({"family": "truenorth (Eedn)", "model": f"eedn-fmnist-copy{i}", "config": _config(meta),
                     "accuracy": round(acc, 2), "float_accuracy": None if float_acc is None else round(float_acc, 2),
                     "cores": n_cores, "spikes_per_inference": round(spikes, 1), "copies": 1})
    ens = ensemble_counts(runs)
    k = len(models)
    ens_acc, ens_spikes = accuracy(ens, test.y), float(sum(r.spikes.mean() for r in runs))
    lines.append(f"| ensemble of {k} (counts summed) | {ens_acc:.2f}% | | | {k * n_cores} | {ens_spikes:.0f} | | |")
    rows.append({"family": "truenorth (Eedn)", "model": f"eedn-fmnist-ensemble{k}", "config": _config(models[0][1]),
                 "accuracy": round(ens_acc, 2), "float_accuracy": None if float_acc is None else round(float_acc, 2),
                 "cores": k * n_cores, "spikes_per_inference": round(ens_spikes, 1), "copies": k})
    spec = models[0][0].spec
    layers = "\n".join(f"| {r.name} | {r.fan_in} | {'yes' if r.fits else 'NO'} | {r.cores} |" for r in layer_rows)
    float_line = "not trained (--no-float)" if float_model is None else \
        f"{float_acc:.2f}% (same architecture, real weights, ReLU; {float_model[1]['recipe']['epochs']} epochs)"
    limit = models[0][1]["recipe"]["train_images"]
    smoke = " (**a smoke run** with `--train-limit`: these figures only show that the pipeline runs)" \
        if limit < 55000 else ""
    body = f"""Eedn-style TrueNorth net (`lowbit.snn.eedn.EednNet`, {spec_dict(spec)}) on Fashion-MNIST: trinary
weights {{-1, 0, +1}}, binary neurons (triangle surrogate), grouped 3x3 convolutions (group size
{spec.group_size}: fan-in {9 * spec.group_size}) and 1x1 layers, 10 populations of {spec.population} x 49 output
neurons. Trained on {limit} images{smoke}; accuracy on the {len(test)} test images. `accuracy` is the folded net's
(BatchNorm folded exactly into integer thresholds, int8 synapses); `BN net` is the trained net in eval mode;
`same counts`: the fraction of test images whose 10 counts the two nets give identically. Cores: one per output
patch and group (`lowbit.snn.truenorth.truenorth_report`) for the on-core layers; the transduction layer runs
on the host and is not counted. Spikes per inference: all 1s of every spiking layer (transduction included)
per test image, summed over the copies for the ensemble. Evaluated on: {device}.

| net | accuracy | BN net | same counts | cores | spikes / inference | epochs | training |
|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Float reference: {float_line}.

Per layer (one copy; `check_truenorth` passes):

| layer | fan-in | fits 128 | cores |
|---|---|---|---|
{layers}

Recipe: {json.dumps(models[0][1]['recipe'])}.
Validation accuracy by epoch (copy 0): {[h['val_accuracy'] for h in models[0][1]['history']]}.
"""
    return rows, body


def _config(meta: dict) -> str:
    s, r = meta["spec"], meta["recipe"]
    return (f"group size {s['group_size']}, transduction {s['transduction']}, population {s['population']}; "
            f"{r['epochs']} epochs Adam lr {r['lr']} cosine, batch {r['batch_size']}, {r['train_images']} images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--copies", type=int, default=4,
                   help="ensemble size (independently trained copies, seeds first-seed, first-seed + 1, ...)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first copy's seed (jobs run side by side train disjoint seeds into one --save-state)")
    p.add_argument("--train-only", action="store_true",
                   help="train and --save-state, evaluate nothing (for benchmarks/train_on_device.py)")
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N images only (a smoke test)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam peak learning rate of the TrueNorth copies")
    p.add_argument("--float-lr", type=float, default=5e-3, help="Adam peak learning rate of the float reference")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--no-float", action="store_true", help="skip the float (ReLU, real weights) reference")
    p.add_argument("--save-state", default=None, help="folder to write the trained weights to")
    p.add_argument("--from-state", default=None, help="evaluate the weights in this folder (no training)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None,
                   help=f"Fashion-MNIST folder (the four idx .gz files; default {FASHION_MNIST_DIR})")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.copies < 1:
        p.error(f"--copies = {args.copies}; allowed: an integer >= 1")
    if args.first_seed < 0:
        p.error(f"--first-seed = {args.first_seed}; allowed: an integer >= 0")
    if args.train_only and (args.from_state or not args.save_state):
        p.error("--train-only needs --save-state DIR (where the weights go) and no --from-state")
    test = load("fashion-mnist", "test", root=args.data_root)
    if args.from_state:
        folder = Path(args.from_state)
        paths = sorted(folder.glob("eedn-copy*.npz"), key=lambda q: int(q.stem.removeprefix("eedn-copy")))
        if not paths:
            p.error(f"--from-state {folder}: no eedn-copy*.npz there (write them with --save-state)")
        models = [load_saved(q) for q in paths]
        float_model = load_saved(folder / "eedn-float.npz") if (folder / "eedn-float.npz").exists() else None
    else:
        try:
            spec = EednSpec(group_size=args.group_size, population=args.population)
        except ConfigError as exc:
            p.error(str(exc))
        if args.device == "cuda":
            torch.backends.cudnn.benchmark = True
        data = load("fashion-mnist", "train", root=args.data_root)
        val = load("fashion-mnist", "val", root=args.data_root)
        if args.train_limit:
            data, val = data.take(args.train_limit), val.take(min(len(val), args.train_limit))
        models = []
        for seed in range(args.first_seed, args.first_seed + args.copies):
            models.append(train_one(spec, seed, data, val, args))
            if args.save_state:
                save(*models[-1], Path(args.save_state) / f"eedn-copy{seed}.npz")
        float_model = None
        if not args.no_float:
            float_model = train_one(EednSpec(group_size=args.group_size, population=args.population, kind="float"),
                                    args.first_seed, data, val, args)
            if args.save_state:
                save(*float_model, Path(args.save_state) / "eedn-float.npz")
        if args.train_only:
            return
    rows, body = evaluate(models, float_model, test, args.device)
    write_result("truenorth", body)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "truenorth.json", json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
