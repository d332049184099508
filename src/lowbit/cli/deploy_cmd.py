"""``lowbit export`` and ``lowbit bench``: the integer model on disk, and how fast it runs."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lowbit.cli.args import at_most, data_dir, int_range, writable_dir
from lowbit.cli.ptq_cmd import (MODEL_FORMS, act_spec, add_user_data_args, add_weight_format_args, model_arg,
                                user_options_given, weight_spec)

ZOO_NAMES = ("mlp", "cnn", "resnet")


def _ptq_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="cnn", type=model_arg, metavar="MODEL",
                   help=f"a zoo model (mlp, cnn, resnet; default cnn), {MODEL_FORMS}; your own models need --calib-data")
    add_user_data_args(p, "your model's samples to check and time on (default: the calibration samples)")
    p.add_argument("--weight-bits", type=int, default=8, help="weight bits, 2..8 (<= 4 is saved packed; default 8)")
    p.add_argument("--act-bits", type=int, default=8, help="activation bits, 2..8 (default 8)")
    p.add_argument("--pow2", action="store_true", help="power-of-two scales: requantization by shift only")
    add_weight_format_args(p)
    p.add_argument("--calib", type=int, default=32, help="calibration images (samples of your model), at least 1 "
                                                          "(default 32)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")


def _residual_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--residual", choices=["exact", "requantize"], default="exact",
                   help="ONNX layers with a residual add: 'exact' rounds once, bit-exact with the integer model "
                        "(slower in onnxruntime); 'requantize' rounds twice (QLinearConv + QLinearAdd, as "
                        "onnxruntime's own quantize_static; codes may differ by one). Default exact")


def add_parsers(sub) -> None:
    e = sub.add_parser("export", help="quantize a model and save its integer form (safetensors, ONNX)",
                       description="Post-training quantize a shipped model or your own, lower it to integer-only "
                                   "ops, check that the integer model equals the simulation on the test samples, and "
                                   "save it as safetensors (+ JSON metadata) and optionally as a QDQ ONNX model.")
    _ptq_args(e)
    e.add_argument("--out", default="export", help="output folder (default ./export)")
    e.add_argument("--onnx", action="store_true", help="also write MODEL.onnx (QDQ, needs the onnx package)")
    e.add_argument("--opset", type=int_range(1), default=None,
                   help="ONNX opset with --onnx, 13 .. the installed onnx package's newest (default 17)")
    _residual_arg(e)
    e.add_argument("--exact-layers", action="store_true",
                   help="with --onnx: plain convs and linears as ConvInteger / MatMulInteger with the integer "
                        "requantization, bit for bit the integer model (onnxruntime's QLinearConv rounds in float32: "
                        "about one code in a million apart on large layers); slower in onnxruntime")
    e.set_defaults(func=run_export)
    b = sub.add_parser("bench", help="latency: float PyTorch vs lowbit integer vs its ONNX in onnxruntime",
                       description="Measure latency with the paths interleaved in one run (best and median of "
                                   "--rounds). The integer model is quantized on the fly, or loaded with --load.")
    _ptq_args(b)
    b.add_argument("--load", default=None, metavar="PATH", help="a saved integer model (.safetensors)")
    b.add_argument("--batch", type=int_range(1), nargs="+", default=[1, 64],
                   help="batch sizes, 1..10000 (the test set; default 1 64)")
    b.add_argument("--threads", type=int_range(1, 1024), nargs="+", default=[1], help="thread counts (default 1)")
    b.add_argument("--rounds", type=int_range(1), default=20, help="timed rounds per path (default 20)")
    b.add_argument("--onnx", action="store_true", help="also time lowbit's ONNX export in onnxruntime")
    _residual_arg(b)
    b.set_defaults(func=run_bench)


def _check(args) -> None:
    """Every argument checked before any work: numbers in range, paths usable."""
    from lowbit.errors import ConfigError

    if args.calib < 1:
        raise ConfigError(f"--calib must be at least 1 image, got {args.calib}")
    given = user_options_given(args)
    if args.model in ZOO_NAMES and given:
        raise ConfigError(f"{', '.join(given)} belong to your own model (--model FILE.py:FUNCTION or a .pt2); the zoo "
                          f"model {args.model!r} has its weights and uses Fashion-MNIST: drop them")
    data_dir(args.data_dir)
    if getattr(args, "opset", None) is not None:
        if not args.onnx:
            raise ConfigError("--opset sets the ONNX opset of --onnx: add --onnx, or drop --opset")
        _check_opset(args.opset)
    if getattr(args, "residual", "exact") != "exact" and not args.onnx:
        raise ConfigError("--residual chooses how --onnx writes residual adds: add --onnx, or drop --residual")
    if getattr(args, "out", None) is not None:
        writable_dir(args.out, "--out")
    for name in ("weight_bits", "act_bits"):
        if not 2 <= getattr(args, name) <= 8:
            raise ConfigError(f"--{name.replace('_', '-')} must be 2..8 for the int8 integer model, "
                              f"got {getattr(args, name)}")


def _check_opset(opset: int) -> None:
    from lowbit.errors import ConfigError
    from lowbit.export.onnx_qdq import MIN_OPSET

    try:
        import onnx
    except ImportError:
        raise ConfigError("--onnx needs the onnx package: pip install onnx") from None
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset must be {MIN_OPSET}..{newest} (per-channel QuantizeLinear needs {MIN_OPSET}; "
                          f"the installed onnx {onnx.__version__} knows up to {newest}), got {opset}")


def _build(args):
    """``(float model, simulation, integer model, test inputs, name)`` of a zoo model on Fashion-MNIST or of the
    user's model on its own samples."""
    from lowbit.integer import to_integer
    from lowbit.ptq import PTQConfig, quantize

    _check(args)
    config = PTQConfig(weight_spec(args), act_spec(args))
    if args.model not in ZOO_NAMES:
        model, calib, test, name = _user_model(args)
        sim = quantize(model, calib, config)
        return model, sim, to_integer(sim, (test[:1],)), test, name
    from lowbit import zoo
    from lowbit.data import fashion_mnist

    train = fashion_mnist("train", root=args.data_dir)
    at_most(args.calib, len(train), "--calib", "the Fashion-MNIST train split")
    calib = train.take(args.calib)
    model = zoo.pretrained(args.model)
    sim = quantize(model, [calib.x], config)
    return model, sim, to_integer(sim, (calib.x[:2],)), fashion_mnist("test", root=args.data_dir).x, args.model


def _user_model(args):
    """The user's model, its calibration batches and test inputs (one input tensor: an integer model takes one),
    and a file name for it."""
    from lowbit.errors import ConfigError
    from lowbit.user_model import load_model, load_samples, model_name

    if args.calib_data is None:
        raise ConfigError(f"--model {args.model} needs --calib-data: a .npy/.npz of representative input samples")
    model = load_model(args.model, args.weights)
    calib = load_samples(args.calib_data, "--calib-data")
    test = load_samples(args.test_data, "--test-data") if args.test_data else calib
    if calib.extra or test.extra:
        raise ConfigError("the integer model takes one input tensor; these samples hold keyword inputs "
                          f"({', '.join(sorted(calib.extra or test.extra))}): lowbit ptq quantizes such models "
                          "(as a simulation), lowbit export cannot lower them yet")
    name = model_name(args.model)
    return model.eval(), calib.batches(64, args.calib), test.x, name


def run_export(args: argparse.Namespace) -> int:
    import torch

    from lowbit.errors import ConfigError
    from lowbit.integer.io import save_integer

    if args.exact_layers and not args.onnx:
        raise ConfigError("--exact-layers chooses the ONNX form of the layers: add --onnx (or drop --exact-layers)")
    model, sim, im, x_test, name = _build(args)
    with torch.no_grad():
        same = all(torch.equal(sim(x_test[i:i + 2000]), im(x_test[i:i + 2000])) for i in range(0, len(x_test), 2000))
    out = Path(args.out)
    path = save_integer(im, out / f"{name}.safetensors")
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(f"{name}: W {weight_spec(args).label()} A{args.act_bits}{' pow2' if args.pow2 else ''}")
    if args.model in ZOO_NAMES:
        from lowbit.data import fashion_mnist
        from lowbit.zoo.recipes import evaluate

        test = fashion_mnist("test", root=args.data_dir)
        print(f"  float accuracy    {100 * evaluate(model, test):.2f}%")
        print(f"  integer accuracy  {100 * evaluate(im, test):.2f}%  (equal to the simulation on all {len(x_test)}: "
              f"{same})")
    else:
        with torch.no_grad():
            ref, got = model(x_test).flatten(1), im(x_test).flatten(1)
        cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
        print(f"  integer model vs float: output cosine mean {float(cos.mean()):.4f}, min {float(cos.min()):.4f} "
              f"({len(x_test)} samples; equal to the simulation on all: {same})")
    print(f"  wrote {path}: {path.stat().st_size:,} bytes = {path.stat().st_size / float_bytes:.3f}x "
          f"the float weights ({float_bytes:,} bytes)")
    if args.onnx:
        from lowbit.export.onnx_qdq import Residual, export_onnx

        onnx_path = export_onnx(im, out / f"{name}.onnx", (1, *x_test.shape[1:]), opset=args.opset or 17,
                                residual=Residual(args.residual), exact_layers=args.exact_layers)
        print(f"  wrote {onnx_path}: {onnx_path.stat().st_size:,} bytes")
    return 0 if same else 1


def _load_checked(path: str, x, baseline, baseline_name: str):
    """``bench --load``: the saved integer model, validated completely by ``load_integer`` (checksum, every
    attribute against its tensors and neighbours), and refused (ShapeError) unless it takes the Fashion-MNIST
    images bench feeds it and gives the output shape of the zoo float model it is compared with."""
    import torch

    from lowbit.errors import ShapeError
    from lowbit.integer.io import load_integer

    im = load_integer(path)
    source = "Fashion-MNIST images" if baseline_name in ZOO_NAMES else "the test samples"
    what = f"bench feeds {source} of shape (N, {', '.join(map(str, x.shape[1:]))}) {x.dtype}"
    if im.input_shape is not None and (im.input_shape != tuple(x.shape[1:]) or im.input_dtype != x.dtype):
        raise ShapeError(f"--load {path}: the model takes inputs of shape (N, {', '.join(map(str, im.input_shape))}) "
                         f"{im.input_dtype}, but {what}; bench a model built for those inputs")
    try:
        im.check_input(x[:1])  # a file without a recorded input shape: the images through every node
        with torch.no_grad():
            got, want = tuple(im(x[:1]).shape), tuple(baseline(x[:1]).shape)
    except ShapeError as exc:
        raise ShapeError(f"--load {path}: {what}, which the model does not take: {exc}") from None
    if got != want:
        raise ShapeError(f"--load {path}: the model's output has shape {got}, the zoo {baseline_name!r} float "
                         f"model's {want}: bench compares the two; pick the matching --model")
    _same_layers(path, im, baseline, baseline_name)
    return im


def _same_layers(path: str, im, baseline, baseline_name: str) -> None:
    """Refuse (ConfigError) a loaded model whose conv/linear weight shapes are not the zoo model's: bench would
    print the speed-up of one network over another."""
    from torch import nn

    from lowbit.errors import ConfigError

    loaded = sorted(tuple(n.op.tensors["weight"].shape) for n in im.nodes if "weight" in n.op.tensors)
    zoo = sorted(tuple(m.weight.shape) for m in baseline.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    def show(shapes: list[tuple[int, ...]]) -> str:
        return ", ".join("x".join(map(str, s)) for s in shapes[:6]) + (", ..." if len(shapes) > 6 else "")

    if loaded != zoo:
        raise ConfigError(f"--load {path} is not a quantized {baseline_name!r}: its {len(loaded)} layers have weights "
                          f"{show(loaded)}, the zoo {baseline_name!r} model's {len(zoo)} have {show(zoo)}; bench "
                          "compares the loaded model with the float model of --model: pass the --model it was made from")


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from lowbit.bench.latency import interleaved, ort_session, torch_threads
    from lowbit.data import fashion_mnist

    _check(args)  # before loading anything (the --load file itself is checked by load_integer)
    if args.model in ZOO_NAMES:
        x_all = fashion_mnist("test", root=args.data_dir).x
        for batch in args.batch:
            at_most(batch, len(x_all), "--batch", "the Fashion-MNIST test set")
    model, _, im, x_all, _ = _build(args)
    if args.model not in ZOO_NAMES:
        for batch in args.batch:
            at_most(batch, len(x_all), "--batch", "the test samples")
    if args.load:
        im = _load_checked(args.load, x_all, model, args.model)
    onnx_path = None
    if args.onnx:
        from lowbit.export.onnx_qdq import Residual, export_onnx

        onnx_path = export_onnx(im, Path(tempfile.mkdtemp()) / "model.onnx", (1, *x_all.shape[1:]),
                                residual=Residual(args.residual))
    print(f"{args.model}: latency in microseconds, best / median of {args.rounds} interleaved rounds")
    print(f"{'batch':>5} {'threads':>7} {'path':<22} {'best':>10} {'median':>10} {'speed-up':>9}")
    for threads in args.threads:
        sess = ort_session(onnx_path, threads) if onnx_path else None
        for batch in args.batch:
            x = x_all[:batch]
            paths = {"float32 eager": lambda: model(x), "lowbit integer": lambda: im(x)}
            if sess is not None:
                feed = {sess.get_inputs()[0].name: x.numpy()}
                paths["lowbit ONNX (ort)"] = lambda: sess.run(None, feed)
            with torch_threads(threads), torch.no_grad():
                t = interleaved(paths, args.rounds)
            base = t["float32 eager"].best_us
            for name, timing in t.items():
                print(f"{batch:>5} {threads:>7} {name:<22} {timing.best_us:>10.0f} {timing.median_us:>10.0f} "
                      f"{base / timing.best_us:>8.2f}x")
    return 0
