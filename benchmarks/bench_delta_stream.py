"""Streaming wall-clock of the delta runtime (issue 19 target): batch 1, 1 thread, spoken digits GRU.

Trains (or loads from the cache) the GRU classifier of ``bench_delta_convert.py``, sweeps the
conversion thresholds with ``lowbit.delta.sweep`` and takes the operating point of largest MAC
reduction at <= 1 point accuracy loss. It then checks that ``lowbit.delta.runtime`` (the C
streaming step) classifies the test set as the simulation does at that point, and times one step
at batch 1 on one thread, interleaved (each round times every method on the same clip, in a
rotating order), over the steps of real test clips:

* ``nn.GRUCell`` (the same weights), one call per step;
* the dense C step (``DeltaRuntime(..., dense=True)``: ``acc = b + W x``, every column read), the
  dense baseline -- lowbit has no int8 GRU step to compare with;
* the delta runtime at the operating point.

Each through its Python call (``step``) and, for the two C paths, as the kernel alone (one C call
for the whole clip, ``run``, divided by the steps). Writes ``results/delta.md`` and merges its rows into
``results/delta.json``. With ``--trained THETA_X THETA_H`` it times instead the model fine-tuned for sparsity at
those thresholds (``bench_delta_train.py``'s recipe; issue 19's streaming target is at the trained operating
point) and writes ``results/delta_stream_trained.md``.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_delta_stream.py [--hidden 64] [--epochs 6]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_delta_stream.py --hidden 128 --epochs 8 --trained 0.6 0.4
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from _common import write_result
from bench_delta_convert import THETAS, Classifier, accuracy, merge_delta, train
from lowbit.data.spoken_digits import SpokenDigitsSpec, spoken_digits
from lowbit.delta import DeltaGRU, operating_point, sweep
from lowbit.delta.training import DeltaClassifier, DeltaTrainSpec, train_delta
from lowbit.training import LoopConfig
from lowbit.delta.fixed import FixedDeltaGRURuntime
from lowbit.delta.runtime import DeltaGRURuntime


def cached_model(hidden: int, epochs: int, tr, spec: SpokenDigitsSpec, retrain: bool) -> tuple[Classifier, str]:
    """The trained classifier, from ``$LOWBIT_CACHE`` when this configuration was trained before."""
    key = hashlib.sha256(f"{spec}|{hidden}|{epochs}|{len(tr)}|{float(tr.x.sum()):.6e}|{torch.get_num_threads()}"
                         .encode()).hexdigest()[:12]  # threads: float sums, hence the trained weights, depend on them
    path = Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit")) / f"bench_delta_stream-{key}.pt"
    if path.exists() and not retrain:
        model = Classifier("gru", tr.x.shape[-1], hidden, 1, 10)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), f"loaded from {path} (trained earlier by this script, {epochs} epochs)"
    t0 = time.perf_counter()
    model = train("gru", hidden, 1, epochs, tr, 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model, f"trained {epochs} epochs in {time.perf_counter() - t0:.0f} s"


def cached_finetuned(dense: Classifier, tr, theta_x: float, theta_h: float, lam: float, epochs: int,
                     retrain: bool) -> tuple[Classifier, str]:
    """``dense`` fine-tuned for sparsity at ``(theta_x, theta_h)`` as ``bench_delta_train.py`` does
    (``lowbit.delta.training.train_delta``: the one loop, Adam 1e-3, cosine, batch 32, seed 0; L1 cost ``lam``),
    from ``$LOWBIT_CACHE`` when done before; returned as a plain GRU classifier with the tuned weights (the
    runtimes take the thresholds)."""
    digest = sum(float(p.detach().double().sum()) for p in dense.parameters())  # the dense model it starts from
    key = hashlib.sha256(f"{digest:.9e}|{len(tr)}|{theta_x}|{theta_h}|{lam}|{epochs}".encode()).hexdigest()[:12]
    path = Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit")) / f"bench_delta_tuned-{key}.pt"
    out = Classifier("gru", dense.rnn.input_size, dense.rnn.hidden_size, 1, dense.head.out_features)
    if path.exists() and not retrain:
        out.load_state_dict(torch.load(path, weights_only=True))
        return out.eval(), f"fine-tuned earlier by this script ({epochs} epochs, cached at {path})"
    model = DeltaClassifier(DeltaGRU.from_torch(dense.rnn, theta_x, theta_h), copy.deepcopy(dense.head))
    t0 = time.perf_counter()
    train_delta(model, tr, LoopConfig(epochs=epochs, batch_size=32, seed=0), lam=lam, spec=DeltaTrainSpec(),
                optimizer=lambda params: torch.optim.Adam(params, 1e-3), progress=False)
    out.load_state_dict(model.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out.state_dict(), path)
    return out.eval(), f"fine-tuned {epochs} epochs in {time.perf_counter() - t0:.0f} s"


def runtime_accuracy(model: Classifier, te, theta_x: float, theta_h: float) -> tuple[float, float]:
    """Test accuracy with the recurrent layer run by the C runtime, clip by clip, and the fetch reduction
    from the runtime's own counters (one layer: equal to the MAC reduction)."""
    rt = DeltaGRURuntime.from_layer(model.rnn, theta_x=theta_x, theta_h=theta_h)
    right, cols, dense_cols = 0, 0, 0
    with torch.no_grad():
        for x, y in zip(te.x, te.y):
            rt.reset()
            h = rt.run(x)[-1]
            right += int(model.head(h).argmax() == y)
            c = rt.counts[0]
            cols += c.x_columns + c.h_columns
            dense_cols += c.steps * (c.input_size + c.hidden_size)
    return right / len(te), dense_cols / cols


def fixed_accuracy(model: Classifier, te, theta_x: float, theta_h: float) -> tuple[float, float]:
    """Test accuracy of the fixed-point model (int8 weights, Q8.8 activations) run by its C runtime, the
    read-out in float on ``h = code / 2^8``; and its fetch reduction."""
    rt = FixedDeltaGRURuntime.from_layer(model.rnn, theta_x=theta_x, theta_h=theta_h)
    right, cols, dense_cols = 0, 0, 0
    with torch.no_grad():
        for x, y in zip(te.x, te.y):
            rt.reset()
            h = rt.run(x)[-1].float() / 2 ** rt.q.frac_bits
            right += int(model.head(h).argmax() == y)
            c = rt.counts
            cols += c.x_columns + c.h_columns
            dense_cols += c.steps * (c.input_size + c.hidden_size)
    return right / len(te), dense_cols / cols


def time_steps(model: Classifier, clips: torch.Tensor, theta_x: float, theta_h: float, rounds: int
               ) -> dict[str, list[float]]:
    """Per-step times in microseconds of each method over ``rounds`` passes of ``clips`` (N, T, I)."""
    gru = model.rnn
    cell = nn.GRUCell(gru.input_size, gru.hidden_size)
    with torch.no_grad():
        for a, b in (("weight_ih", "weight_ih_l0"), ("weight_hh", "weight_hh_l0"), ("bias_ih", "bias_ih_l0"),
                     ("bias_hh", "bias_hh_l0")):
            getattr(cell, a).copy_(getattr(gru, b))
    dense = DeltaGRURuntime.from_layer(gru, dense=True)
    delta = DeltaGRURuntime.from_layer(gru, theta_x=theta_x, theta_h=theta_h)
    clock = time.perf_counter_ns

    def grucell_step(x):
        out, h = [], torch.zeros(1, gru.hidden_size)
        for t in range(x.shape[0]):
            xt = x[t:t + 1]
            t0 = clock()
            h = cell(xt, h)
            out.append(clock() - t0)
        return out

    def rt_step(rt):
        def f(x):
            rt.reset()
            out = []
            rows = list(x)
            for xt in rows:
                t0 = clock()
                rt.step(xt)
                out.append(clock() - t0)
            return out
        return f

    def rt_run(rt):
        def f(x):
            rt.reset()
            t0 = clock()
            rt.run(x)
            return [(clock() - t0) / x.shape[0]]  # the kernel alone: one C call for the clip, per step
        return f

    def gru_seq(x):
        xb = x.unsqueeze(0)
        t0 = clock()
        gru(xb)
        return [(clock() - t0) / x.shape[0]]

    fixed_dense = FixedDeltaGRURuntime.from_layer(gru, theta_x=0.0, theta_h=0.0)
    fixed_delta = FixedDeltaGRURuntime.from_layer(gru, theta_x=theta_x, theta_h=theta_h)
    clips = list(clips)  # the same row objects every round (the codes are looked up by object)
    codes = {id(x): fixed_dense.q.quantize_input(x) for x in clips}  # quantised once, outside the timing

    def fixed_run(rt):
        def f(x):
            xq = codes[id(x)]
            rt.reset()
            t0 = clock()
            rt.run(xq)
            return [(clock() - t0) / x.shape[0]]
        return f

    methods = {"nn.GRUCell step": grucell_step, "dense C step": rt_step(dense), "delta step": rt_step(delta),
               "dense C kernel (run)": rt_run(dense), "delta kernel (run)": rt_run(delta),
               "int8 θ=0 kernel (run)": fixed_run(fixed_dense), "int8 delta kernel (run)": fixed_run(fixed_delta),
               "nn.GRU whole clip": gru_seq}
    # the kernels on one stream of all the clips back to back (a device listening continuously): one C call,
    # so that the Python call (~20 µs) is spread over thousands of steps
    stream = torch.cat(clips).contiguous()
    stream_q = fixed_dense.q.quantize_input(stream)

    def stream_run(rt, xs):
        def f():
            rt.reset()
            t0 = clock()
            rt.run(xs)
            return [(clock() - t0) / xs.shape[0]]
        return f

    streams = {"dense C kernel (stream)": stream_run(dense, stream), "delta kernel (stream)": stream_run(delta, stream),
               "int8 θ=0 kernel (stream)": stream_run(fixed_dense, stream_q),
               "int8 delta kernel (stream)": stream_run(fixed_delta, stream_q)}
    names, snames = list(methods), list(streams)
    times: dict[str, list[float]] = {n: [] for n in names + snames}
    with torch.no_grad():
        for r in range(rounds + 1):  # round 0 warms up
            for rep in range(4):
                k = (r + rep) % len(snames)
                for name in snames[k:] + snames[:k]:
                    ts = streams[name]()
                    if r:
                        times[name].extend(t / 1000 for t in ts)
            for i, x in enumerate(clips):
                k = (r + i) % len(names)
                for name in names[k:] + names[:k]:
                    ts = methods[name](x)
                    if r:
                        times[name].extend(t / 1000 for t in ts)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--clips", type=int, default=24, help="test clips timed per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--retrain", action="store_true", help="train even when a cached model exists")
    ap.add_argument("--trained", nargs=2, type=float, default=None, metavar=("THETA_X", "THETA_H"),
                    help="time the model fine-tuned for sparsity at these thresholds (bench_delta_train.py's "
                    "operating point: --hidden 128 --epochs 8 --trained 0.6 0.4) instead of the converted one")
    ap.add_argument("--tune-epochs", type=int, default=4, help="fine-tuning epochs with --trained")
    ap.add_argument("--lam", type=float, default=0.0, help="L1 cost on hidden changes with --trained")
    args = ap.parse_args()
    spec = SpokenDigitsSpec()
    tr, te = spoken_digits("train", spec), spoken_digits("test", spec)
    if args.trained:  # one thread, as bench_delta_train.py trains: the same dense and fine-tuned models
        torch.set_num_threads(1)
    model, how = cached_model(args.hidden, args.epochs, tr, spec, args.retrain)
    dense_acc = accuracy(model, te)
    if args.trained:  # the fine-tuned model at its training thresholds: one point, no sweep
        model, tuned = cached_finetuned(model, tr, *args.trained, args.lam, args.tune_epochs, args.retrain)
        how += f"; then {tuned} at theta_x={args.trained[0]}, theta_h={args.trained[1]}, lambda={args.lam:g}"
        points = sweep(model, [tuple(args.trained)], lambda m: accuracy(m, te))
        best = points[0]
    else:
        points = sweep(model, THETAS, lambda m: accuracy(m, te))
        best = operating_point(points, dense_acc, 0.01)
    tx, th = best.theta_x, best.theta_h
    mode = "trained" if args.trained else "converted"
    name = "delta_stream_trained" if args.trained else "delta"
    rt_acc, rt_fetch = runtime_accuracy(model, te, tx, th)
    fx_dense_acc, _ = fixed_accuracy(model, te, 0.0, 0.0)
    fx_acc, fx_fetch = fixed_accuracy(model, te, tx, th)
    print(f"operating point theta_x={tx} theta_h={th}: simulation {best.metric:.4f}, runtime {rt_acc:.4f}, "
          f"fetch reduction {best.cost.fetch_reduction:.2f}x (runtime counters {rt_fetch:.2f}x)", flush=True)
    torch.set_num_threads(1)  # the timing runs on one thread (training and the sweep used the default)
    load_before = os.getloadavg()
    gen = torch.Generator().manual_seed(0)
    clips = te.x[torch.randperm(len(te), generator=gen)[:args.clips]].contiguous()
    times = time_steps(model, clips, tx, th, args.rounds)
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    stats = {n: {"best": min(v), "median": statistics.median(v), "mean": statistics.fmean(v), "n": len(v)}
             for n, v in times.items()}
    g, d, s = stats["nn.GRUCell step"], stats["dense C step"], stats["delta step"]
    dk, sk = stats["dense C kernel (run)"], stats["delta kernel (run)"]
    qd, qs = stats["int8 θ=0 kernel (stream)"], stats["int8 delta kernel (stream)"]
    dks, sks = stats["dense C kernel (stream)"], stats["delta kernel (stream)"]
    rows = []
    for p in points:
        at = (p.theta_x, p.theta_h) == (tx, th)
        rows.append({"dataset": "spoken_digits", "cell": "GRU", "mode": mode, "hidden": args.hidden,
                     "lam": args.lam if args.trained else None, "theta_x": p.theta_x,
                     "theta_h": p.theta_h, "accuracy": p.metric, "dense_accuracy": dense_acc,
                     "mac_reduction": p.cost.mac_reduction, "fetch_reduction": p.cost.fetch_reduction,
                     "step_us": s["median"] if at else None, "grucell_step_us": g["median"] if at else None,
                     **({"operating_point": True, "runtime_accuracy": rt_acc, "dense_step_us": d["median"],
                         "kernel_step_us": sk["median"], "dense_kernel_step_us": dk["median"],
                         "int8_accuracy": fx_acc, "int8_dense_accuracy": fx_dense_acc, "int8_fetch_reduction": fx_fetch,
                         "stream_kernel_step_us": sks["median"], "dense_stream_kernel_step_us": dks["median"],
                         "int8_stream_kernel_step_us": qs["median"], "int8_dense_stream_kernel_step_us": qd["median"],
                         "step_stat": "median over steps of real test clips, batch 1, 1 thread"} if at else {})})
    table = ["| method | best µs/step | median µs/step | mean µs/step | timed |", "|---|---|---|---|---|"]
    for n, v in stats.items():
        unit = ("steps" if "step" in n.split()[-1] else "streams (time/steps)" if "stream" in n
                else "clips (time/steps)")
        table.append(f"| {n} | {v['best']:.2f} | {v['median']:.2f} | {v['mean']:.2f} | {v['n']} {unit} |")
    curve = ["| theta_x | theta_h | accuracy | loss (points) | MAC reduction | fetch reduction |", "|---|---|---|---|---|---|"]
    for p in points:
        curve.append(f"| {p.theta_x:.2f} | {p.theta_h:.2f} | {100 * p.metric:.2f}% | "
                     f"{100 * (dense_acc - p.metric):+.2f} | {p.cost.mac_reduction:.2f}x | "
                     f"{p.cost.fetch_reduction:.2f}x |")
    ratio = (f"delta step vs nn.GRUCell step: {g['median'] / s['median']:.2f}x faster (median), "
             f"{g['best'] / s['best']:.2f}x (best); vs the dense C step: {d['median'] / s['median']:.2f}x (median), "
             f"{d['best'] / s['best']:.2f}x (best). Kernel alone, clip by clip (run): delta {dk['median'] / sk['median']:.2f}x "
             f"faster than dense (median), {dk['best'] / sk['best']:.2f}x (best); "
             f"{g['median'] / sk['median']:.1f}x faster than the nn.GRUCell step. On the stream: float delta kernel "
             f"{dks['median'] / sks['median']:.2f}x faster than dense (median), {dks['best'] / sks['best']:.2f}x (best); "
             f"fixed point (int8 weights, Q8.8) delta kernel {qd['median'] / qs['median']:.2f}x faster than the same "
             f"kernel at θ = 0 (median), {qd['best'] / qs['best']:.2f}x (best).")
    met = [f"- >= 3x faster than the nn.GRUCell step: {'met' if g['median'] >= 3 * s['median'] else 'NOT met'} "
           f"through the Python call (`rt.step`, {g['median'] / s['median']:.2f}x median), "
           f"{'met' if g['median'] >= 3 * sk['median'] else 'NOT met'} by the kernel ({g['median'] / sk['median']:.1f}x).",
           f"- >= 2x faster than the dense int8 step (the fixed-point kernel at θ = 0): "
           f"{'met' if qd['median'] >= 2 * qs['median'] else 'NOT met'} by the int8 delta kernel "
           f"({qd['median'] / qs['median']:.2f}x median, {qd['best'] / qs['best']:.2f}x best); the float delta kernel "
           f"on the stream against the dense int8 one: {qd['median'] / sks['median']:.2f}x.",
           f"- >= 2x faster than the dense float step: {'met' if dks['median'] >= 2 * sks['median'] else 'NOT met'} by the "
           f"kernel on the stream ({dks['median'] / sks['median']:.2f}x median, {dks['best'] / sks['best']:.2f}x best), "
           f"{'met' if dk['median'] >= 2 * sk['median'] else 'NOT met'} clip by clip ({dk['median'] / sk['median']:.2f}x "
           f"median); "
           f"{'met' if d['median'] >= 2 * s['median'] else 'NOT met'} through the per-step Python call "
           f"({d['median'] / s['median']:.2f}x), where the call itself (ctypes argument conversion, the input "
           "check, the output copy: several µs) outweighs the ~1-2 µs kernel of either."]
    targets = ("Targets (issue 19; set at the trained operating point, which this is)" if args.trained else
               "Issue 19's targets checked at this converted point (the issue sets them at the trained operating "
               "point: `bench_delta_stream.py --hidden 128 --epochs 8 --trained 0.6 0.4`, "
               "results/delta_stream_trained.md)")
    sweep_title = ("## The fine-tuned model at its thresholds (loss against the dense model)" if args.trained else
                   "## Threshold sweep (converted, no retraining)")
    body = (f"GRU({args.hidden}) classifier on spoken digits ({spec}), {how}; dense test accuracy "
            f"{100 * dense_acc:.2f}%.\n\n"
            f"{sweep_title}\n\n" + "\n".join(curve) +
            f"\n\nOperating point ({'the trained one' if args.trained else 'largest MAC reduction at <= 1 point loss'}"
            f"): theta_x={tx}, theta_h={th}: "
            f"simulation accuracy {100 * best.metric:.2f}%, **the C runtime's accuracy {100 * rt_acc:.2f}%** "
            f"(every test clip streamed through `DeltaGRURuntime`), fetch reduction from the runtime's counters "
            f"{rt_fetch:.2f}x (the simulation's counters: {best.cost.fetch_reduction:.2f}x).\n\n"
            f"Fixed-point option (`lowbit.delta.fixed`: int8 weights, Q8.8 16-bit activations, int32 accumulators, "
            f"table gates; its C runtime is bit-exact with its PyTorch simulation, tests/test_delta_runtime.py): "
            f"test accuracy {100 * fx_dense_acc:.2f}% at θ = 0 and {100 * fx_acc:.2f}% at the operating point "
            f"(fetch reduction {fx_fetch:.2f}x).\n\n"
            f"## Time per step at the operating point (batch 1, torch.set_num_threads(1))\n\n"
            f"{args.clips} random test clips of {clips.shape[1]} steps, {args.rounds} rounds after a warm-up round, "
            "interleaved (each clip is timed by every method in turn, in a rotating order). A `step` row is "
            "the Python call per step (`cell(x_t, h)`, `rt.step(x_t)`), timed one step at a time; a `(run)` row is "
            "one C call for the whole clip divided by its steps (the kernel as a device runs it, no Python per "
            "step; the one Python call per clip, ~20 µs, is included); `nn.GRU whole clip` likewise for PyTorch. "
            "Dense baseline: the same C loops with every column read (`dense=True`); `int8 θ=0` is the fixed-point kernel at thresholds 0 (every changed column read: the "
            "dense int8 step of this layer, lowbit having no other int8 GRU step), `int8 delta` the same at the "
            "operating point (inputs quantised before the timing). A `(stream)` row runs the "
            f"{args.clips} clips back to back as one stream (one C call, a device listening "
            "continuously; the memories carry over between clips), timed 4 times per round.\n\n" + "\n".join(table) +
            f"\n\n{ratio}\n\n{targets}:\n\n" + "\n".join(met) + "\n\n"
            f"Load: the machine is shared; load average {load_before[0]:.2f} before and {load_after[0]:.2f} after "
            f"the timing (`uptime`: {uptime}).\n")
    write_result(name, body)
    merge_delta(rows, f"{name}.md")


if __name__ == "__main__":
    main()
