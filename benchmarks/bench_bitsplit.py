"""BitSplit-Net vs the conventional multi-bit (QNN) network at equal bits and widths on Fashion-MNIST: deployed
accuracy, BOPs, measured latency on the bitwise engine (issue 18, item 4).

Models (widths c, c, 2c; first layer and classifier 8-bit weights, the two hidden convs binary weights):

* ``BitSplit W1An``: :class:`lowbit.nn.bitsplit.BitSplitCNN` (n independent binary paths with the bitwise
  activation function, merged at the classifier), trained with :func:`lowbit.training.train` (Adam, cosine to
  zero, batch 128, no augmentation, the latent binary weights clipped to [-1, 1] after each step), deployed by
  :func:`lowbit.nn.bitsplit.deploy` (an XNOR-popcount GEMM per path and layer, BatchNorm + activation as
  per-channel thresholds on the popcount);
* ``QNN W1An``: :class:`lowbit.zoo.binary.BinaryCNN` under ``lowbit.qat`` (``QuantSpec(Binary(), PerChannel(0))``
  weights, ``QuantSpec(IntFormat(n, signed=False))`` LSQ activations; the recipe of
  ``benchmarks/bench_binary_accuracy.py``: Adam, cosine, batch 128, no augmentation), ``convert_qat``, then
  ``lowbit.integer.to_integer`` (the hidden layers as n bit-serial binary GEMMs per layer, shift-add and
  requantization to n bits in the compiled plan).

Accuracy is the deployed model's on the 10000 test images (BitSplit: the bitwise engine; QNN: the integer
model). The deployed BitSplit logits are also compared with its eval-mode PyTorch model (equal bit for bit).
Latency: 1 thread, batch 1 and 64, all four models interleaved (:func:`lowbit.bench.latency.interleaved`),
best and median over the rounds. BOPs = MACs x weight bits x activation bits, layer by layer.

Training runs on ``--device`` (``cuda`` works: batches move to the model's device); evaluation and latency run on
the CPU. ``--save-state DIR`` keeps the trained weights, ``--from-state DIR`` evaluates them without training:

    # train (GPU), save, evaluate
    PYTHONPATH=src .venv/bin/python benchmarks/bench_bitsplit.py --device cuda --epochs 8 --channels 64 \\
        --save-state /tmp/bitsplit-state
    # evaluate saved weights on the CPU (1 thread)
    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bitsplit.py --from-state /tmp/bitsplit-state
    # smoke run
    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bitsplit.py --epochs 1 --channels 16 \\
        --train-limit 512 --out /tmp/bitsplit-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

from lowbit.bench.latency import interleaved  # noqa: E402
from lowbit.data import load  # noqa: E402
from lowbit.errors import ConfigError  # noqa: E402
from lowbit.utils.files import atomic_write_text  # noqa: E402

ACC_MARGIN = 0.5  # the target: BitSplit >= QNN - 0.5 points, at lower latency


def bops(n: int, c: int) -> dict[str, int]:
    """BOPs (MACs x weight bits x input bits) of the W1An network of width c (:func:`lowbit.nn.bitsplit.bops`); the
    same for BitSplit and QNN: QNN's hidden layers are n binary GEMMs each (bit-serial), BitSplit's n paths one
    binary GEMM each."""
    from lowbit.nn.bitsplit import bops as bitsplit_bops

    return bitsplit_bops(n, c)


def qnn_config(n: int):
    from lowbit.formats import Binary, IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec

    return QATConfig(weight=QuantSpec(Binary(), PerChannel(0), binary="xnor"),
                     act=QuantSpec(IntFormat(n, signed=False)))


def build_qnn(n: int, c: int, calib: torch.Tensor, seed: int):
    from lowbit.qat import prepare_qat
    from lowbit.zoo.binary import BinaryCNN

    torch.manual_seed(seed)
    return prepare_qat(BinaryCNN(channels=c), qnn_config(n), calib)


def train_qnn(gm, train, epochs: int, lr: float, seed: int, device: str) -> list[dict]:
    from lowbit.qat import TrainConfig, train as qat_train

    gm.to(device)
    history = qat_train(gm, train, TrainConfig(epochs=epochs, optimizer="adam", lr=lr, augment=False, seed=seed),
                        progress=False)
    gm.cpu()
    return history


def train_bitsplit(model, train, epochs: int, lr: float, seed: int, device: str) -> list[dict]:
    from lowbit.training import Adam, Cosine, CrossEntropy, Hooks, LoopConfig, Shuffled, train as loop

    model.to(device)
    batches = Shuffled(train, 128, seed, augment=False)  # QAT's batches (lowbit.qat.train)
    history = loop(model, batches, LoopConfig(epochs, 128, seed), optimizer=Adam(lr), loss=CrossEntropy(),
                   schedule=Cosine(), hooks=Hooks(after_step=(lambda m, step: m.clip_latent(),)),
                   options={"model": f"BitSplitCNN(bits={model.bits}, channels={model.channels})"}, progress=False)
    model.cpu()
    return history


@torch.no_grad()
def accuracy(fn, split, batch_size: int = 500) -> float:
    correct = 0
    for start in range(0, len(split), batch_size):
        logits = torch.as_tensor(fn(split.x[start:start + batch_size]))
        correct += int((logits.argmax(1) == split.y[start:start + batch_size]).sum())
    return 100.0 * correct / len(split)


@torch.no_grad()
def bitsplit_parity(model, deployed, split, batch_size: int = 500) -> dict:
    """Deployed logits vs the eval-mode model's on every test image: equal logits and argmax counts."""
    same_logits = same_argmax = 0
    for start in range(0, len(split), batch_size):
        x = split.x[start:start + batch_size]
        ref, out = model(x), deployed(x)
        same_logits += int((ref == out).all(dim=1).sum())
        same_argmax += int((ref.argmax(1) == out.argmax(1)).sum())
    return {"images": len(split), "equal_logits": same_logits, "equal_argmax": same_argmax}


def state_path(folder: Path, kind: str, n: int) -> Path:
    return folder / f"{kind}_w1a{n}.pt"


def save_state(obj: dict, path: Path) -> None:
    """torch.save to a temporary name, then rename: a killed run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_state(path: Path, channels: int) -> dict:
    if not path.is_file():
        raise ConfigError(f"--from-state: {path} is missing; train with --save-state {path.parent} first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("channels") != channels:
        raise ConfigError(f"--from-state: {path} holds channels = {saved.get('channels')}, the run asks --channels "
                          f"{channels}: pass --channels {saved.get('channels')}")
    return saved


def train_or_load(model, kind: str, n: int, args, fit) -> tuple[list | None, float | None]:
    """``(history, training seconds)``: ``model`` loaded from ``--from-state``, or trained by ``fit()`` (and saved
    with ``--save-state``)."""
    if args.from_state:
        saved = load_state(state_path(Path(args.from_state), kind, n), args.channels)
        model.load_state_dict(saved["state"])
        return saved.get("history"), saved.get("train_seconds")
    start = time.perf_counter()
    history = fit()
    train_s = time.perf_counter() - start
    if args.save_state:
        save_state({"state": model.state_dict(), "bits": n, "channels": args.channels, "history": history,
                    "train_seconds": train_s, "epochs": args.epochs, "device": args.device},
                   state_path(Path(args.save_state), kind, n))
    return history, train_s


def run_models(n: int, args, train, test) -> dict:
    """Train (or load) and deploy BitSplit W1An and QNN W1An (``--kinds``); returns the deployed callables and
    their rows (nothing with ``--train-only``)."""
    out = {}
    kinds = args.kinds.split(",")
    if "bitsplit" in kinds:
        out.update(_run_bitsplit(n, args, train, test))
    if "qnn" in kinds:
        out.update(_run_qnn(n, args, train, test, train.x[:256]))
    return out


def _run_bitsplit(n: int, args, train, test) -> dict:
    from lowbit.nn.bitsplit import BitSplitCNN, deploy

    out = {}
    torch.manual_seed(args.seed)
    model = BitSplitCNN(bits=n, channels=args.channels)
    history, train_s = train_or_load(model, "bitsplit", n, args, lambda: train_bitsplit(
        model, train, args.epochs, args.lr, args.seed, args.device))
    if args.train_only:
        return {}
    model.eval()
    deployed = deploy(model)
    parity = bitsplit_parity(model, deployed, test)
    out["bitsplit"] = {"fn": deployed, "row": {
        "model": f"BitSplit W1A{n}", "bits": n, "accuracy": accuracy(deployed, test), "parity": parity,
        "train_seconds": train_s, "history": history}}
    return out


def _run_qnn(n: int, args, train, test, calib) -> dict:
    from lowbit.integer import to_integer
    from lowbit.qat import convert_qat

    out = {}
    gm = build_qnn(n, args.channels, calib, args.seed)
    history, train_s = train_or_load(gm, "qnn", n, args, lambda: train_qnn(
        gm, train, args.epochs, args.lr, args.seed, args.device))
    if args.train_only:
        return {}
    convert_qat(gm)
    gm.eval()
    im = to_integer(gm, (test.x[:1],))
    out["qnn"] = {"fn": im, "row": {
        "model": f"QNN W1A{n}", "bits": n, "accuracy": accuracy(im, test), "converted_accuracy": accuracy(gm, test),
        "train_seconds": train_s, "history": history}}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="training device: cpu or cuda (evaluation runs on the CPU)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--channels", type=int, default=None, help="BinaryCNN width c (default 64; with --from-state: "
                   "the saved models')")
    p.add_argument("--bits", default="2,4", help="activation bits to compare, comma-separated (1..8)")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke runs)")
    p.add_argument("--rounds", type=int, default=100, help="latency rounds per batch size")
    p.add_argument("--kinds", default="bitsplit,qnn", help="which nets to train: bitsplit, qnn or both")
    p.add_argument("--train-only", action="store_true",
                   help="train and --save-state, evaluate nothing (side-by-side jobs on an accelerator)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--save-state", default=None, help="folder to save the trained state_dicts in")
    p.add_argument("--from-state", default=None, help="folder of saved state_dicts: evaluate only, no training")
    args = p.parse_args(argv)
    from lowbit.functional.bitsplit import check_bits

    bits = [check_bits(int(b)) for b in args.bits.split(",")]
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ConfigError(f"--device {args.device!r}; allowed: cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.save_state and args.from_state:
        raise ConfigError("--save-state and --from-state exclude each other")
    trained = None
    if args.from_state:  # the saved run's settings, not this command's defaults
        meta_path = Path(args.from_state) / "run.json"
        if not meta_path.is_file():
            raise ConfigError(f"--from-state: {meta_path} is missing; train with --save-state {args.from_state} first")
        trained = json.loads(meta_path.read_text())
        if args.channels is not None and args.channels != trained["channels"]:
            raise ConfigError(f"--from-state: the saved models have channels = {trained['channels']}, the command "
                              f"asks --channels {args.channels}: drop --channels or pass {trained['channels']}")
        args.channels, args.train_limit = trained["channels"], trained["train_limit"]
    elif args.channels is None:
        args.channels = 64
    if isinstance(args.channels, bool) or not 1 <= args.channels <= 4096:
        raise ConfigError(f"--channels {args.channels}; expected 1..4096")
    torch.set_num_threads(1)
    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    if args.train_limit is not None:
        train = train.take(args.train_limit)
    if args.save_state:
        folder = Path(args.save_state)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "run.json", json.dumps({
            "channels": args.channels, "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
            "train_limit": args.train_limit, "train_images": len(train), "device": args.device,
            "bits": bits}, indent=1) + "\n")

    results, fns = [], {}
    if args.train_only:
        for n in bits:
            run_models(n, args, train, test)
        return
    for n in bits:
        got = run_models(n, args, train, test)
        for kind in ("bitsplit", "qnn"):
            row = got[kind]["row"]
            row["bops"] = bops(n, args.channels)
            fns[row["model"]] = got[kind]["fn"]
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)

    load_before = os.getloadavg()
    latency = {}
    for batch in (1, 64):
        x = test.x[:batch].contiguous()
        with torch.no_grad():
            timing = interleaved({name: (lambda f=f: f(x)) for name, f in fns.items()}, rounds=args.rounds, warmup=10)
        latency[batch] = {name: {"best_us": round(t.best_us, 1), "median_us": round(t.median_us, 1)}
                          for name, t in timing.items()}
    load_after = os.getloadavg()
    for row in results:
        row["latency"] = {str(b): latency[b][row["model"]] for b in latency}

    verdicts = []
    for n in bits:
        bs = next(r for r in results if r["model"] == f"BitSplit W1A{n}")
        qn = next(r for r in results if r["model"] == f"QNN W1A{n}")
        acc_ok = bs["accuracy"] >= qn["accuracy"] - ACC_MARGIN
        lat_ok = {b: all(latency[b][bs["model"]][m] < latency[b][qn["model"]][m] for m in ("best_us", "median_us"))
                  for b in latency}
        verdicts.append({"bits": n, "accuracy_met": acc_ok, "latency_met": lat_ok,
                         "met": acc_ok and all(lat_ok.values())})

    smoke = args.train_limit is not None
    command = " ".join(["benchmarks/bench_bitsplit.py", *(argv if argv is not None else sys.argv[1:])])
    src = trained if trained is not None else {"device": args.device, "epochs": args.epochs, "lr": args.lr,
                                               "seed": args.seed, "train_images": len(train)}
    meta = {"command": command, "machine": machine(), "train_device": src["device"], "epochs": src["epochs"],
            "channels": args.channels, "lr": src["lr"], "seed": src["seed"], "train_images": src["train_images"],
            "from_state": args.from_state, "smoke": smoke, "rounds": args.rounds,
            "load_before_after": [load_before[0], load_after[0]]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bitsplit.json", json.dumps({"meta": meta, "rows": results, "verdicts": verdicts},
                                                        indent=1) + "\n")
    atomic_write_text(out / "bitsplit.md", markdown(meta, results, verdicts))
    print((out / "bitsplit.md").read_text())


def markdown(meta: dict, rows: list[dict], verdicts: list[dict]) -> str:
    lines = ["# BitSplit-Net vs QNN at equal bits (Fashion-MNIST, bitwise engine)", ""]
    if meta["smoke"]:
        lines += [f"**SMOKE RUN** ({meta['train_images']} training images): the figures prove the pipeline runs, "
                  "they are not results.", ""]
    lines += [f"- command: `PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python {meta['command']}`",
              f"- machine (evaluation, latency): {meta['machine']}",
              f"- training: device {meta['train_device']}, {meta['epochs']} epochs, {meta['train_images']} images, "
              f"Adam lr {meta['lr']} cosine to 0, batch 128, no augmentation, seed {meta['seed']}"
              + (f" (weights from `{meta['from_state']}`)" if meta["from_state"] else ""),
              f"- widths: BinaryCNN c = {meta['channels']} (c, c, 2c); first layer and classifier 8-bit weights",
              f"- latency: 1 thread, {meta['rounds']} interleaved rounds per batch size; load average before / after "
              f"{meta['load_before_after'][0]:.2f} / {meta['load_before_after'][1]:.2f}", "",
              "| model | deployed test acc (%) | BOPs (M) | batch 1 best / median (us) | batch 64 best / median (us) |",
              "|---|---:|---:|---:|---:|"]
    for r in rows:
        lat = r["latency"]
        lines.append(f"| {r['model']} | {r['accuracy']:.2f} | {r['bops']['total'] / 1e6:.1f} | "
                     f"{lat['1']['best_us']:.0f} / {lat['1']['median_us']:.0f} | "
                     f"{lat['64']['best_us']:.0f} / {lat['64']['median_us']:.0f} |")
    lines += ["", "## Target: BitSplit >= QNN - 0.5 points, at lower latency (best and median, batch 1 and 64)", ""]
    for v in verdicts:
        bs = next(r for r in rows if r["model"] == f"BitSplit W1A{v['bits']}")
        qn = next(r for r in rows if r["model"] == f"QNN W1A{v['bits']}")
        ratio = {b: qn["latency"][b]["median_us"] / bs["latency"][b]["median_us"] for b in ("1", "64")}
        lines.append(f"- W1A{v['bits']}: accuracy {bs['accuracy']:.2f} vs {qn['accuracy']:.2f} "
                     f"({'met' if v['accuracy_met'] else 'NOT met'}); QNN / BitSplit median latency "
                     f"{ratio['1']:.2f}x at batch 1, {ratio['64']:.2f}x at batch 64 "
                     f"(lower latency: batch 1 {'met' if v['latency_met'][1] else 'NOT met'}, batch 64 "
                     f"{'met' if v['latency_met'][64] else 'NOT met'}); **target {'met' if v['met'] else 'not met'}**")
    lines += ["", "## Checks", ""]
    for r in rows:
        if "parity" in r:
            p = r["parity"]
            lines.append(f"- {r['model']}: the deployed logits equal the eval-mode PyTorch model's on "
                         f"{p['equal_logits']} / {p['images']} test images (argmax on {p['equal_argmax']}).")
        else:
            lines.append(f"- {r['model']}: integer model {r['accuracy']:.2f}%, converted simulation "
                         f"{r['converted_accuracy']:.2f}%.")
    lines += ["", "## What is compared", "",
              "BOPs are equal by construction at equal widths: QNN's hidden layers take n binary GEMMs each "
              "(bit-serial), BitSplit's n paths one binary GEMM each; the first layer (8-bit image, 8-bit weights) "
              "is the same, and the classifier reads n bits per feature either way. What differs is the work "
              "around the GEMMs: QNN merges the n partial sums (shift-add) and requantizes to n bits in every "
              "layer; BitSplit's paths never meet before the classifier, each binary layer ending in a per-channel "
              "threshold set on the popcount. BitSplit holds n times QNN's hidden binary weights (one set per "
              "path). BitSplit runs as one C call (`lowbit.nn.bitsplit.DeployedBitSplit`, `lowbit_bitsplit_forward`: "
              "image by image, the 3x3 first layer, then per path and binary layer a word-copy im2col of the packed "
              "bits, the XNOR GEMM of `lowbit.bitwise` and the threshold epilogue, then the int8 classifier); QNN runs in lowbit's compiled integer plan.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from lowbit.errors import LowbitError

    try:
        main()
    except LowbitError as exc:  # a user's mistake: one line, exit status 2 (as the lowbit CLI)
        print(f"bench_bitsplit.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
