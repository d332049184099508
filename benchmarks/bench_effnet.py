"""EfficientNet-Lite0 (ImageNet) PTQ: agreement with the float model, lowbit vs peers.

No ImageNet data ships here, so the measure is agreement with the float model on
random crops of the scikit-image photos (``lowbit.data.photos``): calibration on
``--calib`` crops of the "calib" stream, evaluation on ``--eval`` other crops.
Metrics: top-1 agreement, top-5 overlap (mean |top5 n top5_float| / 5), mean
KL(float || quantized) of the softmax, and the logits' SQNR. Also the wall time
of prepare+calibrate+convert (lowbit includes bias correction).

A second table (``--no-floor`` skips it) measures the same metrics for the float
model against itself under changes that are not quantization of the model: the
crop stored as an 8-bit image, +-half an 8-bit level of noise on each input
pixel, bfloat16 inference, float16-rounded weights, a left-right flip. They show
how far near-tied crops limit top-1 agreement on these photos.

    python benchmarks/bench_effnet.py                    # lowbit + torchao + onnxruntime
    python benchmarks/bench_effnet.py --no-peers --eval 256
    python benchmarks/bench_effnet.py --min-scale 0.5 --name ptq_efficientnet_large_crops
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import write_result
from lowbit.data.photos import CropConfig, photo_crops
from lowbit.diagnostics import sqnr_db
from lowbit.formats import IntFormat
from lowbit.granularity import PerTensor
from lowbit.ptq import LayerRule, PTQConfig, int_weight, quantize, uint_act
from lowbit.spec import MSE, QuantSpec
from lowbit.zoo.efficientnet import efficientnet_lite0, with_plain_convs
MSE_ACT8 = QuantSpec(IntFormat(8, signed=False), observer=MSE())  # uint8 activations, least-error ranges


def logits_of(fn, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def metrics(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    top1 = float((ref.argmax(1) == out.argmax(1)).float().mean())
    r5, o5 = ref.topk(5, 1).indices, out.topk(5, 1).indices
    overlap = float((r5[:, :, None] == o5[:, None, :]).any(2).float().mean())
    p, q = ref.log_softmax(1), out.log_softmax(1)
    kl = float((p.exp() * (p - q)).sum(1).mean())
    confident = ref.softmax(1).amax(1) > 0.5
    top1_conf = float((ref.argmax(1) == out.argmax(1))[confident].float().mean()) if confident.any() else float("nan")
    return {"top1": top1, "top5": overlap, "kl": kl, "sqnr": sqnr_db(ref, out), "top1_conf": top1_conf,
            "n_conf": int(confident.sum())}


def as_8bit_image(x: torch.Tensor) -> torch.Tensor:
    """The crop as an 8-bit image would hold it: each value rounded to one of the 256 pixel levels."""
    return ((x + 1) * 127.5).round().div(127.5).sub(1)


def floor_rows(model: torch.nn.Module, evals: torch.Tensor, ref: torch.Tensor) -> list[tuple[str, None, dict]]:
    """The float model against itself under changes that are not quantization of the model."""
    half_level = (torch.rand(evals.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) / 255
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    fp16_weights = copy.deepcopy(model).half().float()
    cases = [
        ("crop stored as an 8-bit image (each value rounded to a pixel level)", lambda: logits_of(model, as_8bit_image(evals))),
        ("uniform noise of +-half a pixel level on each input value", lambda: logits_of(model, evals + half_level)),
        ("bfloat16 inference (weights and activations)", lambda: logits_of(lambda x: bf16(x.bfloat16()).float(), evals)),
        ("weights rounded to float16, float32 inference", lambda: logits_of(fp16_weights, evals)),
        ("left-right flip of the crop", lambda: logits_of(model, evals.flip(3))),
    ]
    return [(label, None, metrics(ref, run())) for label, run in cases]


def table(rows: list[tuple], first: str) -> list[str]:
    """Markdown rows of ``(label, seconds or None, metrics)``; the time column only where rows are timed."""
    timed = any(seconds is not None for _, seconds, _ in rows)
    head = f"| {first} |" + (" prepare+calibrate+convert s |" if timed else "")
    lines = [head + " top-1 agreement % | top-1 agreement, float p>0.5 % | top-5 overlap % | mean KL | logits SQNR dB |",
             "|---|" + ("---:|" if timed else "") + "---:|---:|---:|---:|---:|"]
    for label, seconds, m in rows:
        time_cell = f" {seconds:.1f} |" if timed else ""
        lines.append(f"| {label} |{time_cell} {100 * m['top1']:.1f} | {100 * m['top1_conf']:.1f} | "
                     f"{100 * m['top5']:.1f} | {m['kl']:.4f} | {m['sqnr']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--eval", type=int, default=512)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--min-scale", type=float, default=0.1,
                        help="smallest crop side as a fraction of the photo's shorter side (default 0.1)")
    parser.add_argument("--no-floor", action="store_true", help="skip the float model's own agreement floor")
    parser.add_argument("--name", default="ptq_efficientnet", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    model = with_plain_convs(efficientnet_lite0()).eval()  # stock nn.Conv2d, so every tool sees the same graph
    crops = CropConfig(min_scale=args.min_scale)
    calib = photo_crops(args.calib, "calib", crops=crops)
    evals = photo_crops(args.eval, "eval", crops=crops)
    calib_batches = [calib[i:i + 32] for i in range(0, len(calib), 32)]
    example = (calib[:2],)  # batch 2: torch.export (torchao) specialises a batch of 1
    ref = logits_of(model, evals)
    confidence = ref.softmax(1).amax(1)
    rows = []
    runs = [
        ("lowbit W8A8 per-channel, GPTQ rounding", lambda: quantize(model, calib_batches, PTQConfig(rounding="gptq"), example)),
        ("lowbit W8A8 per-channel, GPTQ, MSE activation ranges",
         lambda: quantize(model, calib_batches, PTQConfig(act=MSE_ACT8, rounding="gptq"), example)),
        ("lowbit W8A8 per-channel, GPTQ, channel equalization",
         lambda: quantize(model, calib_batches, PTQConfig(rounding="gptq", equalize=True), example)),
        ("lowbit W8A8 per-channel", lambda: quantize(model, calib_batches, PTQConfig(), example)),
        ("lowbit W8A8 per-channel, channel equalization",
         lambda: quantize(model, calib_batches, PTQConfig(equalize=True), example)),
        ("lowbit W8A8 per-channel, no bias correction",
         lambda: quantize(model, calib_batches, PTQConfig(bias_correction=False), example)),
        ("lowbit W8A8 per-tensor weights", lambda: quantize(model, calib_batches, PTQConfig(QuantSpec(IntFormat(8, narrow=True), PerTensor())), example)),
        ("lowbit W8A8 per-channel, GPTQ, MSE activation ranges, model input at 16 bits (the input crop not rounded to 8 bits)",
         lambda: quantize(model, calib_batches, PTQConfig(act=MSE_ACT8, rounding="gptq", first_last_bits=16,
                                                          rules=(LayerRule("_conv_stem*", weight=int_weight(8)),
                                                                 LayerRule("_fc*", int_weight(8), MSE_ACT8))), example)),
        ("lowbit W8A16 per-channel, GPTQ, input and classifier at 16 bits (only the 8-bit weights' error left)",
         lambda: quantize(model, calib_batches, PTQConfig(act=uint_act(16), first_last_bits=16, rounding="gptq",
                                                          rules=(LayerRule("_conv_stem*", weight=int_weight(8)),
                                                                 LayerRule("_fc*", weight=int_weight(8)))), example)),
    ]
    for label, make in runs:
        t = time.perf_counter()
        q = make()
        seconds = time.perf_counter() - t
        rows.append((label, seconds, metrics(ref, logits_of(q, evals))))
        print(rows[-1], flush=True)
    if not args.no_peers:
        from peers import ort_quantize_static, torchao_pt2e

        for label, fn in (("torchao PT2E X86Inductor W8A8", lambda: torchao_pt2e(model, example, calib_batches)),
                          ("onnxruntime quantize_static QDQ W8A8 per-channel",
                           lambda: ort_quantize_static(model, example, calib_batches, per_channel=True)),
                          ("onnxruntime quantize_static QDQ W8A8 per-tensor",
                           lambda: ort_quantize_static(model, example, calib_batches, per_channel=False))):
            q, seconds = fn()
            rows.append((label, seconds, metrics(ref, logits_of(q, evals))))
            print(rows[-1], flush=True)
    lines = [f"{args.eval} evaluation crops, {args.calib} calibration crops, crop side {args.min_scale:.0%}..100% of "
             f"the photo's shorter side; float top-1 confidence: median "
             f"{float(confidence.median()):.2f}, {int((confidence > 0.5).sum())} crops above 0.5.", ""]
    lines += table(rows, "method")
    if not args.no_floor:
        floor = floor_rows(model, evals, ref)
        for row in floor:
            print(row, flush=True)
        lines += ["", "The float model against itself (no quantized model involved):", ""]
        lines += table(floor, "change to the float model or its input")
    write_result(args.name, "\n".join(lines))


if __name__ == "__main__":
    main()
