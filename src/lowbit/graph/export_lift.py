"""Capture with ``torch.export`` where ``torch.fx`` symbolic tracing fails, as a module graph.

``torch.fx.symbolic_trace`` fails on Python control flow over tensor shapes (``if x.shape[0]``),
on ``len(x)`` and on some library code; ``torch.export`` runs the model on its example inputs
and records the ATen ops actually executed. Its graph, though, is made of ``call_function`` ATen
ops on lifted parameters, while lowbit's passes (BatchNorm folding, unified-module fusion) work on
``call_module`` layers. :func:`export_graph` lifts the ATen graph back into modules:

=====================================  =========================================================
ATen op                                becomes
=====================================  =========================================================
``conv1d`` / ``conv2d``                ``nn.Conv1d`` / ``nn.Conv2d`` holding the exported weights
``linear``                             ``nn.Linear``
``batch_norm`` (inference)             ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` with its statistics
``relu`` / ``relu6`` / ``hardtanh``     ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh``
``pad`` (constant zero)                ``nn.ZeroPad2d`` / ``nn.ZeroPad1d``
``max_pool2d`` / ``avg_pool2d``        ``nn.MaxPool2d`` / ``nn.AvgPool2d``
``adaptive_avg_pool2d``                ``nn.AdaptiveAvgPool2d``
``add.Tensor``, ``flatten``            ``operator.add``, ``torch.flatten``
``view`` / ``reshape`` to (batch, -1)  ``torch.flatten(x, 1)``
``dropout`` (inference)                nothing
=====================================  =========================================================

Layers keep the names of their weights in the original model (``layers.0.conv1``), so per-layer
rules and the first/last-layer choice see the same names as with ``torch.fx``. Any other op stays a
``call_function`` (lowbit lists it as a float op). The batch dimension (dimension 0 of every tensor
input, one shared size) is exported as dynamic where the model and the examples allow it (export
specializes a batch of one sample), else the shapes are static.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
from collections.abc import Iterator

import torch
from torch import fx, nn

aten = torch.ops.aten


class ExportFailed(RuntimeError):
    """``torch.export`` could not capture the model either."""


def _conv(w: torch.Tensor, b: torch.Tensor | None, stride=1, padding=0, dilation=1, groups=1) -> nn.Module:
    cls = nn.Conv2d if w.ndim == 4 else nn.Conv1d
    if isinstance(padding, str):
        raise ExportFailed(f"string padding {padding!r} in an exported conv")
    m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=b is not None)
    m.weight.data.copy_(w)
    if b is not None:
        m.bias.data.copy_(b)
    return m


def _linear(w: torch.Tensor, b: torch.Tensor | None = None) -> nn.Module:
    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    m.weight.data.copy_(w)
    if b is not None:
        m.bias.data.copy_(b)
    return m


def _batch_norm(rank: int, weight, bias, mean, var, training=False, momentum=0.1, eps=1e-5, *_) -> nn.Module:
    if training:
        raise ExportFailed("a BatchNorm in training mode was exported: call model.eval() first")
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    m = cls(mean.numel(), eps=eps, momentum=momentum, affine=weight is not None).eval()
    m.running_mean.copy_(mean)
    m.running_var.copy_(var)
    if weight is not None:
        m.weight.data.copy_(weight)
        m.bias.data.copy_(bias)
    return m


def _pool(target, args) -> nn.Module | None:
    if target is aten.max_pool2d.default:
        k, *rest = args
        stride, padding, dilation, ceil = (list(rest) + [None, 0, 1, False][len(rest):])[:4]
        return nn.MaxPool2d(k, stride or k, padding, dilation, ceil_mode=ceil)
    if target is aten.avg_pool2d.default:
        k, *rest = args
        stride, padding, ceil, include_pad, divisor = (list(rest) + [None, 0, False, True, None][len(rest):])[:5]
        return nn.AvgPool2d(k, stride or k, padding, ceil, include_pad, divisor)
    if target is aten.adaptive_avg_pool2d.default:
        return nn.AdaptiveAvgPool2d(tuple(args[0]))
    return None


def _zero_pad(target, args, kwargs) -> bool:
    """A constant zero padding of the last one or two dimensions."""
    if len(args) < 2 or len(args[1]) not in (2, 4):
        return False
    if target is aten.constant_pad_nd.default:
        return float(args[2] if len(args) > 2 else kwargs.get("value", 0.0)) == 0.0
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value", None)
    return mode == "constant" and (value is None or float(value) == 0.0)


def _keeps_batch_flat(node: fx.Node) -> bool:
    """A view/reshape to ``(batch, -1)``: what ``torch.flatten(x, 1)`` computes."""
    out, src = node.meta.get("val"), node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    return (out is not None and src is not None and out.ndim == 2 and src.ndim >= 2
            and str(out.shape[0]) == str(src.shape[0]))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep torch.export's diagnostics (log warnings, graph dumps on stderr) off the user's terminal:
    a failed capture is reported by lowbit in one line, and lowbit then falls back to a module swap."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _batch_dynamic(model: nn.Module, args: tuple, kwargs: dict) -> dict | None:
    """``dynamic_shapes`` for ``torch.export``: dimension 0 of every tensor input is the one ``Dim`` "batch"
    (all inputs share the batch size); other inputs static. None if ``forward``'s signature cannot bind them."""
    batch = torch.export.Dim("batch")

    def spec(v: object) -> object:
        if isinstance(v, torch.Tensor):
            return {0: batch} if v.ndim > 0 else None
        if isinstance(v, (tuple, list)):  # *args
            return type(v)(spec(x) for x in v)
        if isinstance(v, dict):  # **kwargs
            return {k: spec(x) for k, x in v.items()}
        return None

    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    return {name: spec(v) for name, v in bound.arguments.items()}


def _export(model: nn.Module, example_inputs: tuple, example_kwargs: dict | None = None):
    """``torch.export`` with a dynamic batch dimension (see :func:`_batch_dynamic`); where that fails (the model
    fixes its batch size, or the examples hold one sample, which export specializes), static shapes."""
    args, kwargs = tuple(example_inputs), dict(example_kwargs or {})
    dynamic = _batch_dynamic(model, args, kwargs)
    with _quiet():
        try:
            if dynamic is None:
                raise ExportFailed("no dynamic shapes")
            return torch.export.export(model, args, kwargs or None, dynamic_shapes=dynamic)
        except Exception:  # noqa: BLE001 - a batch-dependent model: try with the example's batch fixed
            try:
                return torch.export.export(model, args, kwargs or None)
            except Exception as exc:  # noqa: BLE001 - export raises many kinds
                raise ExportFailed(f"torch.export cannot capture {type(model).__name__}: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


class _Lifter:
    def __init__(self, src: fx.GraphModule) -> None:
        self.src, self.root, self.graph = src, nn.Module(), fx.Graph()
        self.env: dict[fx.Node, object] = {}
        self.names: set[str] = set()

    def tensor(self, a):
        return self.env[a] if isinstance(a, fx.Node) else a

    def name_for(self, weight_node, fallback: str) -> str:
        """A fresh attribute path: a layer is named after its weight's owner (``enc.fc.weight`` -> ``enc.fc``);
        a constant after its own target, flattened (``embeddings.position_ids`` -> ``embeddings_position_ids``),
        so that it never takes a name a layer's path runs through."""
        target = str(weight_node.target) if isinstance(weight_node, fx.Node) else None
        if target is None:
            base = fallback
        elif fallback == "const":
            base = target.replace(".", "_")
        else:
            base = target.rsplit(".", 1)[0]
        name, i = base, 1
        while not self._free(name):
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def _free(self, name: str) -> bool:
        """``name`` is unused, no used name lies inside it, and it lies inside no used name."""
        return not any(n == name or n.startswith(name + ".") or name.startswith(n + ".") for n in self.names)

    def module(self, node: fx.Node, m: nn.Module, x, name: str) -> None:
        _add_nested(self.root, name, m)
        self.env[node] = self.graph.call_module(name, (self.value(x),))

    def value(self, a):
        """Graph value of an argument: nodes of the new graph, constants re-registered as buffers."""
        if isinstance(a, fx.Node):
            v = self.env[a]
            if isinstance(v, torch.Tensor):
                name = self.name_for(a, "const")
                _add_nested(self.root, name, v, buffer=True)
                v = self.env[a] = self.graph.get_attr(name)
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(x) for x in a)
        return a

    def lift(self, node: fx.Node) -> None:
        t, args = node.target, node.args
        if t in (aten.conv1d.default, aten.conv2d.default):
            w, b = self.tensor(args[1]), self.tensor(args[2]) if len(args) > 2 else None
            self.module(node, _conv(w, b, *args[3:]), args[0], self.name_for(args[1], "conv"))
        elif t is aten.linear.default:
            w, b = self.tensor(args[1]), self.tensor(args[2]) if len(args) > 2 else None
            self.module(node, _linear(w, b), args[0], self.name_for(args[1], "linear"))
        elif t in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            rank = node.meta["val"].ndim if "val" in node.meta else 4
            tensors = [self.tensor(a) for a in args[1:5]]
            rest = args[5:] if t is aten.batch_norm.default else (False, *args[5:])
            bn = _batch_norm(rank, *tensors, *rest)
            self.module(node, bn, args[0], self.name_for(args[3], "bn"))
            if t is aten._native_batch_norm_legit_no_training.default:  # returns (out, mean, rstd)
                self.env[node] = (self.env[node],)
        elif t is aten.relu.default:
            self.module(node, nn.ReLU(), args[0], self.name_for(None, "relu"))
        elif t is aten.relu6.default:
            self.module(node, nn.ReLU6(), args[0], self.name_for(None, "relu6"))
        elif t in (aten.pad.default, aten.constant_pad_nd.default) and _zero_pad(t, args, node.kwargs):
            pad = nn.ZeroPad2d(tuple(args[1])) if len(args[1]) == 4 else nn.ZeroPad1d(tuple(args[1]))
            self.module(node, pad, args[0], self.name_for(None, "pad"))
        elif t is aten.hardtanh.default:
            lo, hi = (list(args[1:]) + [-1.0, 1.0][len(args) - 1:])[:2]
            self.module(node, nn.Hardtanh(float(lo), float(hi)), args[0], self.name_for(None, "hardtanh"))
        elif (pool := _pool(t, args[1:])) is not None:
            self.module(node, pool, args[0], self.name_for(None, "pool"))
        elif t is aten.add.Tensor and len(args) == 2 and not node.kwargs:
            self.env[node] = self.graph.call_function(operator.add, (self.value(args[0]), self.value(args[1])))
        elif t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default) and _keeps_batch_flat(node):
            self.env[node] = self.graph.call_function(torch.flatten, (self.value(args[0]), 1))
        elif t in (aten.dropout.default, aten.clone.default, aten.alias.default) and not (len(args) > 2 and args[2]):
            self.env[node] = self.value(args[0])  # identities in inference
        elif t is aten.flatten.using_ints:
            self.env[node] = self.graph.call_function(torch.flatten, tuple(self.value(a) for a in args))
        elif t is operator.getitem and isinstance(self.env.get(args[0]), tuple):
            self.env[node] = self.env[args[0]][args[1]]
        else:
            self.env[node] = self.graph.call_function(t, tuple(self.value(a) for a in args),
                                                      {k: self.value(v) for k, v in node.kwargs.items()})

    def run(self) -> fx.GraphModule:
        for node in self.src.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = self.graph.placeholder(node.name)
            elif node.op == "get_attr":
                self.env[node] = _fetch(self.src, str(node.target))
            elif node.op == "call_module":  # torch.export's input guards: not part of the computation
                continue
            elif node.op == "call_function":
                self.lift(node)
            elif node.op == "output":
                self.graph.output(self.value(node.args[0][0] if len(node.args[0]) == 1 else node.args[0]))
        gm = fx.GraphModule(self.root, self.graph)
        gm.graph.eliminate_dead_code()  # shape queries whose users were lifted away
        gm.graph.lint()
        gm.recompile()
        return gm


def _fetch(gm: nn.Module, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def _add_nested(root: nn.Module, name: str, value, buffer: bool = False) -> None:
    parent = root
    *path, leaf = name.split(".")
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    if buffer:
        parent.register_buffer(leaf, value.clone())
    else:
        parent.add_module(leaf, value)


def export_graph(model: nn.Module, example_inputs: tuple, example_kwargs: dict | None = None) -> fx.GraphModule:
    """``model`` captured by ``torch.export`` on ``example_inputs`` (positional) and ``example_kwargs`` (keyword
    inputs) and lifted to a module graph; its ``forward`` takes the tensor inputs by their names, in
    ``forward``'s order (a parameter not given is fixed at its default and is not an input)."""
    return lift_program(_export(model.eval(), example_inputs, example_kwargs))


def lift_program(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """A program of ``torch.export`` (e.g. read by ``torch.export.load`` from a ``.pt2`` file) as a module
    graph that lowbit quantizes like a traced model (``program.module()`` itself refuses ``eval()``).

    The program's fixed input sizes are guarded: a call with another size raises a ShapeError before
    any op runs (a program exported with a fixed batch can bake that batch into constants, and some
    ATen kernels, e.g. ``aten.lstm`` given a hidden state of another batch, crash instead of raising)."""
    gm = _Lifter(program.module()).run()
    fixed = _fixed_sizes(program)
    gm.meta["lowbit_fixed_sizes"] = fixed
    if any(s is not None for _, sizes in fixed for s in sizes):
        gm.register_forward_pre_hook(lambda mod, args: _check_fixed(fixed, args))
    return gm


def fixed_sizes(gm: nn.Module) -> list[tuple[str, tuple[int | None, ...]]]:
    """The input sizes a graph of :func:`lift_program` was exported for (None: dynamic); [] for other modules."""
    meta = getattr(gm, "meta", None)
    return list(meta.get("lowbit_fixed_sizes", [])) if isinstance(meta, dict) else []


def _fixed_sizes(program: torch.export.ExportedProgram) -> list[tuple[str, tuple[int | None, ...]]]:
    """``(name, sizes)`` of the program's tensor inputs in order; a size is None where the program is dynamic."""
    users = set(program.graph_signature.user_inputs)
    out = []
    for n in program.graph.nodes:
        val = n.meta.get("val") if n.op == "placeholder" and n.name in users else None
        if isinstance(val, torch.Tensor):
            out.append((n.name, tuple(d if isinstance(d, int) else None for d in val.shape)))
    return out


def _check_fixed(fixed: list[tuple[str, tuple[int | None, ...]]], args: tuple) -> None:
    from lowbit.errors import ShapeError

    for (name, sizes), a in zip(fixed, args):
        if not isinstance(a, torch.Tensor):
            continue
        shape = tuple(a.shape)
        if len(shape) != len(sizes) or any(s is not None and s != d for s, d in zip(sizes, shape)):
            want = tuple("*" if s is None else s for s in sizes)
            raise ShapeError(f"input {name} has shape {shape}, but the torch.export program was exported for {want} "
                             "(* = any size); export it again with the sizes that vary marked dynamic, e.g. "
                             f"dynamic_shapes={{'{name}': {{0: torch.export.Dim('batch')}}}}")


__all__ = ["ExportFailed", "export_graph", "fixed_sizes", "lift_program"]
