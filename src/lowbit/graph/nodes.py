"""Classify torch.fx nodes: compute layers, BatchNorm, activations, adds, pass-through ops."""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

COMPUTE = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity)
ACT_FUNCTIONS = {F.relu: (0.0, None), torch.relu: (0.0, None), F.relu6: (0.0, 6.0)}
ADD_FUNCTIONS = (operator.add, torch.add)
POOL_PASSTHROUGH = (nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Flatten, nn.Identity, nn.ZeroPad1d, nn.ZeroPad2d,
                    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
FUNC_PASSTHROUGH = (torch.flatten, F.max_pool2d, F.max_pool1d, F.dropout, torch.reshape, operator.getitem)
METHOD_PASSTHROUGH = ("view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute",
                      "transpose", "size", "dim")


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def free_name(gm: fx.GraphModule, base: str) -> str:
    """``base``, or ``base_1``, ``base_2`` ...: the first that names no attribute of ``gm`` (for a new module)."""
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


LAYOUT_FUNCTIONS = (torch.permute, torch.unsqueeze, torch.squeeze)  # (method forms, reshape, flatten: pass-through)


def chain_end(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """Where ``node``'s one chain of readers leaves the ops that keep a grid (max pools, zero pads, layout ops:
    :func:`is_passthrough` and :data:`LAYOUT_FUNCTIONS`): the first other reader (a quantizer, a join, the output
    node, ...); None where the chain branches."""
    while len(node.users) == 1:
        node = next(iter(node.users))
        if node.op == "output" or not (is_passthrough(gm, node) or node.target in LAYOUT_FUNCTIONS):
            return node
    return None


def swap_in(gm: fx.GraphModule, node: fx.Node, base: str, module: nn.Module, args: tuple,
            erase: Iterable[fx.Node]) -> str:
    """Put ``module``, called on ``args``, in place of the pattern that ends at ``node``: its readers read the new
    call, and the pattern's nodes ``erase`` (readers first) leave the graph; returns the new submodule's name (the
    first free one from ``base``). The caller lints and recompiles once it has swapped every match."""
    name = free_name(gm, base)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    node.replace_all_uses_with(new)
    for old in erase:
        gm.graph.erase_node(old)
    return name


def is_compute(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = module_of(gm, node)
    return isinstance(m, COMPUTE) and not getattr(m, "padding_mode", "zeros") != "zeros"


def is_batchnorm(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(module_of(gm, node), BATCHNORM)


def activation_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """An ``nn.Module`` equal to the activation ``node`` computes, or None."""
    m = module_of(gm, node)
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
        return m
    if node.op == "call_function" and node.target in ACT_FUNCTIONS and len(node.args) == 1:
        lo, hi = ACT_FUNCTIONS[node.target]
        return nn.ReLU() if hi is None else nn.Hardtanh(lo, hi)
    if node.op == "call_function" and node.target is F.hardtanh:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return nn.Hardtanh(float(lo), float(hi))
    if node.op == "call_method" and node.target == "relu" and len(node.args) == 1:
        return nn.ReLU()
    if (node.op == "call_function" and node.target in (torch.clamp, torch.clip)) or (
        node.op == "call_method" and node.target in ("clamp", "clip")
    ):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            return nn.Hardtanh(float(lo), float(hi))
    return None


def add_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two tensor operands of an elementwise add node (``a + b``, ``torch.add``, ``a.add(b)``)."""
    is_add = (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target == "add"
    )
    if not is_add or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return None
    a, b = node.args
    return (a, b) if isinstance(a, fx.Node) and isinstance(b, fx.Node) else None


def is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops whose output stays on the input's quantization grid (max-pool, reshape, dropout in eval)."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), POOL_PASSTHROUGH)
    if node.op == "call_function":
        if node.target is F.pad:  # zero padding keeps the grid (zero is exactly representable); reflection and
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")  # replication move
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)  # elements only
            return (mode == "constant" and not value) or mode in ("reflect", "replicate")
        return node.target in FUNC_PASSTHROUGH
    if node.op == "call_method":
        return node.target in METHOD_PASSTHROUGH
    return False
