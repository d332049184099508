"""Training in low precision (issue "Training in low precision"): fixed-point storage whose fractional length
leaves the word, zero or negative bits, parameters the optimizer cannot hold, NaN gradients, stochastic rounding
without a generator, LNS formats and tables out of range (a table of 0 entries), bit slices that do not divide
the word, bad last-FC bound arguments, a corrupt shipped low-precision model, and the ``lowbit lowprec`` /
``lowbit qat --grad-bits`` flags; legitimate runs checked against a reference."""

from __future__ import annotations

import shutil

import torch
from torch import nn

from bad_inputs_cases import Wrong, add, case, cli, workdir

CAT = "lowprec"


def _param(*values: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float32))


# ---------------------------------------------------------------- storage formats and optimizers

for _bits, _frac in ((8, 9), (8, 8), (0, 0), (-4, 0), (33, 4), (8, -1)):
    add(CAT, f"fixed_point_{_bits}_{_frac}", "error", lambda b=_bits, f=_frac: __import__(
        "lowbit.optim", fromlist=["FixedPoint"]).FixedPoint(b, f))

for _name in ("fixed8.9", "int8", "fixed", "fp8", ""):
    add(CAT, f"storage_name_{_name or 'empty'}", "error",
        lambda n=_name: __import__("lowbit.optim", fromlist=["as_storage"]).as_storage(n))


@case(CAT, "error")
def kahan_on_unrepresentable_parameter():
    from lowbit.optim import FixedPoint, KahanSGD
    return KahanSGD([_param(0.3)], lr=0.1, storage=FixedPoint(8, 2))  # 0.3 is no multiple of 1/4


@case(CAT, "error")
def kahan_on_bfloat16_parameter():
    from lowbit.optim import KahanSGD
    return KahanSGD([nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lr=0.1, storage="bf16")


@case(CAT, "error")
def kahan_nan_gradient():
    from lowbit.optim import FixedPoint, KahanSGD
    p = _param(0.25, 0.5)
    opt = KahanSGD([p], lr=0.1, storage=FixedPoint(8, 4))
    p.grad = torch.tensor([float("nan"), 0.0])
    opt.step()
    return p


@case(CAT, "error")
def kahan_negative_lr():
    from lowbit.optim import KahanSGD
    return KahanSGD([_param(0.5)], lr=-0.1, storage="bf16")


@case(CAT, "error")
def kahan_momentum_one():
    from lowbit.optim import KahanSGD
    return KahanSGD([_param(0.5)], lr=0.1, momentum=1.0, storage="bf16")


@case(CAT, "error")
def stochastic_rounding_without_generator():
    from lowbit.optim import LowPrecisionSGD
    return LowPrecisionSGD([_param(0.5)], lr=0.1, storage="bf16", rounding="stochastic")


@case(CAT, "error")
def unknown_rounding():
    from lowbit.optim import LowPrecisionSGD
    return LowPrecisionSGD([_param(0.5)], lr=0.1, storage="bf16", rounding="up")


@case(CAT, "valid")
def kahan_accumulates_sub_lsb_updates():
    """100 updates of a quarter LSB: plain rounding keeps the start, Kahan moves by 25 LSBs (exact sum)."""
    from lowbit.optim import FixedPoint, KahanSGD, LowPrecisionSGD
    fmt = FixedPoint(8, 4)
    out = []
    for cls in (KahanSGD, LowPrecisionSGD):
        p = _param(0.0)
        opt = cls([p], lr=1.0, storage=fmt)
        for _ in range(100):
            p.grad = torch.tensor([-fmt.lsb / 4])
            opt.step()
        out.append(float(p))
    if out != [25 * fmt.lsb, 0.0]:
        raise Wrong(f"Kahan {out[0]}, plain {out[1]}: expected {25 * fmt.lsb} and 0")
    return f"Kahan {out[0]:g} (25 LSB), plain nearest {out[1]:g}"


# ---------------------------------------------------------------- last-FC bound

for _n, _p in ((1, 0.99), (0, 0.99), (10, 1.0), (10, 0.05), (10, float("nan"))):
    add(CAT, f"last_fc_bound_{_n}_{_p}", "error",
        lambda n=_n, p=_p: __import__("lowbit.optim", fromlist=["min_bits_last_fc"]).min_bits_last_fc(n, p))


@case(CAT, "error")
def fixed_point_logits_with_a_name():
    from lowbit.optim import fixed_point_logits
    return fixed_point_logits(torch.zeros(2, 10), "fixed8.4")


# ---------------------------------------------------------------- LNS


for _bits, _frac in ((16, 15), (3, 0), (16, -1), (40, 8)):
    add(CAT, f"lns_format_{_bits}_{_frac}", "error",
        lambda b=_bits, f=_frac: __import__("lowbit.functional.lns", fromlist=["LNSFormat"]).LNSFormat(b, f))

for _n in (0, -3, 21):
    add(CAT, f"lns_lut_{_n}_entries", "error",
        lambda n=_n: __import__("lowbit.functional.lns", fromlist=["LUT"]).LUT(n))


@case(CAT, "error")
def lns_encode_nan():
    from lowbit.functional.lns import LNSFormat, encode
    return encode(torch.tensor([1.0, float("nan")]), LNSFormat(16, 10))


@case(CAT, "error")
def lns_linear_shape_mismatch():
    from lowbit.functional.lns import LUT, LNSFormat, encode
    from lowbit.nn.lns import lns_linear
    fmt = LNSFormat(16, 10)
    return lns_linear(encode(torch.randn(2, 5), fmt), encode(torch.randn(3, 4), fmt), None, LUT(20))


@case(CAT, "error")
def lns_add_of_two_formats():
    from lowbit.functional.lns import LUT, LNSFormat, add, encode
    return add(encode(torch.ones(3), LNSFormat(16, 10)), encode(torch.ones(3), LNSFormat(12, 6)), LUT(20))


@case(CAT, "valid")
def lns_linear_tracks_float64():
    from lowbit.functional.lns import LUT, LNSFormat, decode, encode
    from lowbit.nn.lns import lns_linear
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 32, generator=g), torch.randn(8, 32, generator=g) / 6
    fmt = LNSFormat(16, 10)
    xe, we = encode(x, fmt), encode(w, fmt)
    ref = decode(xe, torch.float64) @ decode(we, torch.float64).T
    got = decode(lns_linear(xe, we, None, LUT(20)), torch.float64)
    err = float((got - ref).abs().max() / ref.abs().max())
    if err > 0.1:
        raise Wrong(f"lns16 LUT(20) linear off float64 by {err:.3f} of the largest output")
    return f"relative error {err:.4f}"


@case(CAT, "error")
def lns_mac_energy_two_bits():
    from lowbit.cost.energy import EnergyTable, lns_mac_energy
    return lns_mac_energy(2, "lut", EnergyTable.load())


# ---------------------------------------------------------------- bit slices

for _bits, _sb in ((8, 3), (1, 1), (17, 1), (8, 0)):
    add(CAT, f"bit_slices_{_bits}_{_sb}", "error",
        lambda b=_bits, s=_sb: __import__("lowbit.functional.bitslice", fromlist=["bit_slices"]).bit_slices(
            torch.randn(4, 4), b, s))


@case(CAT, "error")
def bitslice_l1_negative_alpha():
    from lowbit.functional.bitslice import BitSliceL1
    return BitSliceL1(alpha=-0.5)


# ---------------------------------------------------------------- shipped low-precision model


@case(CAT, "error")
def lowprec_zoo_corrupt_weights():
    from lowbit.zoo.lowprec_zoo import pretrained_lowprec, weights_path
    src = weights_path("kahan-cnn-fixed8")
    folder = workdir() / "w"
    folder.mkdir()
    shutil.copy(src.with_suffix(".json"), folder)
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / src.name).write_bytes(bytes(data))
    return pretrained_lowprec("kahan-cnn-fixed8", folder)


@case(CAT, "error")
def lowprec_zoo_unknown_key():
    from lowbit.zoo.lowprec_zoo import pretrained_lowprec
    return pretrained_lowprec("kahan-cnn-fixed4")


# ---------------------------------------------------------------- CLI

for _argv in (["lowprec", "train", "--storage", "fixed8.9"], ["lowprec", "train", "--storage", "int8"],
              ["lowprec", "train", "--epochs", "0"], ["lowprec", "train", "--lr", "-1"],
              ["lowprec", "train", "--momentum", "1.5"], ["lowprec", "train", "--train-size", "70000"],
              ["lowprec", "bound", "--classes", "1"], ["lowprec", "bound", "--classes", "10", "--p-target", "0.05"],
              ["lowprec", "slices", "--slice-bits", "3"], ["lowprec", "slices", "--model", "nope"],
              ["qat", "--grad-bits", "1"], ["qat", "--grad-bits", "17"]):
    add(CAT, "cli_" + "_".join(_argv), "error", lambda a=_argv: cli(*a, "--out", str(workdir() / "o"))
        if a[1] == "train" else cli(*a))
