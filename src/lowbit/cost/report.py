"""The report: float vs quantized versions of one model, side by side, as JSON, Markdown and HTML.

Each version carries its accuracy, its per-layer profile (:mod:`lowbit.cost.profile`), its
energy per inference (:mod:`lowbit.cost.energy`) and its measured latency. The HTML has its
plots inline as SVG (no scripts, no network), so it works offline and as an attachment.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.cost.energy import Energy
from lowbit.cost.profile import LayerCost, quantized_share, totals
from lowbit.cost.spiking import markdown as spiking_markdown
from lowbit.cost.spiking import table as spiking_table
from lowbit.utils.files import atomic_write_text


@dataclass
class Version:
    name: str
    weight_bits: float
    accuracy: float
    rows: list[LayerCost]
    energy: Energy
    latency_us: dict[str, float] = field(default_factory=dict)  # e.g. {"batch 1": 310.0}
    mac_area_um2: float | None = None  # MAC-weighted mean area of one multiply-accumulate unit
    energy_same_memory: Energy | None = None  # weights priced at the first version's memory level

    @property
    def quantized_share(self) -> float:
        """Fraction of the MACs run with both operands below 32 bits."""
        return quantized_share(self.rows)


@dataclass
class Report:
    title: str
    versions: list[Version]
    machine: str = ""
    warnings: list[str] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (calibration images, accuracy)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)  # (layer, accuracy drop in points)
    notes: list[str] = field(default_factory=list)
    slices: list = field(default_factory=list)  # lowbit.cost.bitslice.SliceSparsity of the float weights
    adc_bits: tuple[int, ...] = ()  # per slice, for 128-row crossbar columns
    lns16_compute_pj: float | None = None  # the float model's MACs priced as 16-bit LNS MACs (paper L)
    spiking: list = field(default_factory=list)  # lowbit.cost.spiking.SpikingCost: converted SNNs vs the int8 ANN
    spiking_note: str = ""
    metric: str = "accuracy"  # what Version.accuracy holds: test accuracy, or decisions agreeing with float32
    families: list = field(default_factory=list)  # lowbit.cost.families.FamilyCost: shipped binary-family networks


def _slice_rows(r: Report) -> list[list[str]]:
    return [[s.layer, f"{s.weights:,}", *(f"{z:.3f}" for z in s.zero), f"{s.mean:.3f}"] for s in r.slices]


def _slice_head(r: Report) -> list[str]:
    n = len(r.slices[0].zero) if r.slices else 0
    return ["layer", "weights", *(f"slice {k + 1} zero" for k in range(n)), "mean"]


def _lns_line(r: Report) -> str:
    base = r.versions[0].energy.compute
    return (f"Compute energy if the float model's MACs ran in 16-bit LNS arithmetic (multiply = add of log codes, "
            f"add by a 20-entry table; lowbit.cost.energy.lns_mac_energy): {r.lns16_compute_pj / 1e6:,.3f} uJ "
            f"against {base / 1e6:,.3f} uJ in fp32 ({base / r.lns16_compute_pj:.1f}x less).")


def to_dict(r: Report) -> dict:
    return {
        "title": r.title, "machine": r.machine, "warnings": r.warnings, "notes": r.notes, "metric": r.metric,
        "calibration_curve": [{"images": n, "accuracy": a} for n, a in r.curve],
        "sensitivity": [{"layer": n, "drop_points": d} for n, d in r.sensitivity],
        "bit_slices": [{"layer": x.layer, "weights": x.weights, "zero": list(x.zero), "mean": x.mean} for x in r.slices],
        "adc_bits_128_rows": list(r.adc_bits), "lns16_compute_pJ": r.lns16_compute_pj,
        "spiking": [dict(vars(c), ratio=c.ratio) for c in r.spiking], "spiking_note": r.spiking_note,
        "families": [f.to_dict() for f in r.families],
        "versions": [{
            "name": v.name, "weight_bits": v.weight_bits, "accuracy": v.accuracy, "latency_us": v.latency_us,
            "mac_area_um2": v.mac_area_um2, "quantized_mac_share": v.quantized_share,
            "energy_same_memory": None if v.energy_same_memory is None else v.energy_same_memory.to_dict(),
            "energy": v.energy.to_dict(), "totals": vars(totals(v.rows)), "layers": [x.to_dict() for x in v.rows],
        } for v in r.versions],
    }


def _speedups(base: Version, v: Version) -> str:
    """Predicted (bit-operation ratio) next to measured (latency ratio) speed-up over the first version."""
    b = totals(base.rows).bops / max(totals(v.rows).bops, 1)
    meas = [f"{k}: {base.latency_us[k] / us:.2f}x" for k, us in v.latency_us.items() if k in base.latency_us]
    return f"{b:.1f}x / " + (", ".join(meas) if meas else "-")


def _summary_rows(r: Report) -> list[list[str]]:
    base = r.versions[0]
    rows = []
    for v in r.versions:
        t = totals(v.rows)
        lat = ", ".join(f"{k}: {us:,.0f} us" for k, us in v.latency_us.items()) or "-"
        same = "-" if v.energy_same_memory is None else f"{base.energy.total / v.energy_same_memory.total:.1f}x"
        rows.append([v.name, f"{100 * v.accuracy:.2f}%", f"{t.weight_bytes / 1024:,.1f} KiB",
                     f"{t.macs:,}", f"{100 * v.quantized_share:.1f}%", f"{t.bops:,}",
                     f"{v.energy.total / 1e6:,.3f} uJ", _MEMORY.get(v.energy.weight_memory, "-"),
                     f"{base.energy.total / v.energy.total:.1f}x", same,
                     "-" if v.mac_area_um2 is None else f"{v.mac_area_um2:,.0f} um2", lat, _speedups(base, v)])
    return rows


_MEMORY = {"sram_1mb_64bit": "SRAM 1 MB", "dram_64bit": "DRAM"}
_HEAD = ["version", "accuracy", "weights", "MACs", "MACs quantized", "BOPs", "energy/inference", "weights read from",
         "energy saving", "saving, weights at the float's memory level", "MAC unit area", "latency",
         "speed-up: predicted (BOPs) / measured"]


def to_markdown(r: Report) -> str:
    lines = [f"# {r.title}", "", f"Machine: {r.machine}", ""]
    head = [r.metric if h == "accuracy" else h for h in _HEAD]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in _summary_rows(r)]
    for w in r.warnings:
        lines.append(f"\n> warning: {w}")
    if r.curve:
        lines += ["", "Calibration curve: " + ", ".join(f"{n}: {100 * a:.2f}%" for n, a in r.curve)]
    if r.sensitivity:
        lines += ["", "Per-layer sensitivity (points lost with only that layer quantized): " +
                  ", ".join(f"{n}: {d:+.2f}" for n, d in r.sensitivity)]
    if r.lns16_compute_pj is not None:
        lines += ["", _lns_line(r)]
    if r.slices:
        head = _slice_head(r)
        lines += ["", "## Bit-slice sparsity of the float weights (8-bit dynamic fixed point, 2-bit ReRAM cells)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in _slice_rows(r)]
        lines += ["", f"ADC bits per slice for 128-row columns: {'/'.join(map(str, r.adc_bits))} "
                      "(lowbit.cost.bitslice; bit-slice L1 training lowers them: benchmarks/bench_bitslice.py)"]
    if r.spiking:
        lines += ["", "## Spiking versions (ANN-to-SNN conversion, lowbit.snn) against the int8 ANN", "",
                  *spiking_markdown(r.spiking, "int8 weights"), "", r.spiking_note]
    if r.families:
        from lowbit.cost.families import HEAD, NOTE, cells

        lines += ["", "## Binary, BitSplit, Eedn and stochastic-ensemble networks (shipped weights)", "",
                  "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in cells(r.families)]
        lines += ["", NOTE]
    for v in r.versions:
        lines += ["", f"## {v.name}: layers", "", "| layer | kind | W/A/out bits | MACs | BOPs | weight bytes | requant |",
                  "|---|---|---|---:|---:|---:|---|"]
        lines += [f"| {x.name} | {x.kind} | {x.weight_bits:g}/{x.act_bits:g}/{x.out_bits:g} | {x.macs:,} | "
                  f"{x.bops:,} | {x.weight_bytes:,.0f} | {x.requant} |" for x in v.rows]
    lines += [""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- SVG plots (no scripts)

_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"]


def svg_bars(title: str, labels: list[str], values: list[float], unit: str, width: int = 520) -> str:
    """Horizontal bar chart."""
    bar, gap, left = 22, 8, 190
    height = 40 + len(labels) * (bar + gap)
    top = max(values) if values and max(values) > 0 else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}">', f'<text x="4" y="18" font-weight="bold">{html.escape(title)}</text>']
    for i, (lab, val) in enumerate(zip(labels, values)):
        y = 32 + i * (bar + gap)
        w = (width - left - 90) * val / top
        parts.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{html.escape(lab)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{_COLORS[i % len(_COLORS)]}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 16}">{val:,.3g} {html.escape(unit)}</text>')
    return "".join(parts) + "</svg>"


def svg_stacked(title: str, labels: list[str], parts_by: dict[str, list[float]], unit: str, width: int = 520) -> str:
    """Horizontal stacked bars (one bar per label, one colour per component) with a legend."""
    bar, gap, left = 22, 8, 190
    height = 60 + len(labels) * (bar + gap)
    sums = [sum(p[i] for p in parts_by.values()) for i in range(len(labels))]
    top = max(sums) if sums and max(sums) > 0 else 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{html.escape(title)}">', f'<text x="4" y="18" font-weight="bold">{html.escape(title)}</text>']
    for i, lab in enumerate(labels):
        y, x = 32 + i * (bar + gap), float(left)
        out.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{html.escape(lab)}</text>')
        for j, vals in enumerate(parts_by.values()):
            w = (width - left - 90) * vals[i] / top
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{_COLORS[j % len(_COLORS)]}"/>')
            x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + 16}">{sums[i]:,.3g} {html.escape(unit)}</text>')
    ly = height - 14
    for j, name in enumerate(parts_by):
        out.append(f'<rect x="{4 + j * 120}" y="{ly - 10}" width="10" height="10" fill="{_COLORS[j % len(_COLORS)]}"/>'
                   f'<text x="{18 + j * 120}" y="{ly}">{html.escape(name)}</text>')
    return "".join(out) + "</svg>"


def y_range(ys: list[float], min_span: float = 0.0, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """The y axis of a line chart: the data's range, widened about its middle to at least ``min_span`` (so
    that a 0.1-point wobble does not fill the whole height) and kept inside ``bounds``."""
    y0, y1 = min(ys), max(ys)
    span = max(y1 - y0, min_span, 1e-9 if y1 > y0 else 1.0)
    mid = (y0 + y1) / 2
    y0, y1 = mid - span / 2, mid + span / 2
    if bounds is not None:
        lo, hi = bounds
        y0, y1 = (lo, lo + span) if y0 < lo else (y0, y1)
        y0, y1 = (hi - span, hi) if y1 > hi else (y0, y1)
    return y0, y1


ACCURACY_SPAN = 5.0  # points: the least height an accuracy axis spans


def svg_line(title: str, xs: list[float], ys: list[float], xlabel: str, ylabel: str, logx: bool = False,
             width: int = 520, height: int = 260, min_span: float = 0.0,
             bounds: tuple[float, float] | None = None) -> str:
    """A line chart with point markers and labelled axes; the y axis spans at least ``min_span``
    (:func:`y_range`) and its ends are labelled."""
    import math

    left, bottom, top_pad, right = 60, 40, 30, 20
    fx = (lambda v: math.log2(v)) if logx else (lambda v: v)
    x0, x1 = min(map(fx, xs)), max(map(fx, xs))
    y0, y1 = y_range(ys, min_span, bounds)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 1, x1 + 1

    def px(v):
        return left + (fx(v) - x0) / (x1 - x0) * (width - left - right)

    def py(v):
        return height - bottom - (v - y0) / (y1 - y0) * (height - bottom - top_pad)

    pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{html.escape(title)}">', f'<text x="4" y="18" font-weight="bold">{html.escape(title)}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{height - bottom}" stroke="#333"/>',
           f'<polyline points="{pts}" fill="none" stroke="{_COLORS[0]}" stroke-width="2"/>']
    for x, y in zip(xs, ys):
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{_COLORS[0]}"/>'
                   f'<text x="{px(x):.1f}" y="{height - bottom + 14}" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{left - 4}" y="{py(y1) + 4:.1f}" text-anchor="end">{y1:.3g}</text>'
               f'<text x="{left - 4}" y="{py(y0) + 4:.1f}" text-anchor="end">{y0:.3g}</text>'
               f'<text x="{(left + width) / 2}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>'
               f'<text x="12" y="{(height - bottom) / 2}" transform="rotate(-90 12 {(height - bottom) / 2})" '
               f'text-anchor="middle">{html.escape(ylabel)}</text>')
    return "".join(out) + "</svg>"


def to_html(r: Report) -> str:
    names = [v.name for v in r.versions]
    label = r.metric[0].upper() + r.metric[1:]  # "Accuracy", "Decisions agreeing with float32"
    figs = [svg_bars(f"{'Test accuracy' if r.metric == 'accuracy' else label} (%)", names, [100 * v.accuracy for v in r.versions], "%"),
            svg_stacked("Energy per inference (uJ, 45 nm model)", names,
                        {"compute": [v.energy.compute / 1e6 for v in r.versions],
                         "weights": [v.energy.weights / 1e6 for v in r.versions],
                         "activations": [v.energy.activations / 1e6 for v in r.versions],
                         "requant": [v.energy.requant / 1e6 for v in r.versions]}, "uJ"),
            svg_bars("Weight memory (KiB)", names, [totals(v.rows).weight_bytes / 1024 for v in r.versions], "KiB")]
    keys = sorted({k for v in r.versions for k in v.latency_us})
    for k in keys:
        have = [v for v in r.versions if k in v.latency_us]
        figs.append(svg_bars(f"Measured latency, {k} (us)", [v.name for v in have], [v.latency_us[k] for v in have], "us"))
    bits = [(v.weight_bits, v.accuracy) for v in r.versions]
    if len(bits) > 1:
        bits.sort()
        figs.append(svg_line(f"{label} against weight bits", [b for b, _ in bits], [100 * a for _, a in bits],
                             "mean weight bits", f"{r.metric} %", logx=True, min_span=ACCURACY_SPAN, bounds=(0, 100)))
    if r.curve:
        figs.append(svg_line("Calibration curve (W8A8)", [n for n, _ in r.curve], [100 * a for _, a in r.curve],
                             "calibration images", "accuracy %", logx=True, min_span=ACCURACY_SPAN,
                             bounds=(0, 100)))
    if r.sensitivity:
        figs.append(svg_bars("Per-layer sensitivity (points lost)", [n for n, _ in r.sensitivity],
                             [max(d, 0.0) for _, d in r.sensitivity], "pts"))
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _summary_rows(r))
    warn = "".join(f'<p class="warn">warning: {html.escape(w)}</p>' for w in r.warnings)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.notes)
    extra = f"<p>{html.escape(_lns_line(r))}</p>" if r.lns16_compute_pj is not None else ""
    if r.slices:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _slice_rows(r))
        extra += ("<h2>Bit-slice sparsity of the float weights (8-bit dynamic fixed point, 2-bit cells)</h2><table>"
                  "<thead><tr>" + "".join(f"<th>{h}</th>" for h in _slice_head(r)) + f"</tr></thead><tbody>{rows}"
                  f"</tbody></table><p>ADC bits per slice for 128-row columns: "
                  f"{'/'.join(map(str, r.adc_bits))}</p>")
    if r.spiking:
        extra += _spiking_html(r)
    if r.families:
        extra += _families_html(r)
    head = "".join(f"<th>{html.escape(r.metric if h == 'accuracy' else h)}</th>" for h in _HEAD)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.warn{color:#a33}.figs svg{margin:8px;font-size:12px}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(r.title)}</title>'
            f"<style>{style}</style></head><body><h1>{html.escape(r.title)}</h1>"
            f"<p>Machine: {html.escape(r.machine)}</p>{warn}<table><thead><tr>{head}</tr></thead>"
            f'<tbody>{table}</tbody></table><div class="figs">{"".join(figs)}</div>{extra}<ul>{notes}</ul></body></html>\n')


def _spiking_html(r: Report) -> str:
    cols, cells = spiking_table(r.spiking, "int8 weights")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    fig = svg_bars("Energy per inference, SNN vs int8 ANN (uJ)", [f"{c.name} T={c.time_steps}" for c in r.spiking]
                   + ["int8 ANN"], [c.snn_pj / 1e6 for c in r.spiking] + [r.spiking[0].ann_pj / 1e6], "uJ")
    return (f"<h2>Spiking versions against the int8 ANN</h2><table><thead><tr>{head}</tr></thead><tbody>{body}"
            f'</tbody></table><div class="figs">{fig}</div><p>{html.escape(r.spiking_note)}</p>')


def _families_html(r: Report) -> str:
    from lowbit.cost.families import HEAD, NOTE, cells

    head = "".join(f"<th>{html.escape(c)}</th>" for c in HEAD)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells(r.families))
    return (f"<h2>Binary, BitSplit, Eedn and stochastic-ensemble networks (shipped weights)</h2><table><thead><tr>"
            f"{head}</tr></thead><tbody>{body}</tbody></table><p>{html.escape(NOTE)}</p>")


def write(r: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``report.json`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    return {"html": atomic_write_text(out / "report.html", to_html(r)),
            "md": atomic_write_text(out / "report.md", to_markdown(r)),
            "json": atomic_write_text(out / "report.json", json.dumps(to_dict(r), indent=2) + "\n")}


__all__ = ["ACCURACY_SPAN", "Report", "Version", "svg_bars", "svg_line", "svg_stacked", "to_dict", "to_html",
           "to_markdown", "write", "y_range"]
