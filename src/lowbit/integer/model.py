"""``IntegerModel``: a list of integer operations run in order, the deployable form of a quantized model.

It is what :func:`lowbit.integer.to_integer` builds from a converted model,
what :mod:`lowbit.integer.io` saves as safetensors + JSON, and what
:mod:`lowbit.export.onnx` writes as a QDQ graph. Tensors between operations are
int8 codes; the input is quantized once and the output dequantized once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.integer.ops import OPS, Op, tensor_bytes
from lowbit.integer.plan import PlanCache


@dataclass
class Node:
    """One operation: ``output = op(*inputs)``; ``grid`` is the output's (scale, zero point, bits, signed)."""

    op: Op
    inputs: list[str]
    output: str
    grid: dict[str, Any] | None = None
    source: str = ""  # the node of the converted model it computes (for parity checks)

    @property
    def kind(self) -> str:
        return self.op.kind


class IntegerModel(nn.Module):
    """Runs :class:`Node` s in order on one input tensor; ``forward`` returns the float output.

    ``forward`` runs the whole model in one C call where it can (:mod:`lowbit.integer.plan`: the same kernels
    and results, without the Python between the layers); :meth:`run` always goes op by op.
    """

    use_plan = True  # False: forward goes op by op (tests compare the two)
    plan_max_bytes = 32 << 20  # buffers of one plan (when it is built); larger batches go op by op

    def __init__(self, nodes: list[Node], input_name: str = "input", output_name: str = "output") -> None:
        super().__init__()
        self.nodes, self.input_name, self.output_name = nodes, input_name, output_name
        self.plans = PlanCache()

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every named tensor of one forward pass (for parity checks and debugging)."""
        env = {self.input_name: x}
        for node in self.nodes:
            env[node.output] = node.op(*(env[i] for i in node.inputs))
        return env

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_plan:
            y = self.plans.run(self, x)
            if y is not None:
                return y
        return self.run(x)[self.output_name]

    def weight_bytes(self) -> int:
        return sum(tensor_bytes(n.op) for n in self.nodes)

    def summary(self) -> str:
        lines = [f"IntegerModel: {len(self.nodes)} ops, {self.weight_bytes() / 1024:.1f} KiB of tensors"]
        for n in self.nodes:
            shapes = {k: tuple(v.shape) for k, v in n.op.tensors.items() if k == "weight"}
            lines.append(f"  {n.output} = {n.kind}({', '.join(n.inputs)}) {shapes.get('weight', '')}")
        return "\n".join(lines)


def make_op(kind: str, attrs: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Op:
    if kind not in OPS:
        raise KeyError(f"unknown integer op {kind!r}; known: {sorted(OPS)}")
    return OPS[kind](attrs, tensors)


__all__ = ["IntegerModel", "Node", "make_op"]
