"""``IntegerModel``: a list of integer operations run in order, the deployable form of a quantized model.

It is what :func:`lowbit.integer.to_integer` builds from a converted model,
what :mod:`lowbit.integer.io` saves as safetensors + JSON, and what
:mod:`lowbit.export.onnx` writes as a QDQ graph. Tensors between operations are
int8 codes; the input is quantized once and the output dequantized once.

The model knows the per-sample shape and the dtype of the input it was built for
(``to_integer`` records them from the example input, a model file stores them) and
checks every call's input against them before any kernel runs: a ShapeError names
the input, the expected and the received shape. A model without that record (a file
of an older format) checks each new input shape through every node instead
(:func:`lowbit.integer.validate.propagate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.functional._checks import check_tensor
from lowbit.integer import validate
from lowbit.integer.backend import Kernels, as_kernels
from lowbit.integer import ir
from lowbit.integer.ops import Op, build, tensor_bytes
from lowbit.integer.plan import PlanCache


@dataclass
class Node:
    """One operation: ``output = op(*inputs)``; ``op`` runs the typed ``op.ir``; ``grid`` is the output's
    (None for a float output)."""

    op: Op
    inputs: list[str]
    output: str
    grid: ir.Grid | None = None
    source: str = ""  # the node of the converted model it computes (for parity checks)

    @property
    def kind(self) -> str:
        return self.op.kind


class IntegerModel(nn.Module):
    """Runs :class:`Node` s in order on one input tensor; ``forward`` returns the float output.

    ``kernels`` (:class:`~lowbit.integer.backend.Kernels`) picks the kernels; with the default ``PLAN``,
    ``forward`` runs the whole model in one C call where it can (:mod:`lowbit.integer.plan`: the same kernels
    and results, without the Python between the layers). :meth:`run` always goes op by op.
    """

    input_shape: tuple[int, ...] | None = None  # class defaults: what a model pickled before they existed has
    input_dtype: torch.dtype | None = None
    plan_max_bytes = 32 << 20  # buffers of one plan (when it is built); larger batches go op by op

    def __init__(self, nodes: list[Node], input_name: str = "input", output_name: str = "output",
                 input_shape: tuple[int, ...] | None = None, input_dtype: torch.dtype | None = None,
                 kernels: Kernels = Kernels.PLAN) -> None:
        """``input_shape``: the input's shape without the batch dimension (None: not recorded; each input shape
        is then checked through the nodes); ``input_dtype`` its dtype (float32 when only the shape is given)."""
        super().__init__()
        self.kernels = as_kernels(kernels)
        self.nodes, self.input_name, self.output_name = nodes, input_name, output_name
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self.input_dtype = torch.float32 if input_dtype is None and input_shape is not None else input_dtype
        self.plans = PlanCache()

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse, before any kernel runs, an input the model was not built for: not a CPU tensor, another
        dtype (DataError), another shape but for the batch size (ShapeError), empty, as the simulation does."""
        name = self.input_name
        if not isinstance(x, torch.Tensor):
            raise DataError(f"IntegerModel input {name!r} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise DataError(f"IntegerModel input {name!r} is on {x.device}; the integer model runs on the CPU: "
                            "pass x.cpu()")
        if self.input_dtype is not None and x.dtype != self.input_dtype:
            raise DataError(f"IntegerModel input {name!r}: expected dtype {self.input_dtype} (the dtype it was "
                            f"built for), got {x.dtype}; convert it with x.to({self.input_dtype})")
        if self.input_shape is not None:
            if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
                want = ", ".join(map(str, ("N", *self.input_shape)))
                raise ShapeError(f"IntegerModel input {name!r}: expected shape ({want}) for a batch of any size "
                                 f"N (the shape it was built for), got {tuple(x.shape)}")
        elif x.ndim == 0:
            raise ShapeError(f"IntegerModel input {name!r}: expected a batch of shape (N, ...), got a 0-dimensional "
                             "tensor")
        else:
            self._check_shape_through_nodes(x)
        if x.numel() == 0:
            check_tensor(x, "input")  # the simulation's error

    def _check_shape_through_nodes(self, x: torch.Tensor) -> None:
        """No recorded input shape: every node's shapes for this input (ShapeError naming the first misfit)."""
        spec = validate.Spec(tuple(x.shape[1:]), x.dtype)
        try:
            validate.propagate(validate.views(self.nodes), self.input_name, self.output_name, spec,
                               stop_at_unknown=True)
        except validate.Invalid as exc:
            raise ShapeError(f"IntegerModel input {self.input_name!r} of shape {tuple(x.shape)} does not fit the "
                             f"model: {exc}") from None

    @torch.no_grad()
    def run(self, x: torch.Tensor, kernels: Kernels | None = None) -> dict[str, torch.Tensor]:
        """Every named tensor of one forward pass, op by op on ``kernels`` (default: the model's own; for
        parity checks and debugging)."""
        self.check_input(x)
        return self._run(x, as_kernels(self.kernels if kernels is None else kernels))

    def _run(self, x: torch.Tensor, kernels: Kernels) -> dict[str, torch.Tensor]:
        env = {self.input_name: x}
        for node in self.nodes:
            env[node.output] = node.op(*(env[i] for i in node.inputs), kernels=kernels)
        return env

    def with_kernels(self, kernels: Kernels) -> IntegerModel:
        """The same model (the same nodes and tensors, shared) running on ``kernels``."""
        return IntegerModel(self.nodes, self.input_name, self.output_name, self.input_shape, self.input_dtype, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.kernels is Kernels.PLAN:
            y = self.plans.run(self, x)
            if y is not None:
                return y
        with torch.no_grad():
            return self._run(x, self.kernels)[self.output_name]

    def weight_bytes(self) -> int:
        return sum(tensor_bytes(n.op) for n in self.nodes)

    def summary(self) -> str:
        lines = [f"IntegerModel: {len(self.nodes)} ops, {self.weight_bytes() / 1024:.1f} KiB of tensors"]
        for n in self.nodes:
            shapes = {k: tuple(v.shape) for k, v in n.op.tensors.items() if k == "weight"}
            lines.append(f"  {n.output} = {n.kind}({', '.join(n.inputs)}) {shapes.get('weight', '')}")
        return "\n".join(lines)


def require_integer_model(model, what: str) -> None:
    """Refuse (ConfigError) anything but an :class:`IntegerModel` where ``what`` (a function name) needs one."""
    if not isinstance(model, IntegerModel):
        raise ConfigError(f"{what} needs an IntegerModel, got {type(model).__name__}: quantize the model "
                          "(lowbit.quantize) and lower it with lowbit.integer.to_integer first")


def make_op(kind: str, attrs: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Op:
    """The runner of the op of ``kind`` with JSON ``attrs`` (checked before) and ``tensors``."""
    tensors = tensors or {}
    return build(ir.parse(kind, attrs, requantized="acc_scale" not in tensors), tensors)


__all__ = ["IntegerModel", "Node", "make_op"]
