"""Cost model: MACs and BOPs against hand computation, energy, the report files."""

import json

import pytest
import torch
from torch import nn

from lowbit import zoo
from lowbit.cost import report as rep
from lowbit.cost.energy import DEFAULT_TABLE, EnergyTable, energy, mac_energy, requant_energy
from lowbit.cost.profile import profile, totals
from lowbit.cost.speed import warnings_for
from lowbit.data import fashion_mnist
from lowbit.errors import ConfigError, DataError
from lowbit.ptq import PTQConfig, int_weight, quantize, with_pow2_scales

X = (torch.randn(2, 1, 28, 28),)

# hand computation, per sample
CNN_MACS = {"conv1": 28 * 28 * 32 * 25, "conv2": 14 * 14 * 64 * 32 * 25, "fc1": 128 * 3136, "fc2": 10 * 128}
MLP_MACS = {"fc1": 256 * 784, "fc2": 256 * 256, "fc3": 10 * 256}


@pytest.mark.parametrize("name,macs", [("cnn", CNN_MACS), ("mlp", MLP_MACS)])
def test_float_macs_and_bops_equal_hand_computation(name, macs):
    rows = profile(zoo.pretrained(name), X)
    assert {r.name: r.macs for r in rows} == macs
    assert all(r.bops == r.macs * 32 * 32 for r in rows)
    assert totals(rows).params == sum(p.numel() for n, p in zoo.pretrained(name).named_parameters() if "bn" not in n)


def test_quantized_profile_reports_widths_and_requantizations():
    calib = fashion_mnist("train").take(32).x
    sim = quantize(zoo.pretrained("cnn"), [calib], PTQConfig(int_weight(4)))
    rows = {r.name: r for r in profile(sim, X)}
    assert {n: r.macs for n, r in rows.items()} == CNN_MACS  # fusion keeps the arithmetic
    assert (rows["conv1"].weight_bits, rows["conv2"].weight_bits, rows["fc2"].weight_bits) == (8, 4, 8)
    assert rows["conv2"].bops == CNN_MACS["conv2"] * 4 * 8
    assert rows["conv2"].requant == "multiplier" and rows["conv2"].requant_ops == 14 * 14 * 64
    assert rows["fc2"].requant == "dequantize"
    pow2 = {r.name: r for r in profile(quantize(zoo.pretrained("cnn"), [calib], with_pow2_scales(PTQConfig())), X)}
    assert pow2["conv2"].requant == "shift"
    assert rows["conv2"].weight_bytes == (64 * 32 * 25 * 4 + 64 * 32) / 8


def test_hand_made_binary_ternary_pow2_layers_and_event_counts():
    layer = nn.Sequential(nn.Linear(100, 10))
    x = torch.randn(4, 100)
    x[:, ::2] = 0  # half the inputs are zero: half the events
    for bits, want in [((1, 1), 1000), ((2, 8), 16000), ((4, 8), 32000)]:  # binary, ternary, 4-bit pow2
        (r,) = profile(layer, (x,), widths={"0": bits})
        assert r.macs == 1000 and r.bops == want
        assert r.weight_bytes == (1000 * bits[0] + 10 * 32) / 8
        assert r.events == pytest.approx(0.5)


def test_energy_model_orders_versions_and_shift_is_cheaper_than_multiplier():
    t = EnergyTable.load()
    assert mac_energy(8, 8, t) < mac_energy(4, 8, t) * 2.01 and mac_energy(32, 32, t) == 3.7 + 0.9
    assert requant_energy("shift", t) < requant_energy("multiplier", t)
    calib = fashion_mnist("train").take(32).x
    model = zoo.pretrained("cnn")
    e32 = energy(profile(model, X), t)
    e8 = energy(profile(quantize(model, [calib], PTQConfig()), X), t)
    e4 = energy(profile(quantize(model, [calib], PTQConfig(int_weight(4))), X), t)
    assert e32.total > 5 * e8.total > 5 * 0.5 * e4.total
    assert e8.compute == pytest.approx(sum(CNN_MACS.values()) * (0.2 + 0.1), rel=1e-9)


def test_user_energy_table_and_bad_table(tmp_path):
    good = json.loads(DEFAULT_TABLE.read_text())
    good["energy"]["int8_mult"] = 0.1
    (tmp_path / "t.json").write_text(json.dumps(good))
    assert EnergyTable.load(tmp_path / "t.json").energy["int8_mult"] == 0.1
    (tmp_path / "bad.json").write_text('{"energy": {}}')
    with pytest.raises(ConfigError, match="lacks"):
        EnergyTable.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        EnergyTable.load(tmp_path / "missing.json")
    with pytest.raises(DataError):
        profile(zoo.pretrained("mlp"), [torch.randn(1, 784)])


def test_missing_instructions_are_named():
    assert warnings_for(["int8"], {"avx2"}) and "vnni" in warnings_for(["int8"], {"avx2"})[0]
    assert warnings_for(["int8", "binary"], {"avx512_vnni", "avx512_vpopcntdq"}) == []


def test_report_files_are_written_and_consistent(tmp_path):
    model = zoo.pretrained("mlp")
    rows = profile(model, X)
    v = rep.Version("float32", 32, 0.9, rows, energy(rows), {"batch 1": 120.0})
    r = rep.Report("test report", [v, rep.Version("W8A8", 8, 0.89, rows, energy(rows), {"batch 1": 60.0})],
                   "machine", ["a warning"], [(1, 0.8), (4, 0.85)], [("fc1", 0.3)], ["a note"])
    paths = rep.write(r, tmp_path)
    html = paths["html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert html.count("<svg") >= 5 and "a warning" in html
    data = json.loads(paths["json"].read_text())
    assert data["versions"][0]["totals"]["macs"] == sum(MLP_MACS.values())
    assert "| W8A8 |" in paths["md"].read_text()


def test_mac_area_scales_with_widths():
    from lowbit.cost.energy import mac_area

    t = EnergyTable.load()
    assert mac_area(8, 8, t) == 282 + 137
    assert mac_area(32, 32, t) == 7700 + 4184
    assert mac_area(4, 8, t) < mac_area(8, 8, t) < mac_area(32, 32, t)


def test_report_shows_predicted_next_to_measured_speedup():
    rows = profile(zoo.pretrained("mlp"), X)
    calib = fashion_mnist("train").take(32).x
    q_rows = profile(quantize(zoo.pretrained("mlp"), [calib], PTQConfig()), X)
    r = rep.Report("r", [rep.Version("float32", 32, 0.9, rows, energy(rows), {"batch 1": 100.0}),
                         rep.Version("W8A8", 8, 0.9, q_rows, energy(q_rows), {"batch 1": 50.0})])
    md = rep.to_markdown(r)
    assert "16.0x / batch 1: 2.00x" in md  # 32x32 / 8x8 bit-operations; 100 us / 50 us measured


def test_lns_mac_is_priced_as_adds_of_its_width():
    from lowbit.cost.energy import EnergyTable, lns_mac_energy, mac_energy

    t = EnergyTable.load()
    add = t.energy["int32_add"]
    assert lns_mac_energy(16, "lut", t) == pytest.approx(3 * add / 2)  # multiply = add, [+] = subtract + add
    assert lns_mac_energy(16, "max", t) == pytest.approx(add)
    assert lns_mac_energy(32, "exact", t) == pytest.approx(3 * add)
    assert lns_mac_energy(16, "lut", t) < mac_energy(8, 8, t) < mac_energy(32, 32, t)
    with pytest.raises(ConfigError, match="4..32"):
        lns_mac_energy(2, "lut", t)
    with pytest.raises(ConfigError, match="exact, lut, max, shift"):
        lns_mac_energy(16, "table", t)


def test_report_shows_slice_sparsity_and_the_lns_compute_estimate(tmp_path):
    from lowbit.cost.bitslice import adc_bits, slice_sparsity
    from lowbit.cost.energy import lns_mac_energy

    model = zoo.pretrained("mlp")
    rows = profile(model, X)
    r = rep.Report("t", [rep.Version("float32", 32, 0.9, rows, energy(rows))], "machine")
    r.slices, r.adc_bits = slice_sparsity(model), adc_bits(model).max_bits
    r.lns16_compute_pj = sum(x.macs for x in rows) * lns_mac_energy(16, "lut", EnergyTable.load())
    paths = rep.write(r, tmp_path)
    md, data = paths["md"].read_text(), json.loads(paths["json"].read_text())
    assert "Bit-slice sparsity" in md and "| all |" in md and "Bit-slice sparsity" in paths["html"].read_text()
    assert [s["zero"] for s in data["bit_slices"]] == [list(s.zero) for s in r.slices]
    assert data["lns16_compute_pJ"] == pytest.approx(sum(MLP_MACS.values()) * 0.1 * 16 / 32 * 3)
    assert r.lns16_compute_pj < r.versions[0].energy.compute / 10  # fp32 MAC 4.6 pJ vs lns16 0.15 pJ


def test_energy_names_its_weight_memory_and_prices_at_an_equal_level():
    t = EnergyTable.load()
    calib = fashion_mnist("train").take(32).x
    f_rows = profile(zoo.pretrained("cnn"), X)
    q_rows = profile(quantize(zoo.pretrained("cnn"), [calib], PTQConfig()), X)
    e32, e8 = energy(f_rows, t), energy(q_rows, t)
    assert (e32.weight_memory, e8.weight_memory) == ("dram_64bit", "sram_1mb_64bit")  # 1.78 MB against 445 KB
    same = energy(q_rows, t, weight_memory=e32.weight_memory)
    assert same.weights == pytest.approx(totals(q_rows).weight_bytes * t.energy["dram_64bit"] / 8)
    assert same.compute == e8.compute and same.total > e8.total
    assert e32.total / same.total < e32.total / e8.total / 5  # most of the headline saving is the memory cliff
    with pytest.raises(ConfigError, match="weight_memory must be one of sram_1mb_64bit, dram_64bit"):
        energy(q_rows, t, weight_memory="L1")


def test_report_shows_the_memory_level_the_equal_level_saving_and_the_quantized_share():
    from lowbit.cost.profile import coverage_warning

    calib = fashion_mnist("train").take(32).x
    t = EnergyTable.load()
    f_rows = profile(zoo.pretrained("cnn"), X)
    q_rows = profile(quantize(zoo.pretrained("cnn"), [calib], PTQConfig()), X)
    e32 = energy(f_rows, t)
    versions = [rep.Version("float32", 32, 0.93, f_rows, e32, energy_same_memory=e32),
                rep.Version("W8A8", 8, 0.93, q_rows, energy(q_rows, t),
                            energy_same_memory=energy(q_rows, t, weight_memory=e32.weight_memory))]
    md = rep.to_markdown(rep.Report("r", versions))
    w8 = next(line for line in md.splitlines() if line.startswith("| W8A8 |"))
    cells = [c.strip() for c in w8.strip("|").split("|")]
    head = [c.strip() for c in md.splitlines()[4].strip("|").split("|")]
    row = dict(zip(head, cells))
    assert row["MACs quantized"] == "100.0%" and row["weights read from"] == "SRAM 1 MB"
    headline = float(row["energy saving"].rstrip("x"))
    equal = float(row["saving, weights at the float's memory level"].rstrip("x"))
    assert equal == pytest.approx(e32.total / versions[1].energy_same_memory.total, abs=0.06) and equal < headline
    assert coverage_warning(q_rows) is None and coverage_warning(f_rows) is not None
    assert rep.to_dict(rep.Report("r", versions))["versions"][1]["quantized_mac_share"] == 1.0


def test_accuracy_axes_do_not_blow_a_tenth_of_a_point_up_to_the_full_height():
    assert rep.y_range([93.2, 93.3], rep.ACCURACY_SPAN, (0, 100)) == pytest.approx((90.75, 95.75))
    assert rep.y_range([99.9, 100.0], rep.ACCURACY_SPAN, (0, 100)) == pytest.approx((95.0, 100.0))
    assert rep.y_range([40.0, 90.0], rep.ACCURACY_SPAN, (0, 100)) == (40.0, 90.0)  # a wide range is kept
    svg = rep.svg_line("acc", [1, 4], [93.2, 93.3], "n", "%", min_span=rep.ACCURACY_SPAN, bounds=(0, 100))
    assert ">95.8<" in svg and ">90.8<" in svg  # the labelled ends are the widened range
