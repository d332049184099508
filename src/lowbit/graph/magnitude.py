"""The magnitude ``sqrt(a^2 + b^2)`` in a traced graph: find it and swap it for :class:`~lowbit.nn.magnitude.QMagnitude`.

The forms found (``a``, ``b`` any two tensors of one shape; each intermediate read only by the next step)::

    torch.sqrt(a ** 2 + b ** 2)       the square as a ** 2, torch.pow(a, 2), a.pow(2), torch.square(a), a * a
    (a * a + b * b).sqrt()            (torch.mul, a.mul(a)); the sum as +, torch.add, .add; the root as torch.sqrt,
    torch.hypot(a, b)                 .sqrt(), ** 0.5, torch.pow(s, 0.5)

Any other form stays float (the usual "operation(s) stay in float" warning) and ``to_integer`` names its nodes.
:func:`output_qparams` gives the grid of the quantizer that reads a magnitude, which :func:`lowbit.ptq.convert`
freezes it with (:func:`lowbit.graph.fx_passes.attach_input_qparams`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from lowbit.graph.nodes import add_operands, chain_end, module_of, swap_in
from lowbit.nn.magnitude import QMagnitude
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.qparams import QParams

_POW = (operator.pow, torch.pow)
_MUL = (operator.mul, torch.mul)


@dataclass(frozen=True)
class Found:
    """A magnitude: the node whose value it gives (``out``), its operands, the nodes it replaces (readers first)."""

    out: fx.Node
    a: fx.Node
    b: fx.Node
    nodes: tuple[fx.Node, ...]
    hypot: bool


def _power(node: fx.Node, exponent: float) -> fx.Node | None:
    """``x`` where ``node`` is ``x ** exponent`` (operator, torch.pow, the method)."""
    if (node.op == "call_function" and node.target in _POW) or (node.op == "call_method" and node.target == "pow"):
        if len(node.args) == 2 and not node.kwargs and isinstance(node.args[0], fx.Node) \
                and not isinstance(node.args[1], (bool, fx.Node)) and node.args[1] == exponent:
            return node.args[0]
    return None


def _square(node: fx.Node) -> fx.Node | None:
    """``x`` where ``node`` is ``x^2`` in one of its forms."""
    if not isinstance(node, fx.Node) or node.kwargs:
        return None
    x = _power(node, 2)
    if x is not None:
        return x
    if ((node.op == "call_function" and node.target is torch.square) or
            (node.op == "call_method" and node.target == "square")) and len(node.args) == 1:
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    if ((node.op == "call_function" and node.target in _MUL) or (node.op == "call_method" and node.target == "mul")) \
            and len(node.args) == 2 and isinstance(node.args[0], fx.Node) and node.args[0] is node.args[1]:
        return node.args[0]
    return None


def _root(node: fx.Node) -> fx.Node | None:
    """``s`` where ``node`` is ``sqrt(s)``."""
    if ((node.op == "call_function" and node.target is torch.sqrt) or (node.op == "call_method" and node.target == "sqrt")) \
            and len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
        return node.args[0]
    return _power(node, 0.5)


def find(node: fx.Node) -> Found | None:
    """The magnitude ``node`` completes, or None."""
    if ((node.op == "call_function" and node.target is torch.hypot) or (node.op == "call_method" and node.target == "hypot")) \
            and len(node.args) == 2 and not node.kwargs and all(isinstance(v, fx.Node) for v in node.args):
        return Found(node, node.args[0], node.args[1], (node,), True)
    s = _root(node)
    if s is None or len(s.users) != 1:
        return None
    ops = add_operands(s)
    if ops is None or ops[0] is ops[1] or any(len(p.users) != 1 for p in ops):
        return None
    a, b = _square(ops[0]), _square(ops[1])
    if a is None or b is None:
        return None
    return Found(node, a, b, (node, s, *ops), False)


def swap_magnitude(gm: fx.GraphModule) -> list[str]:
    """Put a :class:`QMagnitude` in place of every magnitude (module docstring). Returns the modules added."""
    added = []
    for node in list(gm.graph.nodes):
        if node.graph is not gm.graph or node.op not in ("call_function", "call_method"):
            continue
        found = find(node)
        if found is None:
            continue
        added.append(swap_in(gm, node, f"{node.name}_magnitude", QMagnitude(node.name, found.hypot),
                             (found.a, found.b), found.nodes))  # (found.nodes: readers first)
    if added:
        gm.graph.lint()
        gm.recompile()
    return added


def output_qparams(gm: fx.GraphModule, node: fx.Node) -> QParams | None:
    """The frozen grid of the quantizer that ``node``'s one chain of readers reaches through ops that keep a grid
    (pads, pools, layout ops: :func:`lowbit.graph.nodes.chain_end`), if it is per-tensor; else None."""
    end = chain_end(gm, node)
    m = None if end is None else module_of(gm, end)
    if not isinstance(m, ActQuantizer) or m.mode != "quantize" or m.scale.numel() != 1:
        return None
    return m.qparams()


__all__ = ["Found", "find", "output_qparams", "swap_magnitude"]
