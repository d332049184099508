import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import Binary, DynamicFixedPoint, IntFormat, Log2, PowerOfTwo, Ternary, check_bits
from lowbit.granularity import PerChannel, PerGroup, PerKernel, PerTensor, broadcast, rows, unrows


@pytest.mark.parametrize("bits", range(1, 17))
def test_signed_and_unsigned_ranges(bits):
    s, u = IntFormat(bits), IntFormat(bits, signed=False)
    assert (s.qmin, s.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert (u.qmin, u.qmax) == (0, 2**bits - 1)
    assert s.n_levels == u.n_levels == 2**bits


def test_narrow_range_is_symmetric():
    f = IntFormat(8, narrow=True)
    assert (f.qmin, f.qmax) == (-127, 127)


@pytest.mark.parametrize("bad", [0, 17, -3, 2.5, "8", True, None])
def test_bad_bit_widths_are_named(bad):
    with pytest.raises(ConfigError, match="bits"):
        IntFormat(bad)


def test_check_bits_message_names_range():
    with pytest.raises(ConfigError, match=r"1\.\.16"):
        check_bits(17)


def test_other_formats_levels():
    assert PowerOfTwo(3).levels() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    assert Ternary().levels() == [-1, 0, 1]
    assert Binary().levels() == [-1, 1]
    assert Log2(4).n_exponents == 7
    assert DynamicFixedPoint(8).int_format == IntFormat(8)
    for bad in (lambda: PowerOfTwo(1), lambda: Log2(1), lambda: Ternary(3), lambda: Binary(2),
                lambda: IntFormat(8, signed=False, narrow=True)):
        with pytest.raises(ConfigError):
            bad()


def test_formats_are_frozen_values():
    assert IntFormat(4) == IntFormat(4) and hash(IntFormat(4)) == hash(IntFormat(4))
    with pytest.raises(AttributeError):
        IntFormat(4).bits = 5  # type: ignore[misc]


@pytest.mark.parametrize("g", [PerTensor(), PerChannel(0), PerChannel(1), PerChannel(-1), PerGroup(3),
                               PerGroup(2, axis=1), PerKernel()])
def test_rows_roundtrip(g):
    x = torch.randn(4, 6, 3, 3)
    r = rows(x, g)
    assert r.ndim == 2
    assert torch.equal(unrows(r, g, x.shape), x)
    # each row's broadcast value lands exactly on that row's elements
    ids = torch.arange(r.shape[0], dtype=torch.float32)
    assert torch.equal(rows(broadcast(ids, g, x.shape), g), ids[:, None].expand_as(r))


def test_per_channel_rows_are_channels():
    x = torch.randn(5, 7)
    assert torch.equal(rows(x, PerChannel(0))[2], x[2])
    assert torch.equal(rows(x, PerChannel(1))[3], x[:, 3])


def test_granularity_errors():
    x = torch.randn(4, 6)
    with pytest.raises(ConfigError, match="axis 2 is out of range"):
        rows(x, PerChannel(2))
    with pytest.raises(ConfigError, match="does not divide"):
        rows(x, PerGroup(4))
    with pytest.raises(ConfigError, match="PerKernel"):
        rows(x, PerKernel())
    with pytest.raises(ConfigError):
        PerGroup(0)
