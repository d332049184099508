"""The one input check of a prepared or quantized model: the sample shape it was prepared for.

A model from :func:`lowbit.ptq.prepare` (and so from ``quantize`` and ``prepare_qat``) was traced,
fused and calibrated on ``example_inputs`` of one sample shape. An input of another shape (3 channels
into a 1-channel CNN, 27x27 images into a model whose linear layer expects the 28x28 feature count)
fails deep inside a layer with a torch message (``mat1 and mat2 shapes cannot be multiplied``), or,
for a model that pools adaptively, runs on activations its grids were never calibrated for. The
integer model refuses such an input before any kernel runs (``IntegerModel.check_input``); this
check gives the simulation the same rule: a forward pre-hook compares ``x.shape[1:]`` with the
recorded sample shape once per call (a tuple comparison, nothing per layer) and raises a
:class:`~lowbit.errors.ShapeError` naming the input, the first layer it feeds, the expected and
the received shape.

A model with several inputs is checked on its first positional input only (``forward``'s first
parameter, whether the call passes it by position or by name); the others reach their layers
unchecked, and a wrong shape there fails in the layer with torch's message.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import ShapeError


class InputCheck:
    """Forward pre-hook: refuse an input whose per-sample shape is not ``sample_shape``."""

    def __init__(self, sample_shape: tuple[int, ...], input_name: str, first_layer: str | None) -> None:
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.input_name = input_name
        self.first_layer = first_layer

    def expected(self) -> str:
        return "(" + ", ".join(map(str, ("N", *self.sample_shape))) + ")"

    def check(self, x: object) -> None:
        """Raise a ShapeError unless ``x`` is a batch of samples of the recorded shape."""
        if not isinstance(x, torch.Tensor):
            return  # not a tensor: the model's own error names it
        if x.ndim == len(self.sample_shape) + 1 and tuple(x.shape[1:]) == self.sample_shape:
            return
        layer = f" (it feeds layer {self.first_layer!r})" if self.first_layer else ""
        raise ShapeError(f"the quantized model's input {self.input_name!r}{layer} expects shape {self.expected()}, "
                         f"a batch of any size N of the samples it was prepared with; got {tuple(x.shape)}: pass "
                         "inputs of that shape, or prepare the model again with example_inputs of the new shape")

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            self.check(args[0])
        elif self.input_name in kwargs:  # the first input passed by name
            self.check(kwargs[self.input_name])


class _Reinstall:
    """``GraphModule`` deep copies drop forward hooks and extra attributes; this deepcopy hook puts the check back."""

    def __init__(self, check: InputCheck) -> None:
        self.check = check

    def __call__(self, copied: nn.Module) -> None:
        _attach(copied, self.check)


def _attach(model: nn.Module, check: InputCheck) -> None:
    old = getattr(model, "lowbit_input_check", None)
    for key, hook in list(model._forward_pre_hooks.items()):
        if old is not None and hook is old:
            del model._forward_pre_hooks[key]
            model._forward_pre_hooks_with_kwargs.pop(key, None)
    model.register_forward_pre_hook(check, with_kwargs=True)
    model.lowbit_input_check = check  # type: ignore[assignment]
    hooks = getattr(model, "_deepcopy_hooks", None)  # torch.fx.GraphModule only
    if isinstance(hooks, list):
        hooks[:] = [h for h in hooks if not isinstance(h, _Reinstall)] + [_Reinstall(check)]


def install(model: nn.Module, example: torch.Tensor, first_layer: str | None, input_name: str = "x") -> InputCheck:
    """Check every call of ``model`` against the sample shape of ``example`` (one hook, replacing an older one):
    the first positional input, or the keyword input ``input_name`` when the call passes it by name."""
    check = InputCheck(tuple(example.shape[1:]), input_name, first_layer)
    _attach(model, check)
    return check


def check_input(model: nn.Module, x: object) -> None:
    """The check of :func:`install`, for a caller that runs the model's graph without calling it (to_integer)."""
    check = getattr(model, "lowbit_input_check", None)
    if isinstance(check, InputCheck):
        check.check(x)


__all__ = ["InputCheck", "check_input", "install"]
