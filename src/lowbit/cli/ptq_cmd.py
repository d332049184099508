"""``lowbit ptq``: post-training quantization of a zoo model, with diagnostics."""

from __future__ import annotations

import argparse
import json
import time
import warnings

from lowbit.cli.args import at_most, data_dir, float_range, writable_file

ZOO_NAMES = ("mlp", "cnn", "resnet")
WEIGHT_FORMATS = ("int", "ternary", "pow2")


def add_weight_format_args(p: argparse.ArgumentParser, binary: bool = False) -> None:
    """``--weight-format`` and ``--ternary``, shared by every command that quantizes weights; with ``binary``
    (``lowbit qat``) also ``--weight-format binary``, ``--binary-scale`` and ``--act-format``."""
    formats = WEIGHT_FORMATS + (("binary",) if binary else ())
    p.add_argument("--weight-format", choices=formats, default="int",
                   help="weight codes: int (--weight-bits), ternary {-1,0,1}, or pow2 (power-of-two, "
                        "--weight-bits 2..4)" + (", or binary {-1,+1} (1 bit: --weight-bits does not apply; "
                                                 "per output channel, --granularity channel)" if binary else "")
                        + " (default int)")
    p.add_argument("--ternary", choices=("exact", "twn", "tnt"), default="exact",
                   help="ternary solver: exact optimal support, TWN's threshold 0.7 mean|W|, or TNT (exact support, "
                        "separate + and - scales, run as int8 codes) (default exact)")
    if binary:
        p.add_argument("--binary-scale", choices=("xnor", "sign"), default=None,
                       help="scale of binary weights: xnor (XNOR-Net, mean|w| per output channel) or sign "
                            "(BNN, +-1) (default xnor)")
        p.add_argument("--act-format", choices=("int", "binary"), default="int",
                       help="activation codes: int (--act-bits) or binary (sign(x), +-1: --act-bits does not "
                            "apply; needs a model whose hidden layers end in Hardtanh, e.g. binary-mlp or "
                            "binary-cnn) (default int)")


def weight_spec(args: argparse.Namespace, narrow: bool = True):
    """The weight QuantSpec the short flags name (``--weight-format``, ``--weight-bits``, ``--granularity``,
    ``--weight-observer``, ``--pow2``, ``--ternary``); out-of-range values raise ConfigError."""
    from lowbit.formats import Binary, IntFormat, PowerOfTwo, Ternary, check_bits
    from lowbit.granularity import PerChannel, PerTensor
    from lowbit.spec import QuantSpec, observer_named

    g = PerTensor() if getattr(args, "granularity", "channel") == "tensor" else PerChannel(0)
    fmt_name = getattr(args, "weight_format", "int")
    if fmt_name == "binary":
        return QuantSpec(Binary(), g, binary=getattr(args, "binary_scale", "xnor"))
    if fmt_name == "ternary":
        return QuantSpec(Ternary(), g, ternary=args.ternary)
    if fmt_name == "pow2":
        return QuantSpec(PowerOfTwo(check_bits(args.weight_bits, "weight_bits", low=2, high=4)), g)
    bits = check_bits(args.weight_bits, "weight_bits", low=2)
    return QuantSpec(IntFormat(bits, signed=True, narrow=narrow), g,
                     observer_named(getattr(args, "weight_observer", "minmax")),
                     pow2_scale=bool(getattr(args, "pow2", False)))


def act_spec(args: argparse.Namespace, percentile: float = 99.99):
    """The activation QuantSpec of ``--act-format``, ``--act-bits``, ``--observer`` and ``--pow2``."""
    from lowbit.formats import Binary, IntFormat, check_bits
    from lowbit.spec import QuantSpec, observer_named

    if getattr(args, "act_format", "int") == "binary":
        return QuantSpec(Binary())
    bits = check_bits(args.act_bits, "act_bits", low=2)
    return QuantSpec(IntFormat(bits, signed=False), observer=observer_named(getattr(args, "observer", "minmax"),
                                                                            percentile),
                     pow2_scale=bool(getattr(args, "pow2", False)))


def model_arg(text: str) -> str:
    """argparse type of ``--model``: a zoo name, ``FILE.py:FUNCTION``, a ``.pt2`` program or a Hugging Face
    model folder."""
    from lowbit.user_model import is_user_model

    if text in ZOO_NAMES or is_user_model(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a zoo model ({', '.join(ZOO_NAMES)}), a FILE.py:FUNCTION "
                                     "factory, a .pt2 program or a Hugging Face model folder (config.json)")


MODEL_FORMS = ("your own as FILE.py:FUNCTION (FUNCTION() returns the nn.Module; weights from --weights), a "
               "torch.export program saved as .pt2, or a Hugging Face model folder (save_pretrained: config.json "
               "and .safetensors)")


def add_user_data_args(p: argparse.ArgumentParser, test_help: str) -> None:
    """``--weights``, ``--calib-data`` and ``--test-data`` of the user's own model (ptq, export, bench, report)."""
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="state dict for FILE.py:FUNCTION models: .safetensors, .npz or .pt/.pth (read without "
                        "running pickled code)")
    p.add_argument("--calib-data", default=None, metavar="PATH",
                   help="your model's calibration samples: .npy, .npz with x [y, keyword inputs], a folder of them "
                        "or of images (class subfolders for labels), or FILE.py:FUNCTION returning a tensor, a "
                        "dict {x, [y], keyword inputs} or a list of them")
    p.add_argument("--test-data", default=None, metavar="PATH", help=test_help)


def user_options_given(args: argparse.Namespace) -> list[str]:
    """The user-model options (:func:`add_user_data_args`) given on the command line, as flags."""
    return [f"--{n.replace('_', '-')}" for n in ("weights", "calib_data", "test_data") if getattr(args, n, None)]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ptq", help="post-training quantization of a shipped model (accuracy, quant ops, diagnostics)",
        description="Quantize a shipped zoo model after training: fold BatchNorm, fuse into unified modules, "
                    "calibrate on N training images, and report test accuracy against float.")
    p.add_argument("--model", default="cnn", type=model_arg, metavar="MODEL",
                   help=f"a zoo model (mlp, cnn, resnet; default cnn), {MODEL_FORMS}; your own models need --calib-data")
    add_user_data_args(p, "samples to compare float and quantized outputs on (same forms; labels y give accuracy); "
                          "default: the calibration samples")
    p.add_argument("--weight-bits", type=int, default=8, help="weight bit width, 2..16 (default 8)")
    p.add_argument("--act-bits", type=int, default=8, help="activation bit width, 2..16 (default 8)")
    add_weight_format_args(p)
    p.add_argument("--calib", type=int, default=32,
                   help="number of calibration images, 1..55000 (default 32)")
    p.add_argument("--granularity", choices=("channel", "tensor"), default="channel", help="weight scales")
    p.add_argument("--observer", default="minmax", metavar="NAME",
                   help="activation range rule: a name of lowbit.spec.OBSERVER_NAMES (minmax, moving_average, "
                        "percentile, mse, channel = method A channel statistics; default minmax)")
    p.add_argument("--weight-observer", choices=("minmax", "mse"), default="minmax", help="integer weight range rule")
    p.add_argument("--rounding", choices=("nearest", "gptq"), default="nearest",
                   help="weight rounding: nearest, or GPTQ error compensation on calibration data (Frantar et al. 2023)")
    p.add_argument("--equalize", nargs="?", type=float_range(0.0, 1.0), const=0.5, default=None, metavar="ALPHA",
                   help="channel equalization of activations before calibration (method A; ALPHA in [0, 1] "
                        "for dense consumers, default 0.5; depthwise consumers always take 1)")
    p.add_argument("--pow2", action="store_true", help="power-of-two scales: requantization by shift (method H)")
    p.add_argument("--first-last-bits", type=int, default=8,
                   help="bits of the first and last layer, 2..16 (0 = the same as the others)")
    p.add_argument("--keep-float", nargs="*", default=[], metavar="PATTERN", help="layer name patterns left in float")
    p.add_argument("--auto-mixed", type=float_range(0.0), default=None, metavar="BUDGET",
                   help="automatic mixed precision (lowbit.mixed.auto_mixed): keep the layers whose quantization costs "
                        "the most output fidelity at 16-bit activations while the extra bit-operations stay within "
                        "BUDGET (a fraction of the model's, e.g. 0.3); prints the per-layer table")
    p.add_argument("--integer-only", action="store_true",
                   help="with --auto-mixed: only promotions lowbit's integer model runs (a recurrent layer's 16-bit "
                        "input), so that the result still lowers to integers (lowbit export)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic mode (lowbit.dynamic): int8 weights per channel and activations quantized per row at "
                        "run time for nn.Linear/LSTM/GRU/LSTMCell/GRUCell, instead of static W8A8 (--weight-bits and --act-bits do "
                        "not apply)")
    p.add_argument("--diagnostics", action="store_true", help="per-layer SQNR, cosine and sensitivity table")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lowbit import diagnostics, zoo
    from lowbit.cost.profile import profile
    from lowbit.data import fashion_mnist
    from lowbit.prepared import record_of
    from lowbit.errors import ConfigError
    from lowbit.ptq import LayerRule, PTQConfig
    from lowbit.utils.files import atomic_write_text
    from lowbit.zoo.recipes import evaluate

    if args.calib < 1:
        raise ConfigError(f"--calib must be at least 1 image, got {args.calib}")
    data_dir(args.data_dir)
    if args.json:
        writable_file(args.json, "--json")
    config = PTQConfig(
        weight_spec(args), act_spec(args), rounding=args.rounding, equalize=args.equalize is not None,
        equalize_alpha=0.5 if args.equalize is None else args.equalize,
        first_last_bits=args.first_last_bits or None,
        rules=tuple(LayerRule(p, keep_float=True) for p in args.keep_float),
    )
    if args.model not in ZOO_NAMES:
        return run_user_model(args, config)
    if user_options_given(args):
        raise ConfigError(f"--weights, --calib-data and --test-data are for your own models; the zoo model "
                          f"{args.model} ships its weights and calibrates on Fashion-MNIST (--calib)")
    test = fashion_mnist("test", root=args.data_dir)
    train = fashion_mnist("train", root=args.data_dir)
    at_most(args.calib, len(train), "--calib", "the Fashion-MNIST train split")
    calib = train.take(args.calib)
    model = zoo.pretrained(args.model)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q, mixed = _quantize(model, [calib.x], config, args.auto_mixed, args.dynamic, args.integer_only)
    seconds = time.perf_counter() - start
    for w in caught:
        print(f"warning: {w.message}")
    if mixed is not None:
        print(mixed.render())
    f_acc, q_acc = evaluate(model, test), evaluate(q, test)
    record = record_of(q)
    ops = record.quant_ops if record is not None else None
    if args.dynamic:
        print(f"{args.model}: dynamic mode (int8 weights per channel, int8 activations per row at run time)")
    else:
        print(f"{args.model}: W {config.weight.label()} A{args.act_bits} {args.granularity}, {args.calib} calibration "
              f"images, {'pow2' if args.pow2 else 'float'} scales")
    print(f"  float     {100 * f_acc:.2f}%")
    print(f"  quantized {100 * q_acc:.2f}%  ({100 * (q_acc - f_acc):+.2f} points)")
    print(f"  prepare+calibrate+convert {seconds:.2f} s")
    if ops:
        (u_ops, u_el), (f_ops, f_el) = ops.unfused, ops.fused
        print(f"  quantization ops per inference: {u_ops} -> {f_ops} after fusion "
              f"({u_el:,} -> {f_el:,} elements per sample)")
    share = _print_coverage(profile(q, (calib.x[:1],)))
    rows = []
    if args.diagnostics:
        rows = diagnostics.layer_diagnostics(q, calib.x, lambda m: evaluate(m, test))
        print()
        print(diagnostics.render(rows, f_acc))
    if args.json:
        result = {"model": args.model, "config": repr(config), "float_accuracy": f_acc, "accuracy": q_acc,
                  "seconds": seconds, "quantized_mac_share": share, "layers": diagnostics.to_dicts(rows),
                  "quant_ops": None if ops is None else {"unfused": list(ops.unfused), "fused": list(ops.fused)}}
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def _print_coverage(layers) -> float:
    """Print the share of MACs quantized (and the warning below 90%) of a profile; return the share."""
    from lowbit.cost.profile import coverage_warning, quantized_share

    share = quantized_share(layers)
    print(f"  {100 * share:.1f}% of MACs quantized")
    if (low := coverage_warning(layers)) is not None:
        print(f"warning: {low}")
    return share


def _print_lowering(q, x) -> bool:
    """Whether the simulation ``q`` lowers to an integer model (``lowbit export`` writes it), printed with the
    reason when it does not, or with its agreement with the simulation on ``x`` when it does."""
    import torch

    from lowbit.errors import LowbitError
    from lowbit.integer import to_integer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = to_integer(q, (x[:1],))
    except LowbitError as exc:
        print(f"  integer model: not available ({str(exc).splitlines()[0][:300]})")
        return False
    with torch.no_grad():
        same = all(torch.equal(im(x[i:i + 256]), q(x[i:i + 256])) for i in range(0, len(x), 256))
    print(f"  integer model: lowers ({len(im.nodes)} ops; equal to the simulation on all {len(x)} samples: {same}); "
          "lowbit export writes it")
    return True


def _quantize(model, batches, config, budget: float | None, dynamic: bool = False, integer: bool = False):
    """``lowbit.ptq.quantize``, with a ``budget`` :func:`lowbit.mixed.auto_mixed` (``integer``: only what the
    integer model runs), with ``dynamic`` :func:`lowbit.dynamic.quantize_dynamic`: ``(model, MixedResult | None)``."""
    from lowbit.errors import ConfigError
    from lowbit.ptq import quantize

    if integer and budget is None:
        raise ConfigError("--integer-only chooses among --auto-mixed's promotions: give --auto-mixed BUDGET too")
    if dynamic:
        if budget is not None:
            raise ConfigError("--dynamic and --auto-mixed exclude each other: the dynamic mode has no static grids "
                              "to widen")
        from lowbit.dynamic import quantize_dynamic

        return quantize_dynamic(model), None
    if budget is None:
        return quantize(model, batches, config), None
    from lowbit.mixed import auto_mixed

    res = auto_mixed(model, batches, config, budget=budget, integer=integer)
    return res.model, res


def run_user_model(args: argparse.Namespace, config) -> int:
    """``lowbit ptq`` on the user's model: quantize on ``--calib-data``, compare with float on ``--test-data``."""
    from lowbit.cost.profile import profile
    from lowbit.errors import ConfigError
    from lowbit.user_model import fidelity, first_input, load_model, load_samples
    from lowbit.utils.files import atomic_write_text

    if args.calib_data is None:
        raise ConfigError(f"--model {args.model} needs --calib-data: a .npy/.npz of representative input samples")
    model = load_model(args.model, args.weights)
    calib = load_samples(args.calib_data, "--calib-data")
    test = load_samples(args.test_data, "--test-data") if args.test_data else calib
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q, mixed = _quantize(model, calib.batches(64, args.calib, first_input(model)), config, args.auto_mixed,
                             args.dynamic, args.integer_only)
    seconds = time.perf_counter() - start
    for w in caught:
        print(f"warning: {w.message}")
    if mixed is not None:
        print(mixed.render())
    fid = fidelity(model, q, test)
    mode = "dynamic mode" if args.dynamic else f"W {config.weight.label()} A{args.act_bits}"
    print(f"{args.model}: {mode}, {min(args.calib, len(calib))} calibration samples")
    print(f"  output cosine mean {fid.cosine_mean:.4f}, min {fid.cosine_min:.4f}; SQNR {fid.sqnr_db:.1f} dB; "
          f"decisions agree {100 * fid.agreement:.2f}% ({len(test)} samples)")
    if fid.accuracy is not None:
        print(f"  accuracy float {100 * fid.float_accuracy:.2f}%, quantized {100 * fid.accuracy:.2f}%")
    print(f"  prepare+calibrate+convert {seconds:.2f} s")
    share = _print_coverage(profile(q, (test.x[:1],), example_kwargs={k: v[:1] for k, v in test.extra.items()}))
    lowers = None if args.dynamic or test.extra else _print_lowering(q, test.x)
    if args.json:
        result = {"model": args.model, "config": repr(config), "seconds": seconds, "quantized_mac_share": share,
                  "to_integer": lowers, **{k: getattr(fid, k) for k in fid.__dataclass_fields__}}
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
