"""Build the report for a shipped model: float32 and its PTQ versions, measured on this machine.

Versions: float32; W8A8, W8A8 with power-of-two scales (requantization by shift) and W4A8, each
run as lowbit's integer-only model (its accuracy is the simulation's, bit for bit). For each:
accuracy on the test set, the per-layer profile, the 45 nm energy model, and latency at batch 1
and 64 (1 thread, all versions interleaved in one run). Plus the W8A8 calibration curve and the
per-layer sensitivity, and a warning when the CPU lacks VNNI.
"""

from __future__ import annotations

import platform

import torch

from lowbit import zoo
from lowbit.bench.latency import interleaved, torch_threads
from lowbit.cost.bitslice import adc_bits, slice_sparsity
from lowbit.cost.energy import EnergyTable, energy, lns_mac_energy, mac_area
from lowbit.cost.profile import coverage_warning, profile
from lowbit.cost.report import Report, Version
from lowbit.cost.speed import warnings_for
from lowbit.data import Split
from lowbit.diagnostics import layer_diagnostics
from lowbit.integer.lower import to_integer
from lowbit.ptq import PTQConfig, int_weight, quantize, with_pow2_scales
from lowbit.zoo.recipes import evaluate

VERSIONS = {"W8A8": PTQConfig(), "W8A8 pow2 (shift)": with_pow2_scales(PTQConfig()), "W4A8": PTQConfig(int_weight(4))}


def machine() -> str:
    """The CPU model name and the torch version, for the report's header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, torch {torch.__version__}"


SNN_STEPS = (4, 8)


def spiking_versions(model: torch.nn.Module, calib: Split, test: Split, ann_macs: float, table: EnergyTable,
                     images: int = 500) -> tuple[list, str]:
    """The model converted to spiking nets (IF and AugMapping c_max 4, 99.9th-percentile thresholds, analog input),
    run on the first ``images`` test images at T in :data:`SNN_STEPS`, priced against the int8 ANN."""
    from lowbit import snn
    from lowbit.cost.spiking import spiking_cost

    kinds = {"IF": snn.NeuronSpec(initial_potential=0.5),
             "AugMapping c4": snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=4, initial_potential=0.5)}
    costs = []
    for label, spec in kinds.items():
        net = snn.convert(model, [calib.x[:256]], neuron=spec)
        for row in snn.sweep(net, test.x[:images], test.y[:images], SNN_STEPS):
            costs.append(spiking_cost(label, row, ann_macs, table, 8, spec.max_spikes))
    note = (f"Spiking accuracies on the first {images} test images; energy = synaptic operations x (32-bit add"
            " [+ an 8 x 3-bit multiply for augmented events]) + the first layer's MACs on the analog image, against "
            "the int8 ANN's MACs x an 8-bit MAC (lowbit.cost.spiking). Spike counts and neuron updates are not priced.")
    return costs, note


def model_report(name: str, calib: Split, test: Split, latency_rounds: int = 10, curve: bool = True,
                 sensitivity: bool = True, table: EnergyTable | None = None, snn_images: int = 500) -> Report:
    """Float vs quantized versions of zoo model ``name`` (calibration on ``calib.x``); with ``snn_images`` > 0
    also its spiking versions priced against the int8 ANN (:func:`spiking_versions`)."""
    table = table or EnergyTable.load()
    model = zoo.pretrained(name)
    example = (calib.x[:2],)
    versions = [Version("float32", 32, evaluate(model, test), profile(model, example), None)]
    runners = {"float32": model}
    for label, config in VERSIONS.items():
        sim = quantize(model, [calib.x[:32]], config)
        im = to_integer(sim, example)
        rows = profile(sim, example)
        bits = 8 * sum(r.weight_bytes for r in rows) / max(sum(r.params for r in rows), 1)
        versions.append(Version(label, round(bits, 2), evaluate(im, test), rows, None))
        runners[label] = im
    for v in versions:
        v.energy = energy(v.rows, table)
    for v in versions:  # the same weights memory as float32: the saving without the DRAM -> SRAM cliff
        v.energy_same_memory = energy(v.rows, table, weight_memory=versions[0].energy.weight_memory)
        macs = sum(r.macs for r in v.rows)
        if table.area and macs:
            v.mac_area_um2 = sum(r.macs * mac_area(r.weight_bits, r.act_bits, table) for r in v.rows) / macs
    if latency_rounds:
        for batch in (1, 64):
            x = test.x[:batch]
            with torch_threads(1), torch.no_grad():
                t = interleaved({k: (lambda m=m: m(x)) for k, m in runners.items()}, latency_rounds)
            for v in versions:
                v.latency_us[f"batch {batch}"] = t[v.name].best_us
    coverage = [f"{v.name}: {w}" for v in versions[1:] if (w := coverage_warning(v.rows)) is not None]
    report = Report(f"lowbit report: {name} on Fashion-MNIST", versions, machine(), warnings_for(["int8"]) + coverage)
    report.slices, report.adc_bits = slice_sparsity(model), adc_bits(model).max_bits
    report.lns16_compute_pj = sum(r.macs for r in versions[0].rows) * lns_mac_energy(16, "lut", table)
    if snn_images:
        report.spiking, report.spiking_note = spiking_versions(model, calib, test, sum(r.macs for r in versions[0].rows),
                                                               table, snn_images)
    if curve:
        for n in (1, 4, 16, 64):
            im = to_integer(quantize(model, [calib.x[:n]], PTQConfig()), example)
            report.curve.append((n, evaluate(im, test)))
    if sensitivity:
        sim = quantize(model, [calib.x[:32]], PTQConfig(int_weight(4)))
        subset = Split(test.x[:2000], test.y[:2000])
        base = evaluate(model, subset)
        for d in layer_diagnostics(sim, calib.x, lambda m: evaluate(m, subset)):
            report.sensitivity.append((d.name, 100 * (base - d.sensitivity)))
    report.notes += [
        f"energy and area: {table.name}; {table.source}",
        "weights are read once per inference from a 1 MB SRAM when they fit, else from DRAM ('weights read from'); "
        "the next column prices every version's weights at the float model's level, so the saving shown there "
        "comes from the arithmetic and the smaller weights, not from a change of memory",
        "MAC unit area: multiplier + accumulator at each layer's widths, averaged over the MACs",
        "quantized versions: PTQ with 32 calibration images, first/last layer 8-bit; accuracy measured on "
        "lowbit's integer-only model (bit-identical to its simulation)",
        "latency: best of interleaved rounds, 1 thread; float32 is PyTorch eager",
        "sensitivity: W4A8 with only that layer quantized, on the first 2000 test images",
    ]
    return report


__all__ = ["VERSIONS", "machine", "model_report"]
