"""spikingjelly's ANN-to-SNN converter on lowbit's Fashion-MNIST CNN, side by side with lowbit's conversion.

Runs in its own environment (spikingjelly is a peer, never a lowbit dependency)::

    python3 -m venv /work/venvs/snn
    echo torch==2.13.0 > /tmp/snn-constraints.txt
    /work/venvs/snn/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /work/venvs/snn/bin/pip install -c /tmp/snn-constraints.txt --no-deps spikingjelly==2.0.0
    /work/venvs/snn/bin/pip install -c /tmp/snn-constraints.txt numpy tqdm loguru packaging requests
    PYTHONPATH=src OMP_NUM_THREADS=1 /work/venvs/snn/bin/python benchmarks/peer_spikingjelly.py --model cnn

(``--no-deps``: spikingjelly 2.0.0 declares torchaudio, torchvision, matplotlib, tensorboard, ... which the
converter never imports.)

What spikingjelly 2.0.0 does (read from ``activation_based/ann2snn``): ``Converter`` is ``FXConverter``, whose
algorithm is a recipe; the classic rate-coding conversion is ``RateCodingRecipe(dataloader, mode)``. It traces the
ANN with torch.fx, fuses Conv-BN (``fuse_conv_bn_eval``), puts a ``VoltageHook`` after every ``nn.ReLU`` module,
runs the calibration images through it (the hook keeps a running average, momentum 0.1, of each batch's maximum
(``"max"``) or 99.9th percentile (``"99.9%"``) of the ReLU output: so the threshold depends on the calibration
batch size), then replaces each ReLU by ``VoltageScaler(1/s) -> IFNode(v_threshold=1, v_reset=None) ->
VoltageScaler(s)`` (integrate-and-fire, reset by subtraction, one layer-wise scale ``s``). Everything else
(convolutions, linear layers, pooling) is kept as it is and runs every time step; the input image is applied as a
constant current every step; the last linear layer's output is summed over the steps.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import merge_rows, write_result  # noqa: E402

import spikingjelly  # noqa: E402
from spikingjelly.activation_based import ann2snn, functional, neuron  # noqa: E402

from lowbit import zoo  # noqa: E402
from lowbit.data import fashion_mnist  # noqa: E402
from lowbit.zoo.models import LeNetBN  # noqa: E402
from lowbit.zoo.weights_io import load_weights, read_meta  # noqa: E402

METHOD = {"max": "convert-max", "99.9%": "convert-p99.9"}


def sj_version() -> str:
    try:
        from importlib.metadata import version

        return version("spikingjelly")
    except Exception:  # noqa: BLE001 - the version is only reported
        return getattr(spikingjelly, "__version__", "?")


def load_ann(name: str, weights_dir: str | None) -> tuple[nn.Module, str]:
    """``lowbit.zoo.pretrained``; for ``cnn-avgpool`` on a checkout whose zoo lacks it, the same LeNetBN with its two
    MaxPool2d(2) replaced by AvgPool2d(2) and the weights loaded from ``weights_dir`` (pooling has no parameters)."""
    if name in zoo.ZOO:
        return zoo.pretrained(name, weights_dir), f"`lowbit.zoo.pretrained({name!r}, {weights_dir!r})`"
    if name != "cnn-avgpool" or weights_dir is None:
        raise SystemExit(f"unknown zoo model {name!r} (cnn-avgpool needs --weights-dir on this checkout)")
    model = LeNetBN()
    model.pool1, model.pool2 = nn.AvgPool2d(2), nn.AvgPool2d(2)
    how = ("this checkout's zoo has no `cnn-avgpool` entry: `LeNetBN()` with `pool1`, `pool2` replaced by "
           "`nn.AvgPool2d(2)` (the zoo entry's architecture), `load_weights` from "
           f"`{Path(weights_dir) / (name + '.npz')}`")
    return load_weights(model, Path(weights_dir) / f"{name}.npz").eval(), how


def evaluate_ann(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(y)


def evaluate_snn(snn: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int):
    """Accuracy (%) of the output summed over the first t steps and spikes per image up to t, t = 1..steps."""
    if_nodes = [m for m in snn.modules() if isinstance(m, neuron.IFNode)]
    spikes = [0.0]

    def count(_m, _inp, out):
        spikes[0] += float(out.sum())

    handles = [m.register_forward_hook(count) for m in if_nodes]
    correct = torch.zeros(steps, dtype=torch.long)
    spike_sum = torch.zeros(steps, dtype=torch.float64)
    snn.eval()
    with torch.no_grad():
        for i in range(0, len(y), batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            functional.reset_net(snn)
            out = None
            for t in range(steps):
                spikes[0] = 0.0
                step = snn(xb)
                out = step if out is None else out + step
                correct[t] += int((out.argmax(1) == yb).sum())
                spike_sum[t] += spikes[0]
    for h in handles:
        h.remove()
    acc = (100.0 * correct.double() / len(y)).tolist()
    spikes_per_image = (spike_sum.cumsum(0) / len(y)).tolist()
    return acc, spikes_per_image, len(if_nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn-avgpool", help="zoo name: cnn-avgpool (default) or cnn (shipped, max pool)")
    ap.add_argument("--weights-dir", default=None, help="directory with <model>.npz (default: shipped weights)")
    ap.add_argument("--time-steps", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--calib-size", type=int, default=1000, help="first N images of fashion_mnist('train')")
    ap.add_argument("--calib-batch", type=int, default=100,
                    help="calibration batch size (spikingjelly's hooks average per-batch statistics; 100 as in "
                         "its cnn_mnist example)")
    ap.add_argument("--test-size", type=int, default=10000, help="first N images of the test split")
    ap.add_argument("--test-batch", type=int, default=500)
    ap.add_argument("--modes", nargs="+", default=["max", "99.9%"])
    ap.add_argument("--no-save", action="store_true", help="print only; write no result file")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    command = "PYTHONPATH=src OMP_NUM_THREADS=1 /work/venvs/snn/bin/python " + shlex.join(
        ["benchmarks/peer_spikingjelly.py"] + sys.argv[1:])

    ann, how = load_ann(args.model, args.weights_dir)
    weights = zoo.weights_path(args.model, args.weights_dir) if args.model in zoo.ZOO else (
        Path(args.weights_dir) / f"{args.model}.npz")
    meta = read_meta(weights)
    calib = fashion_mnist("train").take(args.calib_size)
    test = fashion_mnist("test").take(args.test_size)
    loader = [(calib.x[i:i + args.calib_batch], calib.y[i:i + args.calib_batch])
              for i in range(0, len(calib), args.calib_batch)]
    ann_acc = evaluate_ann(ann, test.x, test.y, args.test_batch)
    print(f"ANN float accuracy on {len(test)} test images: {ann_acc:.2f}%", flush=True)
    steps = max(args.time_steps)
    dataset = f"fashion-mnist ({args.model})"
    tool = f"spikingjelly {sj_version()}"
    rows, results, notes = [], {}, []
    for mode in args.modes:
        start = time.time()
        recipe = ann2snn.RateCodingRecipe(dataloader=loader, mode=mode)
        snn = ann2snn.Converter(recipe=recipe).convert(copy.deepcopy(ann))
        convert_s = time.time() - start
        scales = [float(m.scale) for name, m in snn.named_modules() if name.endswith("scaler1")]
        start = time.time()
        acc, spk, n_if = evaluate_snn(snn, test.x, test.y, steps, args.test_batch)
        eval_s = time.time() - start
        results[mode] = (acc, spk)
        notes.append(f"- `{mode}`: {n_if} IFNode layers, thresholds (layer scales) "
                     f"{', '.join(f'{s:.3f}' for s in scales)}; conversion {convert_s:.1f} s, "
                     f"{steps} steps on {len(test)} images {eval_s:.0f} s")
        print(notes[-1], flush=True)
        for t in args.time_steps:
            print(f"  {mode:>6} T={t:3d}: {acc[t - 1]:6.2f}%  spikes/inference {spk[t - 1]:.0f}", flush=True)
            rows.append({"method": METHOD.get(mode, f"convert-{mode}"), "dataset": dataset, "time_steps": t,
                         "accuracy": round(acc[t - 1], 2), "ann_accuracy": round(ann_acc, 2),
                         "spikes_per_inference": round(spk[t - 1], 1), "synops": None, "latency_us": None,
                         "tool": tool})
        print(f"graph after conversion ({mode}):\n{snn.code}", flush=True)
    if args.no_save:
        return

    has_max = any(isinstance(m, nn.MaxPool2d) for m in ann.modules())
    pool_note = (
        "The ANN has MaxPool2d after each of its first two ReLUs. spikingjelly (layer-wise, the default) keeps them "
        "where they are, after the IF neuron and its output scaler: each step the pool takes the maximum of spikes, "
        "i.e. the OR of the four neurons' spikes, so the pooled rate is at least (and usually above) the ANN's max of "
        "the four rates. (Its `channel_wise=True, pre_spike_maxpool=True` option moves the pool before the neuron; "
        "not run here.)" if has_max else
        "The ANN pools with AvgPool2d, which is linear: spikingjelly leaves it in place (after the neuron), and it "
        "averages spikes exactly.")
    head = "| T | " + " | ".join(f"`{m}` accuracy | `{m}` spikes/inference" for m in args.modes) + " |"
    sep = "|---:|" + "---:|---:|" * len(args.modes)
    lines = [head, sep]
    for t in args.time_steps:
        cells = " | ".join(f"{results[m][0][t - 1]:.2f}% | {results[m][1][t - 1]:,.0f}" for m in args.modes)
        lines.append(f"| {t} | {cells} |")
    body = f"""Exact command (the peer's own venv; the `command` line above names lowbit's `.venv`, which cannot import
spikingjelly): `{command}`

- peer: {tool} (`ann2snn.Converter(recipe=ann2snn.RateCodingRecipe(dataloader=..., mode=...))`), torch
  {torch.__version__}, {torch.get_num_threads()} thread (`OMP_NUM_THREADS=1`), 2-core shared machine
- ANN: lowbit zoo `{args.model}` ({meta.get("description", "?")}), loaded by {how}; weights sha256
  `{meta.get("sha256", "?")[:16]}...`, recorded test accuracy {100 * meta.get("test_accuracy", float("nan")):.2f}%;
  float accuracy measured here on the same {len(test)} test images: **{ann_acc:.2f}%**
- calibration: the first {len(calib)} images of `lowbit.data.fashion_mnist("train")` in batches of
  {args.calib_batch}; test: the first {len(test)} images of the test split
- evaluation: {steps} steps per batch of {args.test_batch}, `functional.reset_net` before each batch; accuracy at T
  is that of the output summed over the first T steps (one run gives every T); spikes/inference = output spikes of
  all IFNode layers over the first T steps, per image (the input is an analog current, not spikes)

What the converter does (spikingjelly {sj_version()} source, `activation_based/ann2snn/recipes/rate_coding.py`):
torch.fx trace; Conv-BN fused (`fuse_conv_bn_eval`); a `VoltageHook` after every `nn.ReLU` records, per
calibration batch, the maximum (`max`) or the 99.9th percentile (`99.9%`) of the ReLU output and keeps a running
average of it over batches (momentum 0.1), so the scale depends on the batch size; each ReLU becomes
`VoltageScaler(1/s) -> IFNode(v_threshold=1.0, v_reset=None) -> VoltageScaler(s)`: integrate-and-fire with reset by
subtraction, membrane starting at 0, one scale per layer. Convolutions, linear layers and pooling are kept; the image
is a constant input current every step; the last linear layer's outputs are summed over the steps.

{pool_note}

{chr(10).join(notes)}

{chr(10).join(lines)}
"""
    name = f"peer_spikingjelly_{args.model}"
    write_result(name, body)
    merge_rows("snn.json", rows, ("method", "dataset", "time_steps", "tool"))


if __name__ == "__main__":
    main()
