"""Fashion-MNIST test accuracy of deployed binary / few-bit networks (lowbit QAT), side by side with brevitas W1A1.

Models: :class:`lowbit.zoo.binary.BinaryCNN` (``cnn``) and :class:`lowbit.zoo.binary.BinaryMLP` (``mlp``).
Configs (hidden layers; the first layer and the classifier stay 8-bit, ``QATConfig.first_last_bits``):

* ``w1a1``: ``QuantSpec(Binary(), PerChannel(0))`` weights (``--binary xnor``: sign(w) * mean|w| per output
  channel, or ``sign``: +-1), ``QuantSpec(Binary())`` activations (sign);
* ``w1a2``: binary weights, 2-bit LSQ activations;
* ``w2a2``: 2-bit LSQ weights per output channel, 2-bit LSQ activations; BatchNorm stays unfolded for the
  whole run (``bn_freeze_steps=10**9``: the models start untrained, so folding it first would drop it) and
  is folded at ``convert_qat``.

lowbit trains with ``lowbit.qat.train`` (Adam, cosine to zero, no augmentation, ``seed``), then
``convert_qat``; the reported accuracy is the integer model's (``lowbit.integer.to_integer``) where it
lowers the converted model, otherwise the converted model's (the same integer arithmetic, bit-exact).
brevitas trains its W1A1 twin (``benchmarks/binary_brevitas.py``) on the same batches (lowbit's
``Shuffled(train, 128, seed, augment=False)``) with the same epochs, Adam learning rate, cosine schedule and
seed. Rows are merged into ``<out>/binary_accuracy.json`` (keyed by model, bits and tool), so runs can be
done in pieces; run details (seconds, lr, evaluation path) go to ``<out>/binary_accuracy_runs.json``.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_binary_accuracy.py \\
        --models mlp --configs w1a1 --tools lowbit,brevitas --epochs-mlp 10
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BITS = {"w1a1": (1, 1), "w1a2": (1, 2), "w2a2": (2, 2), "wta1": (1.58, 1),  # wta1: ternary weights (log2 3 bits)
        "w1a1s": (1, 1), "float": (32, 32)}  # w1a1s: stochastic binary weights in training (for ensembles)
BINARY_SCALED = ("w1a1", "w1a2", "w1a1s")  # the configs whose weights take --binary's scale
SHIP = {("cnn", "w1a1"): "binary-cnn-w1a1", ("mlp", "w1a1"): "binary-mlp-w1a1"}

LOWBIT_DEFINITION = {
    "xnor": ("lowbit Binary() weights, binary='xnor': w_q = alpha_c * sign(w), alpha_c = mean|w| over output channel c "
             "(XNOR-Net), sign(0) = +1, straight-through gradient cancelled where |w| > 1, latent weights clipped to "
             "[-1,1] after each step; BatchNorm trained unfolded and folded at convert into a per-channel gain and "
             "sign threshold; Binary() activations: a_q = sign(x) in {-1,+1} (x >= 0 -> +1), hard-tanh STE; first "
             "layer and classifier 8-bit (LSQ)"),
    "sign": ("lowbit Binary() weights, binary='sign': w_q = sign(w) in {-1,+1} (BNN), sign(0) = +1, straight-through "
             "gradient cancelled where |w| > 1, latent weights clipped to [-1,1] after each step; BatchNorm trained "
             "unfolded and folded at convert into a per-channel gain and sign threshold; Binary() activations: "
             "a_q = sign(x) in {-1,+1} (x >= 0 -> +1), hard-tanh STE; first layer and classifier 8-bit (LSQ)"),
}


def qat_config(config: str, binary: str):
    from lowbit.formats import Binary, IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec

    bin_w = QuantSpec(Binary(), PerChannel(0), binary=binary)
    if config == "w1a1":
        return QATConfig(weight=bin_w, act=QuantSpec(Binary()))
    if config == "w1a1s":  # BinaryConnect / BNN stochastic binarization of the weights while training
        return QATConfig(weight=bin_w, act=QuantSpec(Binary()), stochastic_weights=True)
    if config == "w1a2":
        return QATConfig(weight=bin_w, act=QuantSpec(IntFormat(2, signed=False)))
    if config == "w2a2":  # BatchNorm trained unfolded for the whole run (as in the binary configs), folded at convert
        return QATConfig(weight=QuantSpec(IntFormat(2), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)),
                         bn_freeze_steps=10**9)
    if config == "wta1":  # exact ternary weights, sign activations; BatchNorm trained unfolded, folded at convert
        from lowbit.formats import Ternary
        return QATConfig(weight=QuantSpec(Ternary(), PerChannel(0)), act=QuantSpec(Binary()), bn_freeze_steps=10**9)
    raise ValueError(f"unknown config {config!r}")


def make_model(model: str, channels: int) -> torch.nn.Module:
    from lowbit.zoo.binary import BinaryCNN, BinaryMLP

    return BinaryCNN(channels=channels) if model == "cnn" else BinaryMLP()


@torch.no_grad()
def accuracy(fn, split, batch_size: int = 500) -> float:
    correct = 0
    for start in range(0, len(split), batch_size):
        logits = torch.as_tensor(fn(split.x[start:start + batch_size]))
        correct += (logits.argmax(1) == split.y[start:start + batch_size]).sum().item()
    return 100.0 * correct / len(split)


def load_teacher(path: str, model: str, channels: int, device: str) -> torch.nn.Module:
    """The float twin a ``--configs float --save-state`` run wrote (``path``), in eval mode on ``device``."""
    from safetensors.torch import load_file

    teacher = make_model(model, channels)
    teacher.load_state_dict(load_file(path), strict=True)
    return teacher.to(device).eval()


def train_state(model: str, config: str, epochs: int, lr: float, seed: int, binary: str, channels: int,
                train_limit: int | None, device: str = "cpu", augment: bool = False, init_state: str | None = None,
                distill: float = 0.0, teacher: str | None = None):
    """Train one lowbit model on ``device``; returns ``(model on the CPU, its calibration batch, history, seconds)``.
    ``config="float"`` trains the float twin (same network, no quantizers) with the same recipe; ``distill`` > 0
    mixes KL divergence to the float twin saved in ``teacher`` into the loss (``lowbit.qat.TrainConfig.distill``)."""
    from lowbit.data import load
    from lowbit.qat import TrainConfig, prepare_qat, train
    from lowbit.training import Adam, Cosine, CrossEntropy, LoopConfig, Shuffled
    from lowbit.training import train as train_loop

    train_split = load("fashion-mnist", "train")
    if train_limit is not None:
        train_split = train_split.take(train_limit)
    torch.manual_seed(seed)
    net = make_model(model, channels).to(device)
    calib = train_split.x[:256]
    start = time.perf_counter()
    if config == "float":
        gm = net
        history = train_loop(gm, Shuffled(train_split, 128, seed, augment=augment), LoopConfig(epochs, 128, seed),
                             optimizer=Adam(lr), loss=CrossEntropy(), schedule=Cosine(), progress=False)
    else:
        gm = prepare_qat(net, qat_config(config, binary), calib.to(device))
        if init_state is not None:  # fine-tune: start from the trained weights of another run (same network)
            from safetensors.torch import load_file

            gm.load_state_dict(load_file(init_state, device=str(device)), strict=True)
        cfg = TrainConfig(epochs=epochs, optimizer="adam", lr=lr, augment=augment, seed=seed, distill=distill)
        history = train(gm, train_split, cfg, teacher=load_teacher(teacher, model, channels, device) if distill else None,
                        progress=False)
    return gm.cpu(), calib, history, time.perf_counter() - start


def variant(augment: bool = False, finetune: bool = False, binary: str = "xnor", seed: int = 0,
            distill: float = 0.0) -> str:
    """The file-name tail of a run that differs from the default recipe (empty for the default)."""
    return (("-aug" if augment else "") + ("-ft" if finetune else "") + ("-sign" if binary == "sign" else "")
            + (f"-s{seed}" if seed else "") + (f"-kd{distill:g}" if distill else ""))


def state_path(folder: Path, model: str, config: str, channels: int, epochs: int, lr: float, tail: str = "") -> Path:
    return Path(folder) / f"{model}-c{channels}-{config}-e{epochs}-lr{lr:g}{tail}.safetensors"


def save_state(folder: Path, gm: torch.nn.Module, model: str, config: str, channels: int, epochs: int, lr: float,
               tail: str, meta: dict) -> Path:
    """The trained (unconverted) weights as safetensors, with the run's details in the metadata."""
    from safetensors.torch import save_file

    path = state_path(folder, model, config, channels, epochs, lr, tail)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in gm.state_dict().items()}, str(tmp),
              metadata={"run": json.dumps(meta)})
    tmp.replace(path)
    return path


def load_state(folder: Path, model: str, config: str, binary: str, channels: int, epochs: int, lr: float,
               tail: str = ""):
    """``(model, calibration batch, history, train seconds, device)`` rebuilt from :func:`save_state`'s file: the
    same network prepared on the CPU, the trained weights loaded (strict)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lowbit.data import load
    from lowbit.qat import prepare_qat

    path = state_path(folder, model, config, channels, epochs, lr, tail)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["run"])
    calib = load("fashion-mnist", "train").x[:256]
    net = make_model(model, channels)
    gm = net if config == "float" else prepare_qat(net, qat_config(config, binary), calib)
    gm.load_state_dict(load_file(str(path)), strict=True)
    return gm, calib, meta["history"], meta["train_seconds"], meta["device"]


def evaluate(gm: torch.nn.Module, config: str, calib: torch.Tensor) -> tuple[str, float, float, str | None]:
    """Convert and evaluate on the test set: ``(evaluated on, accuracy, converted accuracy, integer error)``."""
    from lowbit.data import load
    from lowbit.qat import convert_qat

    test = load("fashion-mnist", "test")
    if config == "float":
        gm.eval()
        acc = accuracy(gm, test)
        return "float", acc, acc, None
    convert_qat(gm)
    gm.eval()
    converted_acc = accuracy(gm, test)
    evaluated, acc, integer_error = "converted", converted_acc, None
    try:
        from lowbit.integer import to_integer

        im = to_integer(gm, (test.x[:1],))
        acc = accuracy(im, test)
        evaluated = "integer"
    except Exception as exc:  # noqa: BLE001 - binary layers may not lower yet: report the converted model
        integer_error = f"{type(exc).__name__}: {str(exc)[:300]}"
    return evaluated, acc, converted_acc, integer_error


DEFINITIONS = {"w2a2": "LSQ 2-bit weights and activations",
               "wta1": "exact ternary weights per channel (LSQ step), sign activations",
               "float": "the float twin: the same network and recipe, no quantizers (Hardtanh activations)"}


def run_lowbit(model: str, config: str, epochs: int, lr: float, seed: int, binary: str, channels: int,
               train_limit: int | None, save: bool, device: str = "cpu", save_state_dir: str | None = None,
               from_state: str | None = None, train_only: bool = False, augment: bool = False,
               init_state: str | None = None, distill: float = 0.0, teacher: str | None = None) -> dict:
    start = time.perf_counter()
    tail = variant(augment, init_state is not None, binary if config in BINARY_SCALED else "xnor", seed, distill)
    if from_state is not None:
        gm, calib, history, train_seconds, trained_on = load_state(Path(from_state), model, config, binary, channels,
                                                                   epochs, lr, tail)
    else:
        gm, calib, history, train_seconds = train_state(model, config, epochs, lr, seed, binary, channels,
                                                        train_limit, device, augment, init_state, distill, teacher)
        trained_on = device_name(device)
        if save_state_dir is not None:
            save_state(Path(save_state_dir), gm, model, config, channels, epochs, lr, tail,
                       {"history": history, "train_seconds": train_seconds, "device": trained_on,
                        "lr": lr, "seed": seed, "binary": binary, "train_limit": train_limit, "distill": distill,
                        "init_state": None if init_state is None else Path(init_state).name,
                        "teacher": None if not distill else Path(teacher).name})
    if train_only:
        return {"model": model, "config": config, "channels": channels, "epochs": epochs, "history": history,
                "train_seconds": train_seconds, "trained_on": trained_on}
    evaluated, acc, converted_acc, integer_error = evaluate(gm, config, calib)
    seconds = time.perf_counter() - start
    n_train = train_limit or 55000
    row = {"model": model, "weight_bits": BITS[config][0], "act_bits": BITS[config][1], "tool": "lowbit",
           "accuracy": acc, "epochs": epochs, "seconds": seconds, "train_seconds": train_seconds, "lr": lr,
           "seed": seed, "binary_scale": binary if config in BINARY_SCALED else None, "distill": distill,
           "channels": channels if model == "cnn" else None, "train_samples": n_train, "evaluated": evaluated,
           "converted_accuracy": converted_acc, "integer_error": integer_error, "history": history,
           "trained_on": trained_on, "config": config, "augment": augment,
           "definition": LOWBIT_DEFINITION[binary] if config in ("w1a1", "w1a2") else DEFINITIONS.get(config, config)}
    if save and (model, config) in SHIP and train_limit is None:
        from lowbit.zoo.binary_zoo import save_binary

        test_n = 10000
        path = save_binary(SHIP[(model, config)], gm, {
            "test_accuracy": round(acc * test_n / 100) / test_n, "evaluated": evaluated, "epochs": epochs, "lr": lr,
            "seed": seed, "binary_scale": binary, "channels": channels if model == "cnn" else None,
            "recipe": f"benchmarks/bench_binary_accuracy.py --models {model} --configs {config} --save"})
        row["saved"] = {"path": str(path.relative_to(ROOT)), "bytes": path.stat().st_size}
    return row


def device_name(device: str) -> str:
    """``cpu`` -> this CPU's model name; ``cuda`` -> the GPU's name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return machine()


def run_brevitas(model: str, epochs: int, lr: float, seed: int, channels: int, train_limit: int | None) -> dict:
    from binary_brevitas import train_brevitas

    if model == "cnn" and channels != 64:
        raise SystemExit("binary_brevitas.brevitas_cnn builds 64 channels; run --channels 64 for brevitas")
    row = train_brevitas(model, epochs, lr=lr, seed=seed, train_limit=train_limit, progress=True)
    row.update(lr=lr, seed=seed, channels=channels if model == "cnn" else None)
    return row


MERGED = ("w1a1", "w1a2", "w2a2", "wta1")
PUBLIC = ("model", "weight_bits", "act_bits", "tool", "accuracy", "epochs")


def _key(r: dict) -> tuple:
    return (r["model"], r["weight_bits"], r["act_bits"], r["tool"])


def merge(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, pick in (("binary_accuracy.json", lambda r: {k: r[k] for k in PUBLIC}),
                       ("binary_accuracy_runs.json", lambda r: r)):
        path = out / name
        old = json.loads(path.read_text()) if path.exists() else []
        new = {_key(r): r for r in old}
        for r in rows:
            new[_key(r)] = pick(r)
        order = {"cnn": 0, "mlp": 1}
        merged = sorted(new.values(), key=lambda r: (order[r["model"]], r["weight_bits"], r["act_bits"], r["tool"]))
        path.write_text(json.dumps(merged, indent=2) + "\n")


TARGETS = {("cnn", 1, 1): 90.0, ("cnn", 1, 2): 91.0, ("cnn", 2, 2): 92.0, ("cnn", 1.58, 1): 90.5, ("mlp", 1, 1): 86.0}


def write_md(out: Path, notes: str = "") -> None:
    """``binary_accuracy.md`` from ``binary_accuracy_runs.json`` (every row's details) and ``notes``."""
    runs = json.loads((out / "binary_accuracy_runs.json").read_text())
    lines = ["# Binary networks on Fashion-MNIST: deployed test accuracy, lowbit vs brevitas", "",
             "Written by `benchmarks/bench_binary_accuracy.py` (rows in `binary_accuracy.json`, details in "
             "`binary_accuracy_runs.json`). Test accuracy on the 10000 official test images, training on the "
             "55000-image train split, Adam with cosine decay to zero, batch 128, no augmentation, seed 0, no "
             "distillation unless the config says `distilled` (KL to the float twin, `--distill`); trained on one CPU thread unless the table names a GPU (`--device cuda`, the same code; "
             "the weights evaluated here with `--from-state`).", "",
             "| model | config | tool | epochs | lr | accuracy (%) | target | evaluated on | trained on | seconds |",
             "|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for r in runs:
        target = TARGETS.get((r["model"], r["weight_bits"], r["act_bits"]))
        tool_target = f">= {target:.1f}" if r["tool"] == "lowbit" and target else "-"
        met = "" if tool_target == "-" else (" (met)" if r["accuracy"] >= target else " (**missed**)")
        model = r["model"] + (f" (c={r['channels']})" if r.get("channels") else "")
        kd = f" (distilled, {r['distill']:g})" if r.get("distill") else ""
        lines.append(f"| {model} | W{r['weight_bits']}A{r['act_bits']}{kd} | {r['tool']} | {r['epochs']} | {r['lr']} | "
                     f"{r['accuracy']:.2f} | {tool_target}{met} | {r.get('evaluated', 'brevitas eval mode')} | "
                     f"{r.get('trained_on', r['machine'])} | {r.get('train_seconds', r['seconds']):.0f} |")
    machines = sorted({r["machine"] for r in runs})
    lines += ["", "seconds: training time (CPU rows before training existed apart: training and evaluation).",
              f"Evaluation machine: {', '.join(machines)} (`lscpu | grep 'Model name'`), 1 thread (`OMP_NUM_THREADS=1`).", "",
              "Commands (from the repository root, `PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python ...`):", ""]
    for cmd in dict.fromkeys(r["command"] for r in runs):
        lines.append(f"    {cmd}")
    lines += ["", "## What 1 bit means", ""]
    for d in dict.fromkeys(r["definition"] for r in runs if r["weight_bits"] == 1 and r["act_bits"] == 1):
        lines.append(f"* {d}")
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    (out / "binary_accuracy.md").write_text("\n".join(lines) + "\n")


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,mlp")
    p.add_argument("--configs", default="w1a1,w1a2,w2a2")
    p.add_argument("--tools", default="lowbit,brevitas", help="brevitas runs W1A1 only")
    p.add_argument("--epochs-cnn", type=int, default=8)
    p.add_argument("--epochs-mlp", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.005, help="Adam peak learning rate (both tools)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--binary", choices=["xnor", "sign"], default="xnor", help="lowbit binary weight scale")
    p.add_argument("--channels", type=int, default=64, help="BinaryCNN width")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images (smoke runs; not merged)")
    p.add_argument("--save", action="store_true", help="ship the lowbit W1A1 weights into src/lowbit/zoo/weights")
    p.add_argument("--notes", default=None, help="a markdown file whose text goes under 'Notes' in the .md")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the runs JSON, train nothing")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--device", default="cpu", help="train on this torch device (cpu, cuda); evaluation runs on the CPU")
    p.add_argument("--save-state", default=None, metavar="DIR", help="save the trained weights (safetensors) in DIR")
    p.add_argument("--from-state", default=None, metavar="DIR",
                   help="train nothing: load the weights --save-state wrote in DIR, then convert and evaluate")
    p.add_argument("--init-state", default=None, metavar="FILE",
                   help="fine-tune: start from a --save-state file of the same network (its name gains -ft)")
    p.add_argument("--augment", action="store_true", help="random shifts (2 px) and horizontal flips while training")
    p.add_argument("--train-only", action="store_true", help="train (and --save-state), evaluate and merge nothing")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight (0..1) of distillation from the float twin in --teacher (lowbit QAT only)")
    p.add_argument("--teacher", default=None, metavar="FILE",
                   help="the float twin's weights: a file that `--configs float --save-state DIR` wrote")
    args = p.parse_args(argv)
    if args.distill and args.teacher is None and args.from_state is None:
        p.error("--distill needs --teacher FILE (train one with --configs float --save-state DIR)")
    torch.set_num_threads(1)
    notes = Path(args.notes).read_text() if args.notes else ""
    if args.report_only:
        write_md(Path(args.out), notes)
        return

    rows = []
    for model in args.models.split(","):
        epochs = args.epochs_cnn if model == "cnn" else args.epochs_mlp
        for config in args.configs.split(","):
            for tool in args.tools.split(","):
                if tool == "brevitas" and config != "w1a1":
                    continue
                if tool == "lowbit":
                    row = run_lowbit(model, config, epochs, args.lr, args.seed, args.binary, args.channels,
                                     args.train_limit, args.save, args.device, args.save_state, args.from_state,
                                     args.train_only, args.augment, args.init_state, args.distill, args.teacher)
                else:
                    row = run_brevitas(model, epochs, args.lr, args.seed, args.channels, args.train_limit)
                if args.train_only:
                    print(json.dumps(row), flush=True)
                    continue
                row["command"] = " ".join(["benchmarks/bench_binary_accuracy.py", *(argv if argv is not None else sys.argv[1:])])
                row["machine"] = machine()
                print(json.dumps({k: v for k, v in row.items() if k not in ("history", "definition")}), flush=True)
                rows.append(row)
    rows = [r for r in rows if r.get("config", "w1a1") in MERGED]  # w1a1s / float runs feed bench_ensemble.py
    if args.train_limit is None and rows:
        merge(Path(args.out), rows)
        write_md(Path(args.out), notes)
    else:
        print("(--train-limit given: smoke run, results not merged)", file=sys.stderr)


if __name__ == "__main__":
    main()
