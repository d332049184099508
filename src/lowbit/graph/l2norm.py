"""L2 normalisation in a traced graph: find ``x / ||x||_2`` and swap it for :class:`~lowbit.nn.l2norm.QL2Normalize`.

The forms found (``d`` one dimension, not the batch's ``0``)::

    x / torch.norm(x, dim=d, keepdim=True)         (p 2 or 'fro'; also x.norm(...), torch.linalg.vector_norm(x,
    x / torch.linalg.norm(x, dim=d, keepdim=True)   dim=d, keepdim=True); the division as /, torch.div, x.div)
    F.normalize(x, dim=d)                          (p 2)

A norm that divides its own input, or an ``F.normalize``, in another form (another order ``p``, several
dimensions, ``keepdim=False``, the batch dimension, the norm also used elsewhere) stays float with a warning that
names it and what is supported; :func:`refusal` gives the lowering the same words.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from lowbit.graph.nodes import swap_in
from lowbit.nn.l2norm import QL2Normalize

# the arguments after the input of each norm, in order, with their defaults
_NORMS = {torch.norm: (("p", "fro"), ("dim", None), ("keepdim", False), ("out", None), ("dtype", None)),
          torch.linalg.vector_norm: (("ord", 2), ("dim", None), ("keepdim", False), ("out", None), ("dtype", None)),
          torch.linalg.norm: (("ord", None), ("dim", None), ("keepdim", False), ("out", None), ("dtype", None)),
          "norm": (("p", "fro"), ("dim", None), ("keepdim", False), ("dtype", None))}
_NORMALIZE = (("p", 2.0), ("dim", 1), ("eps", 1e-12), ("out", None))
_DIVS = (operator.truediv, torch.div, torch.true_divide)
SUPPORTED = ("the integer L2 normalisation is x / x.norm(dim=d, keepdim=True) (torch.norm, torch.linalg.norm or "
             "vector_norm, p=2) or F.normalize(x, dim=d) (p=2), over one dimension d after the batch")


@dataclass(frozen=True)
class Found:
    """An L2 normalisation: the node whose value it gives (``out``), its input ``x``, the nodes it replaces,
    its dimension and ``eps`` (None: a plain division)."""

    out: fx.Node
    x: fx.Node
    nodes: tuple[fx.Node, ...]
    dim: int
    eps: float | None


def _args(node: fx.Node, names: tuple) -> dict:
    """The arguments after the first of a call, by name, defaults filled in."""
    got = {name: default for name, default in names}
    for (name, _), v in zip(names, node.args[1:]):
        got[name] = v
    got.update({k: v for k, v in node.kwargs.items() if k in got})
    return got


def _norm_target(node: fx.Node) -> object | None:
    if node.op == "call_function" and node.target in _NORMS:
        return node.target
    if node.op == "call_method" and node.target == "norm":
        return "norm"
    return None


def _one_dim(dim: object) -> int | None:
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def _dim_problem(dim: object, keepdim: bool = True) -> tuple[int | None, str | None]:
    d = _one_dim(dim)
    if d is None:
        return None, f"dim={dim!r} is not one dimension"
    if d == 0:
        return None, "it is over dimension 0, the batch"
    if not keepdim:
        return None, "its norm has keepdim=False"
    return d, None


def _norm_problem(node: fx.Node) -> tuple[int | None, str | None]:
    """``(dim, None)`` for an L2 norm over one dimension, kept; else ``(None, why not)``."""
    target = _norm_target(node)
    a = _args(node, _NORMS[target])
    p = a.get("p", a.get("ord"))
    extra = sorted(set(node.kwargs) - {name for name, _ in _NORMS[target]})
    extra += [k for k in ("out", "dtype") if a.get(k) is not None]
    if extra:
        return None, f"its norm has arguments {extra} the integer op does not take"
    if p not in (2, 2.0, "fro") and not (p is None and target is torch.linalg.norm):
        return None, f"its norm has p={p!r}"
    return _dim_problem(a["dim"], a["keepdim"] is True)


def _division(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(numerator, denominator)`` of a true division of two nodes, or None."""
    is_div = (node.op == "call_function" and node.target in _DIVS) or (
        node.op == "call_method" and node.target in ("div", "true_divide", "__truediv__"))
    if not is_div or len(node.args) != 2 or node.kwargs.get("rounding_mode") is not None:
        return None
    a, b = node.args
    return (a, b) if isinstance(a, fx.Node) and isinstance(b, fx.Node) else None


def find(node: fx.Node) -> Found | str | None:
    """The L2 normalisation ``node`` completes (:class:`Found`), why a normalisation it completes has no integer
    form (a string), or None when it is no normalisation."""
    if node.op == "call_function" and node.target is F.normalize:
        a = _args(node, _NORMALIZE)
        if a["p"] not in (2, 2.0):
            return f"p={a['p']!r}"
        if a["out"] is not None or not isinstance(node.args[0], fx.Node):
            return "it writes to out= or normalises a constant"
        dim, why = _dim_problem(a["dim"])
        return why if why is not None else Found(node, node.args[0], (node,), dim, float(a["eps"]))
    ops = _division(node)
    if ops is None or _norm_target(ops[1]) is None or not ops[1].args or ops[1].args[0] is not ops[0]:
        return None
    x, norm = ops
    dim, why = _norm_problem(norm)
    if why is None and len(norm.users) > 1:
        why = f"its norm {norm.name} is also used elsewhere"
    return why if why is not None else Found(node, x, (node, norm), dim, None)


def refusal(node: fx.Node) -> str | None:
    """Why the lowering cannot run ``node``, a norm or an L2 normalisation PTQ left float, or None for others."""
    if _norm_target(node) is None:
        why = find(node)
        return f"{node.name} (an L2 normalisation left float: {why}; {SUPPORTED})" if isinstance(why, str) else None
    for user in node.users:
        if isinstance(find(user), str):
            return f"{node.name} (the norm of {user.name}, an L2 normalisation left float)"
    return f"{node.name} (a norm that is not part of an L2 normalisation; {SUPPORTED})"


def swap_l2normalize(gm: fx.GraphModule) -> list[str]:
    """Put a :class:`QL2Normalize` in place of every L2 normalisation (module docstring); one that has no integer
    form stays float with a warning naming it and what is supported. Returns the modules added."""
    added = []
    for node in list(gm.graph.nodes):
        found = find(node)
        if isinstance(found, str):
            warnings.warn(f"lowbit: {node.name} (L2 normalisation) stays float: {found}; {SUPPORTED}", stacklevel=3)
            continue
        if found is None:
            continue
        added.append(swap_in(gm, node, f"{node.name}_l2normalize", QL2Normalize(found.dim, node.name, found.eps),
                             (found.x,), found.nodes))  # (found.nodes: the division first, it reads the norm)
    if added:
        gm.graph.lint()
        gm.recompile()
    return added


__all__ = ["Found", "SUPPORTED", "find", "refusal", "swap_l2normalize"]
