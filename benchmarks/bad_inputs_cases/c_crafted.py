"""Crafted integer-model files: a valid lowbit safetensors file whose graph attributes or tensors were
changed (by hand, by a bug, by an attacker). A model file is untrusted input: each must be refused at
load (or at the latest at the call, with a lowbit error), never run - running and returning logits is
``silent_wrong``, and memory corruption is ``crash``."""

from __future__ import annotations

import json
import math

import torch

from bad_inputs_cases import add, fixtures, sfile, workdir

CAT = "crafted"
_NARROW = {"m": torch.int32, "m2": torch.int32, "n": torch.int8}


class Craft:
    """The graph and tensors of a saved model, to be changed and written back."""

    def __init__(self, name: str) -> None:
        from lowbit.utils.tensorfile import load_tensors
        self.tensors, md = load_tensors(fixtures.saved(name) if name != "cnn_w4" else _w4())
        self.meta = json.loads(md["lowbit"])

    def idx(self, kind: str, nth: int = 0) -> int:
        return [i for i, n in enumerate(self.meta["nodes"]) if n["kind"] == kind][nth]

    def node(self, kind: str, nth: int = 0) -> dict:
        return self.meta["nodes"][self.idx(kind, nth)]

    def attrs(self, kind: str, nth: int = 0) -> dict:
        return self.node(kind, nth)["attrs"]

    def get(self, kind: str, name: str, nth: int = 0) -> torch.Tensor:
        return self.tensors[f"{self.idx(kind, nth)}.{name}"]

    def set(self, kind: str, name: str, t: torch.Tensor, nth: int = 0) -> None:
        i = self.idx(kind, nth)
        node = self.meta["nodes"][i]
        widen = node["attrs"].get("widen", [])
        if name in widen and t.dtype == torch.int64:
            info = torch.iinfo(_NARROW[name])
            if t.numel() and int(t.min()) >= info.min and int(t.max()) <= info.max:
                t = t.to(_NARROW[name])
            else:
                widen.remove(name)
        self.tensors[f"{i}.{name}"] = t.contiguous()
        if name not in node["tensors"]:
            node["tensors"] = sorted([*node["tensors"], name])

    def drop(self, kind: str, name: str, nth: int = 0) -> None:
        i = self.idx(kind, nth)
        node = self.meta["nodes"][i]
        del self.tensors[f"{i}.{name}"]
        node["tensors"] = [t for t in node["tensors"] if t != name]
        if name in node["attrs"].get("widen", []):
            node["attrs"]["widen"].remove(name)

    def save(self, tag: str):
        from lowbit.utils.tensorfile import save_tensors
        return save_tensors(workdir() / f"{tag}.safetensors", self.tensors, {"lowbit": json.dumps(self.meta)})


def _w4():
    from lowbit.ptq import int_weight
    from lowbit.integer import save_integer, to_integer
    from lowbit.ptq import PTQConfig, quantize
    q = quantize(fixtures.model("cnn"), [fixtures.calib()], PTQConfig(int_weight(4)))
    return save_integer(to_integer(q, (fixtures.calib(2),)), workdir() / "w4.safetensors")


def _run(path, op_by_op: bool = False, x=None) -> str:
    from lowbit.integer import load_integer
    im = load_integer(path)
    x = fixtures.xs(8) if x is None else x
    with torch.no_grad():
        out = im.run(x)[im.output_name] if op_by_op else im(x)
    return f"loaded and ran: output {tuple(out.shape)}, finite {bool(torch.isfinite(out).all())}"


def craft(name: str, model: str, edit, op_by_op: bool = False) -> None:
    def fn():
        c = Craft(model)
        edit(c)
        return _run(c.save(name), op_by_op)
    add(CAT, f"{model}_{name}" + ("_opbyop" if op_by_op else ""), "error", fn)


def attr(kind, key, value, nth=0):
    return lambda c: c.attrs(kind, nth).__setitem__(key, value)


def tensor(kind, name, make, nth=0):
    return lambda c: c.set(kind, name, make(c.get(kind, name, nth)), nth)


# --- conv2d attributes (CNN: conv1 reads the 1-channel input, conv2 the pooled 32 channels)
for tag, v in (("neg3", [-3, -3]), ("neg1", [-1, -1]), ("zero", [0, 0]), ("huge", [1000000, 1000000]),
               ("one_value", [2]), ("string", "2"), ("three_values", [2, 2, 2]), ("null", None), ("float", [2.5, 2.5])):
    craft(f"conv_padding_{tag}", "cnn", attr("conv2d", "padding", v))
craft("conv_padding_neg3", "cnn", attr("conv2d", "padding", [-3, -3]), op_by_op=True)
craft("conv_padding_neg3", "resnet", attr("conv2d", "padding", [-3, -3]))
craft("conv_padding_zero_inner", "resnet", attr("conv2d", "padding", [0, 0], nth=3))
for tag, v in (("zero", [0, 0]), ("neg", [-1, -1]), ("huge", [10 ** 9, 10 ** 9]), ("two", [2, 2])):
    craft(f"conv_stride_{tag}", "cnn", attr("conv2d", "stride", v))
craft("conv_stride_zero", "resnet", attr("conv2d", "stride", [0, 0], nth=2))
for tag, v in (("zero", [0, 0]), ("neg", [-1, -1]), ("huge", [50, 50])):
    craft(f"conv_dilation_{tag}", "cnn", attr("conv2d", "dilation", v))
for tag, v in (("zero", 0), ("neg", -1), ("two", 2), ("depthwise_claim_32", 32), ("string", "1")):
    craft(f"conv_groups_{tag}", "cnn", attr("conv2d", "groups", v))
craft("conv_groups_depthwise_claim_32", "cnn", attr("conv2d", "groups", 32), op_by_op=True)
craft("conv2_groups_3_not_dividing", "cnn", attr("conv2d", "groups", 3, nth=1))
for tag, v in (("1000", 1000), ("string", "x"), ("float", 0.5)):
    craft(f"conv_input_zero_point_{tag}", "cnn", attr("conv2d", "input_zero_point", v))
for key, v in (("zero_point", 500), ("lo", -1000), ("hi", 1000), ("lo", 100)):
    craft(f"conv_{key}_{v}", "cnn", attr("conv2d", key, v))
craft("conv_lo_above_hi", "cnn", lambda c: c.attrs("conv2d").update(lo=100, hi=-100))
craft("conv_attr_missing_stride", "cnn", lambda c: c.attrs("conv2d").pop("stride"))

# --- conv2d tensors
craft("conv1_weight_2_in_channels", "cnn", tensor("conv2d", "weight", lambda w: w.repeat(1, 2, 1, 1)))
craft("conv1_weight_2_in_channels", "cnn", tensor("conv2d", "weight", lambda w: w.repeat(1, 2, 1, 1)), op_by_op=True)
craft("conv1_weight_2_in_channels", "resnet", tensor("conv2d", "weight", lambda w: w.repeat(1, 2, 1, 1)))
craft("conv2_weight_16_in_channels", "cnn", tensor("conv2d", "weight", lambda w: w[:, :16], nth=1))
craft("conv2_weight_64_in_channels", "cnn", tensor("conv2d", "weight", lambda w: w.repeat(1, 2, 1, 1), nth=1))
craft("conv2_weight_fewer_out_channels", "cnn", tensor("conv2d", "weight", lambda w: w[:32], nth=1))
craft("conv_weight_float32", "cnn", tensor("conv2d", "weight", lambda w: w.float()))
craft("conv_weight_int32", "cnn", tensor("conv2d", "weight", lambda w: w.to(torch.int32)))
craft("conv_weight_1d", "cnn", tensor("conv2d", "weight", lambda w: w.reshape(-1)))
craft("conv_weight_kernel_0x0", "cnn", tensor("conv2d", "weight", lambda w: w[:, :, :0, :0]))
craft("conv_weight_kernel_29x29", "cnn", tensor("conv2d", "weight", lambda w: torch.zeros(32, 1, 29, 29, dtype=torch.int8)))
craft("conv_bias_1_element", "cnn", tensor("conv2d", "bias", lambda b: b[:1]))
craft("conv_bias_1_element", "resnet", tensor("conv2d", "bias", lambda b: b[:1]))
craft("conv_bias_31_elements", "cnn", tensor("conv2d", "bias", lambda b: b[:31]))
craft("conv_bias_float", "cnn", tensor("conv2d", "bias", lambda b: b.float()))
craft("conv_bias_2d", "cnn", tensor("conv2d", "bias", lambda b: b.reshape(-1, 1)))
craft("conv_multiplier_1_element", "cnn", tensor("conv2d", "m", lambda m: m[:1].to(torch.int64)))
craft("conv_multiplier_1_element", "cnn", tensor("conv2d", "m", lambda m: m[:1].to(torch.int64)), op_by_op=True)
craft("conv_multiplier_negative", "cnn", tensor("conv2d", "m", lambda m: -m.to(torch.int64)))
craft("conv_multiplier_zero", "cnn", tensor("conv2d", "m", lambda m: torch.zeros_like(m, dtype=torch.int64)))
craft("conv_multiplier_2pow40", "cnn", tensor("conv2d", "m", lambda m: torch.full(m.shape, 2 ** 40)))
craft("conv_multiplier_float", "cnn", tensor("conv2d", "m", lambda m: m.float()))
craft("conv_shift_100", "cnn", tensor("conv2d", "n", lambda n: torch.full(n.shape, 100)))
craft("conv_shift_100", "cnn", tensor("conv2d", "n", lambda n: torch.full(n.shape, 100)), op_by_op=True)
craft("conv_shift_negative", "cnn", tensor("conv2d", "n", lambda n: torch.full(n.shape, -5)))
craft("conv_shift_63", "cnn", tensor("conv2d", "n", lambda n: torch.full(n.shape, 63)))
craft("conv_shift_1_element", "cnn", tensor("conv2d", "n", lambda n: n[:1].to(torch.int64)))
craft("conv_missing_bias", "cnn", lambda c: c.drop("conv2d", "bias"))
craft("conv_missing_multiplier", "cnn", lambda c: c.drop("conv2d", "m"))
craft("conv_missing_weight", "cnn", lambda c: c.drop("conv2d", "weight"))
craft("conv_widen_lists_weight", "cnn", lambda c: c.attrs("conv2d").setdefault("widen", []).append("weight"))
craft("conv_widen_lists_unknown", "cnn", lambda c: c.attrs("conv2d").setdefault("widen", []).append("zzz"))

# --- residual convs (ResNet)
craft("residual_multiplier_1_element", "resnet", tensor("conv2d", "m2", lambda m: m[:1], nth=2))
craft("residual_zero_point_1000", "resnet", attr("conv2d", "residual_zero_point", 1000, nth=2))
craft("residual_from_tensor_of_other_shape", "resnet",
      lambda c: c.node("conv2d", 7).__setitem__("inputs", [c.node("conv2d", 7)["inputs"][0], c.node("conv2d", 2)["output"]]))
craft("residual_from_tensor_of_other_shape", "resnet",
      lambda c: c.node("conv2d", 7).__setitem__("inputs", [c.node("conv2d", 7)["inputs"][0], c.node("conv2d", 2)["output"]]),
      op_by_op=True)
craft("residual_missing_m2", "resnet", lambda c: c.drop("conv2d", "m2", nth=2))

# --- pools, flatten
for tag, v in (("zero", [0, 0]), ("neg", [-1, -1]), ("100", [100, 100])):
    craft(f"maxpool_kernel_{tag}", "cnn", attr("maxpool2d", "kernel_size", v))
craft("maxpool_kernel_zero", "cnn", attr("maxpool2d", "kernel_size", [0, 0]), op_by_op=True)
craft("maxpool_stride_zero", "cnn", attr("maxpool2d", "stride", [0, 0]))
craft("maxpool_padding_5", "cnn", attr("maxpool2d", "padding", [5, 5]))
craft("maxpool_padding_neg", "cnn", attr("maxpool2d", "padding", [-1, -1]))
craft("maxpool_dilation_zero", "cnn", attr("maxpool2d", "dilation", [0, 0]))
craft("avgpool_window_zero", "resnet", attr("avgpool2d", "window", 0))
craft("avgpool_kernel_zero", "resnet", attr("avgpool2d", "kernel_size", [0, 0]))
craft("avgpool_shift_100", "resnet", tensor("avgpool2d", "n", lambda n: torch.full_like(n.to(torch.int64), 100)))
craft("flatten_start_dim_5", "cnn", attr("flatten", "start_dim", 5))
craft("flatten_end_dim_0", "cnn", attr("flatten", "end_dim", 0))

# --- linear layers
craft("fc1_weight_wrong_in_features", "cnn", tensor("linear", "weight", lambda w: w[:, :3000]))
craft("fc1_weight_wrong_in_features", "cnn", tensor("linear", "weight", lambda w: w[:, :3000]), op_by_op=True)
craft("fc1_weight_wrong_in_features", "mlp", tensor("linear", "weight", lambda w: w[:, :700]))
craft("fc1_weight_more_in_features", "mlp", tensor("linear", "weight", lambda w: torch.cat([w, w[:, :16]], 1)))
craft("fc_bias_1_element", "mlp", tensor("linear", "bias", lambda b: b[:1]))
craft("fc_multiplier_1_element", "mlp", tensor("linear", "m", lambda m: m[:1].to(torch.int64)))
craft("fc_shift_100", "mlp", tensor("linear", "n", lambda n: torch.full(n.shape, 100)))
craft("fc_bias_int32_max", "mlp", tensor("linear", "bias", lambda b: torch.full_like(b, 2 ** 31 - 1)))
craft("out_acc_scale_1_element", "mlp", tensor("linear", "acc_scale", lambda s: s[:1], nth=2))
craft("out_acc_scale_nan", "mlp", tensor("linear", "acc_scale", lambda s: torch.full_like(s, math.nan), nth=2))
craft("out_acc_scale_inf", "cnn", tensor("linear", "acc_scale", lambda s: torch.full_like(s, math.inf), nth=1))
craft("out_activation_sigmoid", "cnn", attr("linear", "act", "sigmoid", nth=1))
craft("out_weight_fewer_rows_than_bias", "mlp", tensor("linear", "weight", lambda w: w[:5], nth=2))

# --- input quantization
for tag, v in (("zero", 0.0), ("negative", -0.01), ("nan", math.nan), ("inf", math.inf), ("string", "x"), ("huge", 1e300)):
    craft(f"quantize_scale_{tag}", "cnn", attr("quantize", "scale", v))
craft("quantize_zero_point_1000", "cnn", attr("quantize", "zero_point", 1000))
craft("quantize_lo_above_hi", "cnn", lambda c: c.attrs("quantize").update(lo=10, hi=-10))
craft("quantize_hi_1000", "cnn", attr("quantize", "hi", 1000))
craft("dequantize_node_added_scale_nan", "cnn", lambda c: c.meta["nodes"].append(
    {"kind": "dequantize", "inputs": [c.meta["output"]], "output": "deq", "attrs": {"zero_point": 0, "scale": math.nan},
     "grid": None, "source": "", "tensors": []}) or c.meta.__setitem__("output", "deq"))

# --- the graph
craft("node_reads_its_own_output", "cnn", lambda c: c.node("conv2d", 1).__setitem__("inputs", [c.node("conv2d", 1)["output"]]))
craft("node_reads_a_later_output", "cnn", lambda c: c.node("conv2d", 0).__setitem__("inputs", [c.node("linear", 0)["output"]]))
craft("two_nodes_same_output", "cnn", lambda c: c.node("conv2d", 1).__setitem__("output", c.node("conv2d", 0)["output"]))
craft("conv_with_no_inputs", "cnn", lambda c: c.node("conv2d", 0).__setitem__("inputs", []))
craft("conv_with_three_inputs", "cnn", lambda c: c.node("conv2d", 0).__setitem__("inputs", ["x", "x", "x"]))
craft("first_node_removed", "cnn", lambda c: (c.meta["nodes"].pop(0), c.meta["nodes"][0].__setitem__("inputs", ["x"])))
craft("linear_before_flatten", "cnn", lambda c: c.node("linear", 0).__setitem__("inputs", [c.node("maxpool2d", 1)["output"]]))

# --- packed (<= 4-bit) weights
craft("w4_weight_shape_larger", "cnn_w4", lambda c: c.attrs("conv2d", 1).__setitem__("weight_shape", [64, 32, 5, 6]))
craft("w4_weight_shape_smaller", "cnn_w4", lambda c: c.attrs("conv2d", 1).__setitem__("weight_shape", [64, 32, 5, 4]))
craft("w4_weight_shape_negative", "cnn_w4", lambda c: c.attrs("conv2d", 1).__setitem__("weight_shape", [-64, 32, 5, 5]))
craft("w4_weight_shape_string", "cnn_w4", lambda c: c.attrs("conv2d", 1).__setitem__("weight_shape", "64x32x5x5"))


# --- bytes changed in a valid file (integrity: a checksum must catch them)
def _flip(name: str, model: str, tensor_key, delta: int = 1, op_by_op: bool = False):
    def fn():
        h, data = sfile.split(fixtures.saved(model))
        key = tensor_key(h)
        b0, _ = h[key]["data_offsets"]
        d = bytearray(data)
        d[b0 + 3] = (d[b0 + 3] + delta) % 256
        p = workdir() / f"{name}.safetensors"
        p.write_bytes(sfile.join(h, bytes(d)))
        return _run(p, op_by_op)
    add(CAT, f"{model}_byteflip_{name}" + ("_opbyop" if op_by_op else ""), "error", fn)


def _key(suffix: str, nth: int = 0):
    return lambda h: sorted((k for k in h if k.endswith(suffix)), key=lambda k: int(k.split(".")[0]))[nth]


_flip("conv2_weight", "cnn", _key(".weight", 1))
_flip("conv2_weight", "cnn", _key(".weight", 1), op_by_op=True)
_flip("fc1_weight", "cnn", _key(".weight", 2), delta=64)
_flip("conv1_bias", "cnn", _key(".bias", 0), delta=16)
_flip("conv1_multiplier", "cnn", _key(".m", 0), delta=16)
_flip("conv1_shift", "cnn", _key(".n", 0), delta=2)
_flip("out_acc_scale", "cnn", _key(".acc_scale", 0), delta=7)
_flip("stem_weight", "resnet", _key(".weight", 0), delta=32)
_flip("fc3_weight", "mlp", _key(".weight", 2), delta=8)


def _meta_text_edit(name: str, model: str, old: str, new: str):
    def fn():
        h, data = sfile.split(fixtures.saved(model))
        m = h["__metadata__"]["lowbit"]
        if old not in m:
            raise RuntimeError(f"catalogue bug: {old!r} not in the metadata")
        h["__metadata__"]["lowbit"] = m.replace(old, new, 1)
        p = workdir() / f"{name}.safetensors"
        p.write_bytes(sfile.join(h, data))
        return _run(p)
    add(CAT, f"{model}_metadata_edit_{name}", "error", fn)


_meta_text_edit("input_scale_digit", "cnn", '"scale": 0.0', '"scale": 0.1')
_meta_text_edit("conv_zero_point", "cnn", '"zero_point": -128', '"zero_point": -100')
