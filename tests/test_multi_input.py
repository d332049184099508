"""Multi-input models through PTQ: every input of a calibration batch reaches the model.

A batch is a tensor (one input), a dict (keyword inputs) or a tuple: ``(x, y, ...)`` of a labelled
loader when ``forward`` takes exactly one positional argument, else one positional input per
element (``lowbit.calibration.call_inputs``). The oracles: the float model, the range of the data
each observer must have seen (computed here in float), and the same model calibrated with the
other batch form.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lowbit.calibration import act_quantizers, arity_of, call_inputs
from lowbit.errors import ConfigError, DataError, LowbitWarning, ShapeError
from lowbit.integer import to_integer
from lowbit.ptq import PTQConfig, calibrate, convert, equalize_channels, prepare, quantize


class TwoInputs(nn.Module):
    """Two branches summed: ``x`` and ``z`` each feed their own Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(6, 16), nn.Linear(16, 4)

    def forward(self, x, z):
        return self.head(torch.relu(self.a(x) + self.b(z)))


class Deeper(TwoInputs):
    """``x`` through two layers (a pair channel equalization rescales), ``z`` through one."""

    def __init__(self):
        super().__init__()
        self.a2 = nn.Linear(16, 16)

    def forward(self, x, z):
        return self.head(torch.relu(self.a2(torch.relu(self.a(x))) + self.b(z)))


class Masked(nn.Module):
    """``forward(x, mask=None)``: the mask multiplies the hidden activations."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x, mask=None):
        h = torch.relu(self.a(x))
        if mask is not None:
            h = h * mask
        return self.head(h)


class OneInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.a(x)))


class ShapeControlled(TwoInputs):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export can."""

    def forward(self, x, z, mask=None):
        h = self.a(x) + self.b(z)
        if x.shape[-1] == 8:
            h = torch.relu(h)
        return self.head(h if mask is None else h + mask)


class DataBranch(TwoInputs):
    """A data-dependent branch: neither torch.fx nor torch.export captures it (eager module swap)."""

    def forward(self, x, z):
        h = self.a(x) if x.sum() > -1e9 else self.a(-x)
        return self.head(torch.relu(h + self.b(z)))


def _pairs(n: int = 4, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, z) batches; ``z`` on a much wider range than ``x`` so a grid made from ``x`` would clip it."""
    return [(torch.randn(size, 8), 5 * torch.randn(size, 6) + 2) for _ in range(n)]


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return 10 * math.log10(float(ref.pow(2).sum()) / float((ref - out).pow(2).sum()))


def _feeding(q: torch.fx.GraphModule, layer: str) -> nn.Module:
    """The activation quantizer in front of ``layer`` in a prepared graph."""
    node = next(n for n in q.graph.nodes if n.op == "call_module" and n.target == layer)
    return q.get_submodule(node.args[0].target)


def _scales(q: nn.Module) -> list[tuple[float, int]]:
    return [(float(a.scale), int(a.zero_point)) for a in act_quantizers(q)]


def test_a_two_input_model_is_quantized_and_its_second_branch_calibrated():
    model, data = TwoInputs().eval(), _pairs()
    q = quantize(model, data)
    x, z = torch.randn(256, 8), 5 * torch.randn(256, 6) + 2
    with torch.no_grad():
        assert _sqnr_db(model(x, z), q(x, z)) > 25  # W8A8 close to float
    observer = _feeding(q, "b").observer  # the input grid of z's branch saw the z batches, not x
    zs = torch.cat([z for _, z in data])
    lo, hi = observer.range()
    assert float(lo) == pytest.approx(float(zs.min()), abs=1e-6)
    assert float(hi) == pytest.approx(float(zs.max()), abs=1e-6)
    xs = torch.cat([x for x, _ in data])
    assert float(_feeding(q, "a").observer.range()[1]) == pytest.approx(float(xs.max()), abs=1e-6)


def test_dict_batches_give_what_tuple_batches_give():
    model, data = TwoInputs().eval(), _pairs()
    as_tuples = quantize(model, data)
    as_dicts = quantize(model, [{"z": z, "x": x} for x, z in data])  # key order does not matter
    assert _scales(as_dicts) == _scales(as_tuples)
    x, z = torch.randn(64, 8), torch.randn(64, 6)
    with torch.no_grad():
        assert torch.equal(as_dicts(x, z), as_tuples(x, z))
        assert torch.equal(as_dicts(x=x, z=z), as_tuples(x, z))
    for call in (lambda q: q(torch.randn(4, 9), z[:4]), lambda q: q(x=torch.randn(4, 9), z=z[:4])):
        with pytest.raises(ShapeError, match=r"input 'x' .* expects shape \(N, 8\)"):  # the first input is checked
            call(as_dicts)


@pytest.mark.parametrize("config", [PTQConfig(rounding="gptq"), PTQConfig(equalize=True),
                                    PTQConfig(bias_correction=False)], ids=["gptq", "equalize", "no_bias_correction"])
def test_gptq_equalization_and_bias_correction_see_every_input(config):
    model, data = Deeper().eval(), _pairs()
    as_tuples = quantize(model, data, config)
    as_dicts = quantize(model, [{"x": x, "z": z} for x, z in data], config)
    x, z = torch.randn(256, 8), 5 * torch.randn(256, 6) + 2
    with torch.no_grad():
        assert torch.equal(as_dicts(x, z), as_tuples(x, z))
        assert _sqnr_db(model(x, z), as_tuples(x, z)) > 25


def test_equalize_channels_runs_tuple_batches():
    model, data = Deeper().eval(), _pairs()
    p = prepare(model, PTQConfig(), tuple(t[:1] for t in data[0]))
    with torch.no_grad():
        before = p(*data[0])
    assert equalize_channels(p, data) == 1  # the pair (a, a2)
    with torch.no_grad():  # exact on the data: the float function is unchanged
        assert torch.allclose(p(*data[0]), before, atol=1e-5)


def _masked_data(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(32, 8), 4 * (torch.rand(32, 16) > 0.5).float()) for _ in range(n)]


def test_a_mask_in_a_tuple_batch_is_used():
    model, data = Masked().eval(), _masked_data()
    with pytest.warns(UserWarning, match="stay in float: mul"):
        with pytest.warns(LowbitWarning, match=r"fill Masked.forward's optional parameter\(s\) mask by position"):
            with_mask = quantize(model, data)
    with pytest.warns(UserWarning, match="stay in float: mul"):
        as_dict = quantize(model, [{"x": x, "mask": m} for x, m in data])
    without = quantize(model, [x for x, _ in data])  # no mask: nothing stays float
    with torch.no_grad():  # oracle: the head's input range is that of relu(a(x)) * mask over the batches
        masked = torch.cat([torch.relu(model.a(x)) * m for x, m in data])
        plain = torch.cat([torch.relu(model.a(x)) for x, _ in data])
    assert float(_feeding(with_mask, "head").observer.range()[1]) == pytest.approx(float(masked.max()), rel=1e-6)
    assert float(without.a.output_quant.observer.range()[1]) == pytest.approx(float(plain.max()), rel=1e-6)
    assert _scales(with_mask) != _scales(without)
    assert _scales(as_dict) == _scales(with_mask)
    x, m = _masked_data(1)[0]
    with torch.no_grad():
        assert torch.equal(as_dict(x, m), with_mask(x, m))
        assert _sqnr_db(model(x, m), with_mask(x, m)) > 25
        assert _sqnr_db(model(x), without(x)) > 25


def test_a_parameter_left_at_its_default_is_fixed_not_an_input():
    model, data = Masked().eval(), _masked_data()
    q = quantize(model, [x for x, _ in data])  # no mask given: traced with mask=None
    assert [n.target for n in q.graph.nodes if n.op == "placeholder"] == ["x"]
    assert to_integer(q, (data[0][0][:2],)) is not None  # one input: the integer path takes it


def test_x_y_pairs_of_a_one_input_model_are_read_as_before():
    model = OneInput().eval()
    xs = [torch.randn(32, 8) for _ in range(3)]
    labelled = [(x, torch.randint(0, 4, (32,))) for x in xs]
    plain = quantize(model, xs)
    pairs = quantize(model, labelled)
    triples = quantize(model, [[x, y, torch.arange(32)] for x, y in labelled])  # lists and longer tuples too
    assert _scales(pairs) == _scales(plain) == _scales(triples)
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert torch.equal(pairs(x), plain(x)) and torch.equal(triples(x), plain(x))


def test_prepare_takes_several_positional_inputs_and_keyword_inputs():
    model, data = Masked().eval(), _masked_data()
    x, m = data[0]
    with pytest.warns(UserWarning, match="stay in float: mul"):
        p = prepare(model, PTQConfig(), (x[:1],), example_kwargs={"mask": m[:1]})
    calibrate(p, data, progress=False)
    convert(p)
    with pytest.warns(UserWarning, match="stay in float: mul"):
        q = quantize(model, data)
    assert _scales(p) == _scales(q)
    two = prepare(TwoInputs().eval(), PTQConfig(), (torch.randn(1, 8), torch.randn(1, 6)))
    assert [n.target for n in two.graph.nodes if n.op == "placeholder"] == ["x", "z"]


def test_torch_export_captures_a_multi_input_model_with_a_shared_dynamic_batch():
    from lowbit.graph.export_lift import _export

    model = ShapeControlled().eval()
    x, z, m = torch.randn(4, 8), torch.randn(4, 6), torch.randn(4, 16)
    ep = _export(model, (x, z), {"mask": m})
    batch = {str(n.meta["val"].shape[0]) for n in ep.graph.nodes if n.op == "placeholder" and n.name in ("x", "z", "mask")}
    assert len(batch) == 1 and not batch.pop().isdigit()  # one symbol, shared by every input
    data = [(torch.randn(32, 8), torch.randn(32, 6), torch.randn(32, 16)) for _ in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize(model, data)
        qd = quantize(model, [{"x": a, "z": b, "mask": c} for a, b, c in data])
    assert sum("captured with torch.export" in str(w.message) for w in caught) == 2
    a, b, c = torch.randn(7, 8), torch.randn(7, 6), torch.randn(7, 16)
    with torch.no_grad():
        assert _sqnr_db(model(a, b, c), q(a, b, c)) > 25
        assert torch.equal(qd(a, b, c), q(a, b, c))


def test_eager_module_swap_runs_every_input():
    model, data = DataBranch().eval(), _pairs()
    with pytest.warns(UserWarning, match="falling back to eager module swap"):
        q = quantize(model, data)
    zs = torch.cat([z for _, z in data])
    assert float(q.b[0].observer.range()[1]) == pytest.approx(float(zs.max()), abs=1e-6)
    x, z = torch.randn(64, 8), 5 * torch.randn(64, 6) + 2
    with torch.no_grad():
        assert _sqnr_db(model(x, z), q(x, z)) > 25


def test_the_rule_reads_the_signature_once():
    two, one = arity_of(TwoInputs()), arity_of(OneInput())
    x, z = torch.randn(2, 8), torch.randn(2, 6)
    assert call_inputs((x, z), two)[0] == (x, z)
    assert call_inputs((x, z), one) == ((x,), {})  # a one-input model: (x, y)
    assert call_inputs({"x": x, "z": z}, two) == ((), {"x": x, "z": z})
    assert call_inputs(x, one) == ((x,), {})

    class Star(nn.Module):
        def forward(self, *args):
            return sum(args)

    assert call_inputs((x, x, x), arity_of(Star()))[0] == (x, x, x)  # *args: any number, all inputs


# ---------------------------------------------------------------- errors


def test_a_key_forward_does_not_accept_is_named():
    x, z = _pairs(1)[0]
    with pytest.raises(DataError, match=r"calibration batch 0: key 'w' is not an input of TwoInputs.forward, which "
                                        r"accepts x, z"):
        quantize(TwoInputs().eval(), [{"x": x, "w": z}])


def test_a_tuple_longer_than_forward_takes_is_refused():
    x, z = _pairs(1)[0]
    with pytest.raises(DataError, match=r"calibration batch 0: 3 positional inputs, but TwoInputs.forward takes at "
                                        r"most 2 \(x, z\)"):
        quantize(TwoInputs().eval(), [(x, z, z)])
    with pytest.raises(DataError, match=r"calibration batch 1: 3 positional inputs"):
        quantize(TwoInputs().eval(), [(x, z), (x, z, z)])
    with pytest.raises(DataError, match=r"example_inputs: 2 positional inputs, but OneInput.forward takes at most 1"):
        prepare(OneInput(), PTQConfig(), (x[:1], x[:1]))


def test_a_missing_input_is_named():
    x, _ = _pairs(1)[0]
    with pytest.raises(DataError, match=r"calibration batch 0: no value for z, which TwoInputs.forward\(x, z\) needs"):
        quantize(TwoInputs().eval(), [x])


@pytest.mark.parametrize("spoil, message", [
    (lambda z: z[:0], r"calibration batch 1, input 'z', is empty or not a tensor"),
    (lambda z: z.index_fill(0, torch.tensor([3]), float("nan")), r"calibration batch 1, input 'z', holds NaN or inf"),
    (lambda z: z.flatten(), r"calibration batch 1, input 'z', has shape \(192,\) but batch 0 had \(32, 6\)"),
], ids=["empty", "nan", "rank"])
def test_a_bad_second_tensor_is_named(spoil, message):
    (x0, z0), (x1, z1) = _pairs(2)
    with pytest.raises(DataError, match=message):
        quantize(TwoInputs().eval(), [(x0, z0), (x1, spoil(z1))])


def test_a_nan_in_the_second_tensor_of_batch_0_is_named():
    x, z = _pairs(1)[0]
    z[0, 0] = float("nan")
    with pytest.raises(DataError, match=r"calibration batch 0, input 'z', holds NaN"):
        quantize(TwoInputs().eval(), [(x, z)])


def test_batches_that_give_other_inputs_than_batch_0_are_refused():
    data = _masked_data(2)
    with pytest.warns(UserWarning, match="stay in float: mul"):
        p = prepare(Masked().eval(), PTQConfig(), (data[0][0][:1],), example_kwargs={"mask": data[0][1][:1]})
    with pytest.raises(DataError, match=r"calibration batch 1 gives the inputs \(x\) but batch 0 gave \(x, mask\)"):
        calibrate(p, [data[0], {"x": data[1][0]}], progress=False)


def test_a_two_input_model_lowers_to_integers_equal_to_the_simulation():
    data = _pairs()
    q = quantize(TwoInputs().eval(), data)
    im = to_integer(q, data[0])
    assert im.input_names == ["x", "z"]
    x, z = _pairs(1)[0]
    with torch.no_grad():
        assert torch.equal(im(x, z), q(x, z))
    with pytest.raises(ConfigError, match=r"to_integer: the model takes 2 inputs \(x, z\); example_inputs must be"):
        to_integer(q, data[0][:1])
