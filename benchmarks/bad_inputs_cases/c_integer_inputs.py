"""Integer-model inputs: wrong channels, spatial size, rank, dtype, NaN/inf, empty batches, odd memory
layouts - on the in-memory model (one C call per model), op by op, on a reloaded model and on the
simulation. Valid inputs must give the simulation's output bit for bit."""

from __future__ import annotations

import math

import torch

from bad_inputs_cases import Wrong, add, fixtures

CAT = "integer_inputs"


def _model(name: str, path: str):
    if path == "loaded":
        from lowbit.integer import load_integer
        return load_integer(fixtures.saved(name))
    from lowbit.integer.backend import Kernels
    im = fixtures.integer(name)
    return im.with_kernels(Kernels.VNNI) if path == "opbyop" else im


def _call(name: str, path: str, x: torch.Tensor) -> str:
    with torch.no_grad():
        out = _model(name, path)(x)
    return f"returned {tuple(out.shape)} {out.dtype}, finite {bool(torch.isfinite(out).all())}"


def _equal_sim(name: str, path: str, x: torch.Tensor, ref_x: torch.Tensor | None = None) -> str:
    with torch.no_grad():
        out = _model(name, path)(x)
        ref = fixtures.sim(name)(ref_x if ref_x is not None else x)
    if out.shape != ref.shape or not torch.equal(out, ref):
        diff = float((out.float() - ref).abs().max()) if out.shape == ref.shape else math.nan
        raise Wrong(f"integer model differs from the simulation: shapes {tuple(out.shape)} vs {tuple(ref.shape)}, "
                    f"max diff {diff}")
    return "equal to the simulation"


def _x(n=4, c=1, h=28, w=28, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, h, w, generator=g).to(dtype)


BAD = {
    "2_channels": lambda: _x(c=2),
    "3_channels": lambda: _x(c=3),
    "0_channels": lambda: _x(c=0),
    "27x27": lambda: _x(h=27, w=27),
    "14x14": lambda: _x(h=14, w=14),
    "1x1": lambda: _x(h=1, w=1),
    "unbatched_3d": lambda: _x()[0],
    "rank_5": lambda: _x().unsqueeze(0),
    "rank_2": lambda: _x()[0, 0],
    "nan": lambda: _x().index_put_((torch.tensor([1]), torch.tensor([0]), torch.tensor([5]), torch.tensor([5])),
                                   torch.tensor(math.nan)),
    "inf": lambda: torch.where(torch.arange(784).reshape(1, 1, 28, 28) == 300, math.inf, _x()),
    "neg_inf": lambda: torch.where(torch.arange(784).reshape(1, 1, 28, 28) == 300, -math.inf, _x()),
    "int8": lambda: _x(dtype=torch.int8),
    "uint8": lambda: (_x() * 50 + 100).clamp(0, 255).to(torch.uint8),
    "int64": lambda: _x(dtype=torch.int64),
    "bool": lambda: _x() > 0,
    "complex": lambda: _x().to(torch.cfloat),
    "not_a_tensor": lambda: _x().numpy(),
}

for name in ("cnn", "resnet", "mlp"):
    for path in ("plan", "opbyop", "loaded"):
        for tag in ("2_channels", "3_channels", "nan", "inf"):
            if name == "mlp" and path == "opbyop" and tag != "3_channels":
                continue
            add(CAT, f"{name}_{path}_{tag}", "error", lambda n=name, p=path, t=tag: _call(n, p, BAD[t]()))
for tag in ("0_channels", "27x27", "14x14", "1x1", "unbatched_3d", "rank_5", "rank_2", "neg_inf", "int8", "uint8",
            "int64", "bool", "complex", "not_a_tensor"):
    add(CAT, f"cnn_plan_{tag}", "error", lambda t=tag: _call("cnn", "plan", BAD[t]()))
for tag in ("27x27", "rank_5", "int64", "14x14"):
    add(CAT, f"resnet_plan_{tag}", "error", lambda t=tag: _call("resnet", "plan", BAD[t]()))
for tag in ("27x27", "int8"):
    add(CAT, f"mlp_plan_{tag}", "error", lambda t=tag: _call("mlp", "plan", BAD[t]()))

# the simulation on the same bad inputs (the issue: both paths must follow one rule)
for tag in ("3_channels", "nan", "inf", "27x27"):
    add(CAT, f"cnn_simulation_{tag}", "error", lambda t=tag: _call_sim("cnn", BAD[t]()))


def _call_sim(name, x):
    with torch.no_grad():
        out = fixtures.sim(name)(x)
    return f"returned {tuple(out.shape)}"


# legitimate inputs: the integer model must equal the simulation
for name in ("cnn", "resnet", "mlp"):
    for path in ("plan", "opbyop", "loaded"):
        add(CAT, f"{name}_{path}_valid_batch_16", "valid", lambda n=name, p=path: _equal_sim(n, p, fixtures.xs(16)))
add(CAT, "cnn_plan_valid_batch_1", "valid", lambda: _equal_sim("cnn", "plan", fixtures.xs(1)))
add(CAT, "cnn_plan_valid_batch_300", "valid", lambda: _equal_sim("cnn", "plan", fixtures.test().x[:300]))
add(CAT, "resnet_plan_valid_batch_1000", "valid", lambda: _equal_sim("resnet", "plan", fixtures.test().x[:1000]))
add(CAT, "cnn_plan_non_contiguous", "valid",
    lambda: _equal_sim("cnn", "plan", fixtures.xs(8).transpose(2, 3).contiguous().transpose(2, 3)))
add(CAT, "cnn_plan_strided_view", "valid", lambda: _equal_sim("cnn", "plan", fixtures.test().x[:32:4]))
add(CAT, "resnet_plan_channels_last", "valid",
    lambda: _equal_sim("resnet", "plan", fixtures.xs(8).to(memory_format=torch.channels_last)))
add(CAT, "mlp_plan_expanded_view", "valid", lambda: _equal_sim("mlp", "plan", fixtures.xs(1).expand(6, 1, 28, 28)))
add(CAT, "cnn_plan_requires_grad", "valid", lambda: _equal_sim("cnn", "plan", fixtures.xs(4).requires_grad_()))
add(CAT, "resnet_plan_56x56_global_pool", "any",
    lambda: _equal_sim("resnet", "plan", torch.nn.functional.interpolate(fixtures.xs(4), scale_factor=2)))
add(CAT, "mlp_plan_unbatched_3d_like_the_float_model", "any", lambda: _equal_sim("mlp", "plan", fixtures.xs(1)[0]))
add(CAT, "cnn_plan_empty_batch", "any", lambda: _empty("cnn"))
add(CAT, "resnet_plan_empty_batch", "any", lambda: _empty("resnet"))
add(CAT, "cnn_plan_float64", "any", lambda: _equal_sim("cnn", "plan", fixtures.xs(4).double(), fixtures.xs(4)))
add(CAT, "cnn_plan_float16", "any", lambda: _equal_sim("cnn", "plan", fixtures.xs(4).half(), fixtures.xs(4).half().float()))


def _empty(name):
    with torch.no_grad():
        out = fixtures.integer(name)(torch.empty(0, 1, 28, 28))
    if tuple(out.shape) != (0, 10):
        raise Wrong(f"empty batch gave shape {tuple(out.shape)}")
    return "empty batch -> (0, 10)"


def _interleaved() -> str:
    """A bad call between two good ones must leave the model working (no stale plan, no corrupted buffers)."""
    from lowbit.errors import LowbitError
    im = fixtures.integer("cnn")
    x = fixtures.xs(8)
    with torch.no_grad():
        a = im(x)
        try:
            im(_x(c=3))
        except LowbitError:
            pass
        except Exception:  # noqa: BLE001 - an unclear error is reported by the 3-channel cases
            pass
        b = im(x)
    if not torch.equal(a, b) or not torch.equal(a, fixtures.sim_out("cnn")[:8]):
        raise Wrong("after a bad call the model gives other outputs")
    return "unchanged after a bad call"


add(CAT, "cnn_good_bad_good_calls", "valid", _interleaved)
