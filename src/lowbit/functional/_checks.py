"""Input checks shared by the functional ops (clear errors instead of silent NaNs)."""

from __future__ import annotations

import torch

from lowbit.errors import DataError


def check_tensor(x: torch.Tensor, what: str = "input") -> torch.Tensor:
    """Reject empty tensors and tensors with NaN or inf, naming the problem and the fix."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise DataError(f"{what} is empty (shape {tuple(x.shape)}): pass at least one element")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise DataError(
            f"{what} holds {n_nan} NaN and {n_inf} inf values: quantization needs finite numbers; "
            "check the data pipeline (normalisation, division by zero) or the model for overflow"
        )
    return x
