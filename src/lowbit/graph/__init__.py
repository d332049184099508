"""Graph capture and rewriting: trace with torch.fx, fold BatchNorm, fuse into unified modules."""

from lowbit.graph.fx_passes import (
    FusionPlan,
    TraceFailed,
    fold_batchnorm,
    fuse_unified,
    insert_input_quantizers,
    trace,
)

__all__ = ["FusionPlan", "TraceFailed", "fold_batchnorm", "fuse_unified", "insert_input_quantizers", "trace"]
