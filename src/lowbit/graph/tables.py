"""Replace the elementwise float ops on quantized tensors by lookup tables (:class:`lowbit.nn.lookup.Lookup`).

After the quantizers froze (:func:`lowbit.ptq.convert`), an op that maps each element of a tensor on a grid of
at most 8 bits through a fixed function is a table of 256 entries (per channel for a BatchNorm that follows an
activation and so cannot be folded into a layer). The tabulated model is what the integer model runs, entry
for entry. Two such ops in a row (a BatchNorm, then a sigmoid) become one table. Ops whose input is float,
or on a grid wider than 8 bits, are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.formats import IntFormat
from lowbit.functional.lookup import apply, tabulate
from lowbit.graph.nodes import free_name, module_of
from lowbit.nn.lookup import Lookup
from lowbit.nn.qparams import QParams
from lowbit.nn.quantizers import ActQuantizer
from lowbit.graph.recurrent import recurrent_part
from lowbit.nn.recurrent import H_GRID, FixedGrid
from lowbit.nn.unified import QAvgPool, _Unified

FUNCTIONS = (torch.sigmoid, torch.tanh, torch.exp, F.sigmoid, F.tanh, F.gelu, F.silu, F.mish, F.hardswish,
             F.hardsigmoid, F.elu, F.selu, F.leaky_relu, F.softplus, F.logsigmoid, torch.nn.functional.relu6,
             F.relu, torch.relu)  # (a ReLU after a layer is fused into it; one after a recurrent h is a table)
METHODS = ("sigmoid", "tanh", "exp")
MODULES = (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.SELU,
           nn.LeakyReLU, nn.Softplus, nn.LogSigmoid, nn.ReLU6, nn.ReLU)
_BN_RANK = {nn.BatchNorm1d: 3, nn.BatchNorm2d: 4, nn.BatchNorm3d: 5}

Fn = Callable[[torch.Tensor], torch.Tensor]


def _constant_args(node: fx.Node) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args[1:], node.kwargs), found.append)
    return bool(node.args) and isinstance(node.args[0], fx.Node) and not found


def _batchnorm(m: nn.Module) -> tuple[Fn, int, int] | None:
    rank = _BN_RANK.get(type(m))
    if rank is None or m.running_mean is None or m.running_var is None:
        return None
    return (lambda x: F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps),
            m.num_features, rank)


def elementwise(gm: fx.GraphModule, node: fx.Node) -> tuple[Fn, int, int] | None:
    """``(fn, channels, ndim)`` of a node that applies a fixed elementwise (per-channel: ``channels`` > 1)
    function to its first argument, or None."""
    if not _constant_args(node):
        return None
    rest, kw = node.args[1:], dict(node.kwargs)
    kw.pop("inplace", None)
    m = module_of(gm, node)
    if m is not None:
        return _batchnorm(m) if type(m) in _BN_RANK else ((m, 1, 1) if isinstance(m, MODULES) else None)
    if node.op == "call_function" and node.target in FUNCTIONS:
        return (lambda x: node.target(x, *rest, **kw)), 1, 1
    if node.op == "call_method" and node.target in METHODS:
        return (lambda x: getattr(x, node.target)(*rest, **kw)), 1, 1
    return None


def tabulable(q: ActQuantizer) -> bool:
    """A grid of integer codes of at most 8 bits: 256 table entries cover it."""
    return isinstance(q.spec.format, IntFormat) and q.spec.format.bits <= 8


def _quantizer(gm: fx.GraphModule, node: fx.Node) -> ActQuantizer | FixedGrid | None:
    """The quantizer whose grid the tensor ``node`` gives lies on, when a quantizer or a quantized layer gives it
    directly (no pass-through op between: a BatchNorm's channels must be the producer's); an integer recurrent
    layer's ``h`` lies on the fixed grid ``2^-7`` (:data:`~lowbit.nn.recurrent.H_GRID`)."""
    part = recurrent_part(gm, node)
    if part is not None:
        return H_GRID if part.on_h_grid and part.module.q is not None else None
    m = module_of(gm, node)
    return m if isinstance(m, ActQuantizer) else m.output_quant if isinstance(m, (_Unified, QAvgPool)) else None


def _grid(gm: fx.GraphModule, node: fx.Node) -> QParams | None:
    """The frozen grid of the tensor ``node`` gives (see :func:`_quantizer`), if a table can cover it."""
    q = _quantizer(gm, node)
    return q.qparams() if q is not None and q.mode == "quantize" and tabulable(q) else None


def will_tabulate(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether :func:`tabulate_elementwise` will replace ``node`` once the quantizers froze (before they do: a
    quantizer or quantized layer of at most 8 bits gives its input, or another such op used only by it)."""
    if elementwise(gm, node) is None:
        return False
    src = node.args[0]
    q = _quantizer(gm, src)
    if q is not None:
        return tabulable(q)
    return len(src.users) == 1 and will_tabulate(gm, src)


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    m = module_of(gm, node)
    return f"{node.target} ({type(m).__name__})" if m is not None else getattr(node.target, "__name__", str(node.target))


def tabulate_elementwise(gm: fx.GraphModule) -> list[str]:
    """Replace each elementwise float op on a quantized tensor by a :class:`Lookup`; returns what was replaced."""
    done: list[str] = []
    with torch.no_grad():
        for node in list(gm.graph.nodes):
            found = elementwise(gm, node)
            if found is None:
                continue
            fn, channels, ndim = found
            src = node.args[0]
            prev = module_of(gm, src)
            if isinstance(prev, Lookup) and len(src.users) == 1 and (channels == 1 or prev.table.shape[0] in (1, channels)):
                prev.table = apply(fn, prev.table, max(channels, prev.table.shape[0]), ndim)
                prev.source += f" -> {_describe(gm, node)}"
            else:
                q = _grid(gm, src)
                if q is None:
                    continue
                name = free_name(gm, f"{node.name}_lookup")
                gm.add_submodule(name, Lookup(q, tabulate(fn, q, channels, ndim), _describe(gm, node)))
                with gm.graph.inserting_after(node):
                    src = gm.graph.call_module(name, (src,))
            done.append(_describe(gm, node))
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            if node.op == "call_module" and not any(n.target == node.target for n in gm.graph.nodes):
                gm.delete_submodule(node.target)  # the float BatchNorm or activation the table replaced
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


__all__ = ["FUNCTIONS", "METHODS", "MODULES", "elementwise", "tabulable", "tabulate_elementwise", "will_tabulate"]
