"""``IntegerModel``: a list of integer operations run in order, the deployable form of a quantized model.

It is what :func:`lowbit.integer.to_integer` builds from a converted model,
what :mod:`lowbit.integer.io` saves as safetensors + JSON, and what
:mod:`lowbit.export.onnx` writes as a QDQ graph. Tensors between operations are
int8 codes; the input is quantized once and the output dequantized once.

The model knows the per-sample shape and the dtype of each input it was built for
(``to_integer`` records them from the example inputs, a model file stores them) and
checks every call's inputs against them before any kernel runs: a DataError names
a missing or extra input, a ShapeError the input, the expected and the received shape.
A model without that record (a file of an older format) checks each new input shape
through every node instead (:func:`lowbit.integer.validate.propagate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Input:
    """One input of an :class:`IntegerModel`: its tensor name, its shape without the batch dimension (None: not
    recorded) and its dtype (float32 when only the shape is given)."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
            if self.dtype is None:
                object.__setattr__(self, "dtype", torch.float32)


class IntegerModel(nn.Module):
    """Runs :class:`Node` s in order on its input tensors; ``forward`` returns the float output.

    ``kernels`` (:class:`~lowbit.integer.backend.Kernels`) picks the kernels; with the default ``PLAN``,
    ``forward`` runs the whole model in one C call where it can (:mod:`lowbit.integer.plan`: the same kernels
    and results, without the Python between the layers). :meth:`run` always goes op by op.

    A model takes one input (``input_name``, ``input_shape``, ``input_dtype``; ``forward(x)``) or several
    (``inputs``, a sequence of :class:`Input`; ``forward(*xs)`` in that order, as the quantized model's ``forward``
    takes them). A model of several inputs runs op by op: the compiled plan has one input buffer. An input no
    node reads is accepted, checked and ignored (the call keeps the float model's signature).
    """

    plan_max_bytes = 32 << 20  # buffers of one plan (when it is built); larger batches go op by op

    def __init__(self, nodes: list[Node], input_name: str = "input", output_name: str = "output",
                 input_shape: tuple[int, ...] | None = None, input_dtype: torch.dtype | None = None,
                 kernels: Kernels = Kernels.PLAN, *, inputs: Sequence[Input] | None = None) -> None:
        """``input_shape``: the input's shape without the batch dimension (None: not recorded; each input shape
        is then checked through the nodes); ``input_dtype`` its dtype (float32 when only the shape is given).
        ``inputs``: every input, in call order, instead of those three (a ConfigError when both are given)."""
        super().__init__()
        self.kernels = as_kernels(kernels)
        self.nodes, self.output_name = nodes, output_name
        if inputs is None:
            inputs = (Input(input_name, input_shape, input_dtype),)
        elif (input_name, input_shape, input_dtype) != ("input", None, None):
            raise ConfigError("IntegerModel: give either inputs or input_name / input_shape / input_dtype, not both")
        self.inputs: tuple[Input, ...] = tuple(inputs)
        if not self.inputs or not all(isinstance(i, Input) for i in self.inputs):
            raise ConfigError(f"IntegerModel: inputs must be one or more lowbit.integer.model.Input, got {inputs!r:.80}")
        if len({i.name for i in self.inputs}) != len(self.inputs):
            raise ConfigError(f"IntegerModel: input names {self.input_names} must be distinct")
        self.plans = PlanCache()

    def __setstate__(self, state: dict) -> None:
        """A model pickled before it had ``inputs`` (one input, its fields on the model itself)."""
        if "inputs" not in state:
            state["inputs"] = (Input(state.pop("input_name", "input"), state.pop("input_shape", None),
                                     state.pop("input_dtype", None)),)
        super().__setstate__(state)

    # ---- the inputs

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def input_shapes(self) -> list[tuple[int, ...] | None]:
        return [i.shape for i in self.inputs]

    @property
    def input_dtypes(self) -> list[torch.dtype | None]:
        return [i.dtype for i in self.inputs]

    def _only_input(self, field: str) -> Input:
        """The one input, for the single-input API; a model of several refuses (it has no single answer)."""
        if len(self.inputs) != 1:
            raise ConfigError(f"IntegerModel.{field}: the model takes {len(self.inputs)} inputs "
                              f"({', '.join(self.input_names)}); read IntegerModel.inputs (input_names, input_shapes, "
                              "input_dtypes) instead")
        return self.inputs[0]

    @property
    def input_name(self) -> str:
        return self._only_input("input_name").name

    @input_name.setter
    def input_name(self, name: str) -> None:
        self.inputs = (replace(self._only_input("input_name"), name=name),)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self._only_input("input_shape").shape

    @input_shape.setter
    def input_shape(self, shape: tuple[int, ...] | None) -> None:
        old = self._only_input("input_shape")
        self.inputs = (Input(old.name, shape, old.dtype),)

    @property
    def input_dtype(self) -> torch.dtype | None:
        return self._only_input("input_dtype").dtype

    @input_dtype.setter
    def input_dtype(self, dtype: torch.dtype | None) -> None:
        self.inputs = (replace(self._only_input("input_dtype"), dtype=dtype),)

    # ---- checks

    def check_inputs(self, xs: Sequence[torch.Tensor]) -> None:
        """Refuse, before any kernel runs, a call with another number of inputs (DataError naming them), an
        input the model was not built for (:meth:`check_input`) or inputs of different batch sizes (ShapeError)."""
        if len(xs) != len(self.inputs):
            raise DataError(f"IntegerModel takes {len(self.inputs)} input{'s' if len(self.inputs) > 1 else ''} "
                            f"({', '.join(self.input_names)}), got {len(xs)}: call it as "
                            f"model({', '.join(self.input_names)})")
        for spec, x in zip(self.inputs, xs):
            _check_one(spec, x)
        if len({x.shape[0] for x in xs}) > 1:
            sizes = ", ".join(f"{n!r} {x.shape[0]}" for n, x in zip(self.input_names, xs))
            raise ShapeError(f"IntegerModel inputs must be batches of one size (every op runs per sample), got {sizes}")
        if any(i.shape is None for i in self.inputs):
            self._check_shapes_through_nodes(xs)
        for x in xs:
            if x.numel() == 0:
                check_tensor(x, "input")  # the simulation's error

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse, before any kernel runs, an input the model was not built for: not a CPU tensor, another
        dtype (DataError), another shape but for the batch size (ShapeError), empty, as the simulation does."""
        self.check_inputs((x,))

    def _check_shapes_through_nodes(self, xs: Sequence[torch.Tensor]) -> None:
        """An input shape not recorded: every node's shapes for these inputs (ShapeError naming the first
        misfit)."""
        specs = [validate.Spec(tuple(x.shape[1:]), x.dtype) for x in xs]
        try:
            validate.propagate(validate.views(self.nodes), self.input_names, self.output_name, specs,
                               stop_at_unknown=True)
        except validate.Invalid as exc:
            what = ", ".join(f"{n!r} of shape {tuple(x.shape)}" for n, x in zip(self.input_names, xs))
            raise ShapeError(f"IntegerModel input{'s' if len(xs) > 1 else ''} {what} "
                             f"do{'es' if len(xs) == 1 else ''} not fit the model: {exc}") from None

    # ---- running

    @torch.no_grad()
    def run(self, *xs: torch.Tensor, kernels: Kernels | None = None) -> dict[str, torch.Tensor]:
        """Every named tensor of one forward pass, op by op on ``kernels`` (default: the model's own; for
        parity checks and debugging). ``kernels`` may also follow the inputs positionally (``run(x, kernels)``)."""
        if len(xs) == len(self.inputs) + 1 and not isinstance(xs[-1], torch.Tensor):
            *xs, kernels = xs
        self.check_inputs(xs)
        return self._run(xs, as_kernels(self.kernels if kernels is None else kernels))

    def _run(self, xs: Sequence[torch.Tensor], kernels: Kernels) -> dict[str, torch.Tensor]:
        env = dict(zip(self.input_names, xs))
        for node in self.nodes:
            env[node.output] = node.op(*(env[i] for i in node.inputs), kernels=kernels)
        return env

    def with_kernels(self, kernels: Kernels) -> IntegerModel:
        """The same model (the same nodes and tensors, shared) running on ``kernels``."""
        return IntegerModel(self.nodes, output_name=self.output_name, kernels=kernels, inputs=self.inputs)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        self.check_inputs(xs)
        if self.kernels is Kernels.PLAN and len(xs) == 1:  # several inputs: op by op (the plan has one input)
            y = self.plans.run(self, xs[0])
            if y is not None:
                return y
        with torch.no_grad():
            return self._run(xs, self.kernels)[self.output_name]

    def weight_bytes(self) -> int:
        return sum(tensor_bytes(n.op) for n in self.nodes)

    def summary(self) -> str:
        lines = [f"IntegerModel: {len(self.nodes)} ops, {self.weight_bytes() / 1024:.1f} KiB of tensors"]
        for n in self.nodes:
            shapes = {k: tuple(v.shape) for k, v in n.op.tensors.items() if k == "weight"}
            lines.append(f"  {n.output} = {n.kind}({', '.join(n.inputs)}) {shapes.get('weight', '')}")
        return "\n".join(lines)


def _check_one(spec: Input, x: object) -> None:
    """One input against what the model was built for: a CPU tensor (DataError) of its dtype (DataError) and
    shape but for the batch size (ShapeError)."""
    name = spec.name
    if not isinstance(x, torch.Tensor):
        raise DataError(f"IntegerModel input {name!r} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise DataError(f"IntegerModel input {name!r} is on {x.device}; the integer model runs on the CPU: "
                        "pass x.cpu()")
    if spec.dtype is not None and x.dtype != spec.dtype:
        raise DataError(f"IntegerModel input {name!r}: expected dtype {spec.dtype} (the dtype it was "
                        f"built for), got {x.dtype}; convert it with x.to({spec.dtype})")
    if spec.shape is not None:
        if x.ndim != len(spec.shape) + 1 or tuple(x.shape[1:]) != spec.shape:
            want = ", ".join(map(str, ("N", *spec.shape)))
            raise ShapeError(f"IntegerModel input {name!r}: expected shape ({want}) for a batch of any size "
                             f"N (the shape it was built for), got {tuple(x.shape)}")
    elif x.ndim == 0:
        raise ShapeError(f"IntegerModel input {name!r}: expected a batch of shape (N, ...), got a 0-dimensional "
                         "tensor")


def require_integer_model(model, what: str) -> None:
    """Refuse (ConfigError) anything but an :class:`IntegerModel` where ``what`` (a function name) needs one."""
    if not isinstance(model, IntegerModel):
        raise ConfigError(f"{what} needs an IntegerModel, got {type(model).__name__}: quantize the model "
                          "(lowbit.quantize) and lower it with lowbit.integer.to_integer first")


def make_op(kind: str, attrs: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Op:
    """The runner of the op of ``kind`` with JSON ``attrs`` (checked before) and ``tensors``."""
    tensors = tensors or {}
    return build(ir.parse(kind, attrs, requantized="acc_scale" not in tensors), tensors)


__all__ = ["Input", "IntegerModel", "Node", "make_op"]
