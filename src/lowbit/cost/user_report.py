"""The cost report for the user's own model (``lowbit report --model FILE.py:FUNCTION | .pt2 | folder``).

The same versions as a shipped model's report (:data:`lowbit.cost.build.VERSIONS`: W8A8, W8A8 with
power-of-two scales, W4A8; PTQ on the user's calibration samples), priced the same way (per-layer
profile, 45 nm energy, measured latency at batch 1 and up to 64, interleaved, 1 thread). What differs:

* the quality column is the test accuracy when the samples carry labels (``y`` in the ``.npz``), else the
  share of samples whose decision (output argmax) agrees with float32's; the output cosine and SQNR against
  float32 of every version are listed in the notes;
* each version runs as lowbit's integer-only model when it lowers (checked equal to its simulation on the
  test samples), else as its simulation, and the notes say which and why;
* no calibration curve, per-layer sensitivity or spiking versions (they need a labelled classification
  task and a convertible CNN).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lowbit.bench.latency import interleaved, torch_threads
from lowbit.cost.build import VERSIONS, machine
from lowbit.cost.energy import EnergyTable, energy
from lowbit.cost.profile import coverage_warning, profile
from lowbit.cost.report import Report, Version
from lowbit.cost.speed import warnings_for
from lowbit.errors import LowbitError
from lowbit.ptq import quantize
from lowbit.user_model import Samples, compare, first_input, flat_outputs

CALIB = 64  # calibration samples (at most)


def _runner(sim: nn.Module, sim_out: torch.Tensor, test: Samples) -> tuple[nn.Module, str]:
    """The integer model of ``sim`` when it lowers and gives ``sim``'s outputs ``sim_out`` on the test samples,
    else ``sim``; and a note saying which."""
    from lowbit.integer import to_integer

    if test.extra:
        return sim, "simulation (keyword inputs: the integer model takes one input tensor)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = to_integer(sim, (test.x[:1],))
    except LowbitError as exc:
        return sim, f"simulation (no integer model: {str(exc).splitlines()[0][:200]})"
    if not torch.equal(flat_outputs(im, test), sim_out):
        return sim, "simulation (the integer model differs from it on these samples)"
    return im, "integer-only model (equal to its simulation on every test sample)"


def _quality(f, labelled: bool) -> float:
    return f.accuracy if labelled else f.agreement


def user_model_report(name: str, model: nn.Module, calib: Samples, test: Samples, latency_rounds: int = 10,
                      table: EnergyTable | None = None) -> Report:
    """Float vs quantized versions of the user's ``model`` (see the module docstring)."""
    table = table or EnergyTable.load()
    model = model.eval()
    labelled = test.y is not None
    x1, kw1 = test.x[:1], {k: v[:1] for k, v in test.extra.items()}
    batches = calib.batches(CALIB, CALIB, first_input(model))
    ref = flat_outputs(model, test)  # float32's outputs, once: every version is compared with them
    base = compare(ref, ref, test.y)
    versions = [Version("float32", 32, _quality(base, labelled), profile(model, (x1,), example_kwargs=kw1), None)]
    runners, notes = {"float32": model}, []
    for label, config in VERSIONS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim = quantize(model, batches, config)
        sim_out = flat_outputs(sim, test)
        runner, how = _runner(sim, sim_out, test)
        f = compare(ref, sim_out, test.y)  # the runner's outputs: the simulation's (the integer model equals it)
        rows = profile(sim, (x1,), example_kwargs=kw1)
        bits = 8 * sum(r.weight_bytes for r in rows) / max(sum(r.params for r in rows), 1)
        versions.append(Version(label, round(bits, 2), _quality(f, labelled), rows, None))
        runners[label] = runner
        notes.append(f"{label}: ran as the {how}; output cosine against float32 mean {f.cosine_mean:.4f}, "
                     f"min {f.cosine_min:.4f}; SQNR {f.sqnr_db:.1f} dB; decisions agree {100 * f.agreement:.2f}%")
    for v in versions:
        v.energy = energy(v.rows, table)
        v.energy_same_memory = energy(v.rows, table, weight_memory=versions[0].energy.weight_memory)
    if latency_rounds:
        for batch in sorted({1, min(64, len(test))}):
            x, kw = test.x[:batch], {k: v[:batch] for k, v in test.extra.items()}
            with torch_threads(1), torch.no_grad():
                t = interleaved({k: (lambda m=m: m(x, **kw)) for k, m in runners.items()}, latency_rounds)
            for v in versions:
                v.latency_us[f"batch {batch}"] = t[v.name].best_us
    coverage = [f"{v.name}: {w}" for v in versions[1:] if (w := coverage_warning(v.rows)) is not None]
    metric = "accuracy" if labelled else "decisions agreeing with float32"
    report = Report(f"lowbit report: {name}", versions, machine(), warnings_for(["int8"]) + coverage, metric=metric)
    report.notes += [
        f"samples: {min(CALIB, len(calib))} for calibration, {len(test)} to test; the '{metric}' column is measured "
        "on the test samples" + ("" if labelled else " (they carry no labels 'y')"),
        *notes,
        f"energy: {table.name}; {table.source}",
        "weights are read once per inference from a 1 MB SRAM when they fit, else from DRAM; the next column prices "
        "every version's weights at the float model's level",
        "latency: best of interleaved rounds, 1 thread; float32 is PyTorch eager",
    ]
    return report


__all__ = ["user_model_report"]
