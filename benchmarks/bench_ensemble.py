"""Stochastic ensembles of bitwise networks (Vogel, Schorn, Guntoro, Ascheid 2016) on Fashion-MNIST.

A binary CNN (:class:`lowbit.zoo.binary.BinaryCNN`, W1A1, first layer and classifier 8-bit) is trained with
stochastic binary weights (``QATConfig(stochastic_weights=True)``: each forward draws ``+1`` with probability
``hard_sigmoid(w)``), then ``M`` bitwise networks are drawn from its latent weights
(:class:`lowbit.nn.ensemble.StochasticEnsemble`) and their softmax posteriors averaged. Beside it: the
deterministic sign of the same stochastic-trained weights, the same CNN trained with deterministic signs (the
deterministic binary CNN), its own ensemble, and the float twin (the same network, no quantizers, the same
recipe). Every member is a deterministic bitwise network: its accuracy is the integer model's
(:func:`lowbit.integer.to_integer`, checked equal to the simulated member on the test set).

Draws: a float uniform, or an ``r``-bit comparator (``--rng-bits``, the hardware-efficient source of the
paper); one explicit generator per ensemble (``seed``). The cost of ``M`` passes is ``M`` times one member's:
binary operations (BOPs) and the integer model's measured batch-1 latency (1 thread).

The models are the ones ``bench_binary_accuracy.py`` trains (``--configs w1a1s``, ``w1a1``, ``float``), on
the CPU or, with ``--device cuda --save-state DIR``, on a GPU; this script evaluates their saved states:

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ensemble.py --from-state DIR \\
        --channels 64 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write_result  # noqa: E402
from bench_binary_accuracy import evaluate, load_state, variant  # noqa: E402


def member_softmax(members: list, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """``(len(members), N, classes)``: each member's softmax on ``x`` (through its integer model)."""
    from lowbit.integer import to_integer

    out = []
    for m in members:
        im = to_integer(m, (x[:1],))
        logits = torch.cat([torch.as_tensor(im(x[s:s + batch])) for s in range(0, len(x), batch)])
        out.append(torch.softmax(logits.float(), dim=1))
    return torch.stack(out)


def curve(probs: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> dict[int, float]:
    """Accuracy (percent) of the mean posterior of the first ``m`` members, for each ``m`` in ``sizes``."""
    return {m: 100.0 * (probs[:m].mean(0).argmax(1) == y).float().mean().item() for m in sizes}


def one_member_cost(gm: torch.nn.Module, x: torch.Tensor) -> dict:
    from lowbit.bench.latency import interleaved, torch_threads
    from lowbit.cost.profile import profile, totals
    from lowbit.integer import to_integer

    t = totals(profile(gm, (x[:1],)))
    im = to_integer(gm, (x[:1],))
    with torch_threads(1):
        timing = interleaved({"member": lambda: im(x[:1])}, rounds=200, warmup=20)["member"]
    return {"bops": int(t.bops), "macs": int(t.macs), "best_us": timing.best_us, "median_us": timing.median_us}


def run(args) -> dict:
    from lowbit.data import load
    from lowbit.nn.ensemble import StochasticEnsemble

    test = load("fashion-mnist", "test")
    x, y = test.x, test.y
    sizes = [m for m in (1, 2, 4, 8, 16, 32) if m <= args.members]
    state = Path(args.from_state)
    result = {"channels": args.channels, "epochs": args.epochs, "members": args.members, "rng_bits": args.rng_bits,
              "seed": args.seed, "models": {}}
    float_gm, calib, history, seconds, trained_on = load_state(state, "cnn", "float", "xnor", args.channels,
                                                               args.epochs, args.lr)
    _, float_acc, _, _ = evaluate(float_gm, "float", calib)
    result["float"] = {"accuracy": float_acc, "trained_on": trained_on, "train_seconds": seconds}
    runs = [("w1a1", args.lr, False), *(("w1a1s", v, False) for v in args.stochastic_lrs),
            *(("w1a1s", v, True) for v in args.finetuned_lrs)]
    for config, lr, ft in runs:
        t0 = time.perf_counter()
        epochs = args.finetune_epochs if ft and args.finetune_epochs else args.epochs
        gm, calib, history, seconds, trained_on = load_state(state, "cnn", config, "xnor", args.channels,
                                                             epochs, lr, variant(finetune=ft))
        evaluated, det_acc, converted_acc, error = evaluate(gm, config, calib)
        entry = {"config": config, "lr": lr, "epochs": epochs, "finetuned": ft, "deterministic": det_acc, "evaluated": evaluated,
                 "trained_on": trained_on, "train_seconds": seconds, "train_accuracy": history[-1]["accuracy"]}
        for bits in (None, args.rng_bits):
            ens = StochasticEnsemble(gm, args.members, seed=args.seed, rng_bits=bits)
            probs = member_softmax(ens.members, x)
            key = "float_uniform" if bits is None else f"rng{bits}"
            entry[key] = curve(probs, y, sizes)
            entry[key + "_members"] = [100.0 * (p.argmax(1) == y).float().mean().item() for p in probs]
            sim = torch.softmax(ens.members[0](x[:500]), dim=1)  # the integer member equals its simulation
            entry[key + "_member0_equal"] = bool(torch.equal(sim.argmax(1), probs[0, :500].argmax(1)))
        entry["cost_one_pass"] = one_member_cost(gm, x)
        entry["seconds"] = time.perf_counter() - t0
        print(json.dumps({k: v for k, v in entry.items() if not k.endswith("_members")}), flush=True)
        result["models"][f"{config}-lr{lr:g}{'-ft' if ft else ''}"] = entry
    return result


def _best(result: dict) -> tuple[str, dict]:
    stoch = {k: v for k, v in result["models"].items() if v["config"] == "w1a1s"}
    return max(stoch.items(), key=lambda kv: kv[1]["float_uniform"][result["members"]])


def markdown(result: dict) -> str:
    m = result["members"]
    base = result["models"][next(k for k, v in result["models"].items() if v["config"] == "w1a1")]
    name, best = _best(result)
    fl = result["float"]["accuracy"]
    gain = best["float_uniform"][m] - base["deterministic"]
    rb = f"rng{result['rng_bits']}"
    lines = ["Stochastic ensembles of binary CNNs (Vogel et al. 2016), Fashion-MNIST.", "",
             f"- models: BinaryCNN c={result['channels']} (W1A1; first layer and classifier 8-bit), "
             "Adam, cosine, batch 128, no augmentation, seed 0 (epochs per row), trained on "
             f"{best['trained_on']} by `bench_binary_accuracy.py --device cuda --save-state`; evaluated here on the "
             "10,000 test images through each member's integer model", "",
             "| model | single network % | " + " | ".join(f"M={k}" for k in best["float_uniform"]) + " |",
             "|---|---:|" + "---:|" * len(best["float_uniform"])]
    for e in result["models"].values():
        for src in ("float_uniform", rb):
            how = ("deterministic-trained" if e["config"] == "w1a1" else
                   "deterministic, then stochastic fine-tune" if e.get("finetuned") else "stochastic-trained")
            label = (f"{how} W1A1, {e['epochs']} epochs, lr {e['lr']:g}, "
                     f"draws: {'float uniform' if src == 'float_uniform' else str(result['rng_bits']) + '-bit comparator'}")
            lines.append(f"| {label} | {e['deterministic']:.2f} (sign) | "
                         + " | ".join(f"{v:.2f}" for v in e[src].values()) + " |")
    lines.append(f"| float twin (same network and recipe, {result['epochs']} epochs, no quantizers) | {fl:.2f} | " + " | ".join("" for _ in best["float_uniform"]) + " |")
    cost = best["cost_one_pass"]
    lines += ["", "Targets (issue 18):", "",
              f"- {m}-member ensemble ({name}, float draws) {best['float_uniform'][m]:.2f}% against the deterministic "
              f"binary CNN {base['deterministic']:.2f}%: {gain:+.2f} points (target >= +1.0: "
              f"{'met' if gain >= 1.0 else '**not met**'})",
              f"- against the float twin {fl:.2f}%: {best['float_uniform'][m] - fl:+.2f} points (target >= 0: "
              f"{'met' if best['float_uniform'][m] >= fl else '**not met**'})", "",
              f"Cost: one member is {cost['bops']:,} BOPs and {cost['best_us']:.0f} us best / {cost['median_us']:.0f} "
              f"us median at batch 1 (1 thread, integer model); M members cost M times that: "
              + ", ".join(f"M={k}: {k * cost['median_us'] / 1000:.1f} ms" for k in best["float_uniform"]) + ".",
              "", "Single members (float draws), accuracy %: "
              + ", ".join(f"{v:.2f}" for v in best["float_uniform_members"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-state", metavar="DIR", help="bench_binary_accuracy.py --save-state's folder (required "
                   "unless --report-only)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.005, help="learning rate of the deterministic and float runs")
    p.add_argument("--stochastic-lrs", type=float, nargs="+", default=[0.005, 0.02])
    p.add_argument("--finetuned-lrs", type=float, nargs="*", default=[],
                   help="stochastic-weight runs fine-tuned from the deterministic one (--init-state; files *-ft)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="epochs of the fine-tuned runs (default --epochs)")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--rng-bits", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="ensemble")
    p.add_argument("--report-only", action="store_true", help="rewrite the Markdown from results/<name>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.report_only:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        result = saved["runs"]
        result["models"] = {k: {**v, **{src: {int(m): a for m, a in v[src].items()}
                                        for src in v if src in ("float_uniform", f"rng{result['rng_bits']}")}}
                            for k, v in result["models"].items()}
        write_result(args.name, markdown(result) + f"\n\n{saved.get('notes', '')}")
        return
    if args.from_state is None:
        p.error("--from-state DIR is required (the folder bench_binary_accuracy.py --save-state wrote)")
    result = run(args)
    name, best = _best(result)
    base = result["models"][next(k for k, v in result["models"].items() if v["config"] == "w1a1")]
    rows = [{"family": "stochastic ensemble (Vogel et al.)", "model": f"fmnist-binary-cnn c={args.channels}",
             "config": f"{args.members} members drawn from W1A1 latent weights ({name}: "
                       f"{'deterministic, then stochastic fine-tune' if best.get('finetuned') else 'stochastic-trained'}"
                       "), float draws",
             "accuracy": round(best["float_uniform"][args.members], 2), "float_accuracy": round(result["float"]["accuracy"], 2),
             "deterministic_binary_accuracy": round(base["deterministic"], 2)}]
    write_result(args.name, markdown(result))
    tmp = RESULTS / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps({"rows": rows, "runs": result}, indent=2) + "\n")
    tmp.replace(RESULTS / f"{args.name}.json")


if __name__ == "__main__":
    main()
