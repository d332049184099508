"""LayerNorm in a traced graph: swap it for :class:`~lowbit.nn.layernorm.QLayerNorm` where it can run in integers.

The forms found: an ``nn.LayerNorm`` module, ``F.layer_norm`` / ``torch.layer_norm`` and
``torch.ops.aten.layer_norm.default`` (a graph of ``torch.export``, as MiniLM's) whose weight and bias are None or
``get_attr`` nodes. Each is swapped only when it normalises the last dimension alone, its input comes from a
quantized producer (a quantized unified layer, a quantizer, through pass-through ops) and every reader of its output
is a quantized layer (which gets an input quantizer) or a quantizer: that quantizer's grid is the integer op's output
grid. Any other LayerNorm stays float, as before. :func:`lowbit.graph.fx_passes.producer_grid` and
:func:`lowbit.graph.magnitude.output_qparams` give the grids :func:`lowbit.ptq.convert` freezes it with
(:func:`lowbit.graph.fx_passes.attach_input_qparams`).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.granularity import PerTensor
from lowbit.graph.nodes import free_name, module_of
from lowbit.nn.layernorm import QLayerNorm
from lowbit.nn.quantizers import ActQuantizer

_FUNCTIONS = (F.layer_norm, torch.layer_norm, torch.ops.aten.layer_norm.default)


def _attr(gm: fx.GraphModule, node) -> torch.Tensor | None | bool:
    """The tensor of a ``get_attr`` node, None for None, False for anything else."""
    if node is None:
        return None
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.Tensor) else False
    return False


def _form(gm: fx.GraphModule, node: fx.Node):
    """``(input, features, weight, bias, eps)`` of a LayerNorm over the last dimension only, or None."""
    if node.op == "call_module":
        m = module_of(gm, node)
        if not isinstance(m, nn.LayerNorm) or len(m.normalized_shape) != 1 or len(node.args) != 1 or node.kwargs:
            return None
        return node.args[0], int(m.normalized_shape[0]), m.weight, m.bias, float(m.eps)
    if node.op != "call_function" or node.target not in _FUNCTIONS:
        return None
    names = ("input", "normalized_shape", "weight", "bias", "eps", "cudnn_enable")
    a = dict(zip(names, node.args))
    a.update(node.kwargs)
    shape, x = a.get("normalized_shape"), a.get("input")
    w, b = _attr(gm, a.get("weight")), _attr(gm, a.get("bias"))
    eps = a.get("eps", 1e-5)
    if not isinstance(x, fx.Node) or set(a) - set(names) or w is False or b is False or isinstance(eps, fx.Node):
        return None
    if _last_dim(shape, x) and w is not None:  # x.shape[-1:]: as many features as weights
        shape = [w.numel()]
    if not isinstance(shape, (list, tuple)) or len(shape) != 1 or not isinstance(shape[0], int):
        return None
    return x, int(shape[0]), w, b, float(eps)


def _last_dim(shape, x: fx.Node) -> bool:
    """``shape`` is the node ``x.shape[-1:]`` (or ``x.size()[-1:]``)."""
    if not (isinstance(shape, fx.Node) and shape.op == "call_function" and shape.target is operator.getitem
            and shape.args[1:] == (slice(-1, None, None),) and isinstance(shape.args[0], fx.Node)):
        return False
    src = shape.args[0]
    return src.args[:1] == (x,) and ((src.op == "call_function" and src.target is getattr
                                      and src.args[1:] == ("shape",))
                                     or (src.op == "call_method" and src.target == "size" and len(src.args) == 1))


def _quantized_reader(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A reader that puts its input on a per-tensor grid: a quantizer, or a quantized layer (PTQ gives it one)."""
    from lowbit.nn.unified import _Unified

    m = module_of(gm, node)
    if isinstance(m, ActQuantizer):
        return isinstance(m.spec.granularity, PerTensor)
    return isinstance(m, _Unified) and (m.quantized or m.weight_quant is not None)


def swap_layernorm(gm: fx.GraphModule) -> list[str]:
    """Put a :class:`QLayerNorm` in place of each LayerNorm that can run in integers (module docstring). Returns
    the modules added."""
    from lowbit.graph.fx_passes import _is_quantized

    added = []
    for node in list(gm.graph.nodes):
        form = _form(gm, node)
        if form is None:
            continue
        x, features, w, b, eps = form
        if not node.users or not _is_quantized(gm, x) or not all(_quantized_reader(gm, u) for u in node.users):
            continue
        if node.op == "call_module":  # in place: the module keeps its name (LayerRule patterns, SmoothQuant groups)
            parent, _, attr = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, QLayerNorm(features, w, b, eps, str(node.target)))
            added.append(str(node.target))
            continue
        name = free_name(gm, f"{node.name}_layernorm")
        gm.add_submodule(name, QLayerNorm(features, w, b, eps, node.name))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (x,))
        node.replace_all_uses_with(new)
        params = [a for a in (*node.args[1:4], *node.kwargs.values()) if isinstance(a, fx.Node) and a is not x]
        gm.graph.erase_node(node)
        erased: set[fx.Node] = set()
        while params:  # a functional form's get_attr weight and bias (now the module's), its x.shape[-1:]
            p = params.pop(0)
            if p not in erased and not p.users and p.op != "placeholder":
                erased.add(p)
                params += [a for a in p.args if isinstance(a, fx.Node) and a is not x]
                gm.graph.erase_node(p)
        added.append(name)
    if added:
        gm.graph.lint()
        gm.recompile()
    return added


__all__ = ["swap_layernorm"]
