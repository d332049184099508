"""Write the shipped BitSplit W1A2, Eedn and stochastic-ensemble weights (:mod:`lowbit.zoo.family_zoo`) from the
states the family benchmarks saved, and record each deployed model's test accuracy in the JSON beside it.

Sources (``--states DIR``), as the benchmarks write them:

* ``bitsplit_w1a2.pt``: ``bench_bitsplit.py --epochs 10 --channels 64 --bits 2 --kinds bitsplit --save-state``;
* ``eedn-copy0.npz`` + ``.json``: ``bench_truenorth.py --epochs 12 --copies 1 --save-state``;
* ``cnn-c64-w1a1s-e12-lr0.005-ft.safetensors``: ``bench_binary_accuracy.py --configs w1a1s --epochs 12
  --init-state <w1a1 state> --save-state`` (stochastic binary weights, fine-tuned from the deterministic W1A1).

Each shipped model is reloaded and checked against its source (equal outputs on the whole test set) before the
accuracy is written. Accuracies are the deployed models' (BitSplit: the bitwise engine; Eedn: the folded
integer-threshold net; ensemble: each member's integer model, softmax averaged), on the 10000 test images and on
the first 1000 (``subset_accuracy``, what ``tests/test_family_zoo.py`` checks).

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ship_families.py --states /work/states18
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lowbit.data import load  # noqa: E402
from lowbit.errors import CheckpointError  # noqa: E402
from lowbit.zoo import family_zoo as fz  # noqa: E402
from lowbit.zoo.weights_io import read_meta, save_state  # noqa: E402

SUBSET = 1000


@torch.no_grad()
def logits_of(fn, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([torch.as_tensor(fn(x[i:i + batch])).float() for i in range(0, len(x), batch)])


def fraction(scores: torch.Tensor, y: torch.Tensor) -> float:
    return round(float((scores.argmax(1) == y).float().mean()), 6)


def accuracies(scores: torch.Tensor, y: torch.Tensor) -> dict:
    return {"test_accuracy": fraction(scores, y), "subset_accuracy": fraction(scores[:SUBSET], y[:SUBSET]),
            "subset_images": SUBSET}


def rewrite_meta(key: str, extra: dict) -> None:
    """Add ``extra`` to the JSON of ``key`` (the archive is unchanged: save_state recomputes the same sha256)."""
    import numpy as np

    path = fz.weights_path(key)
    meta = {k: v for k, v in read_meta(path).items() if k not in ("format_version", "sha256")}
    with np.load(path, allow_pickle=False) as a:
        state = {k: torch.from_numpy(a[k]) for k in a.files}
    save_state(state, path, {**meta, **extra}, compressed=True)


def ship_bitsplit(states: Path, test) -> dict:
    from lowbit.nn.bitsplit import BitSplitCNN, deploy

    saved = torch.load(states / "bitsplit_w1a2.pt", map_location="cpu", weights_only=True)
    src = BitSplitCNN(bits=int(saved["bits"]), channels=int(saved["channels"]))
    src.load_state_dict(saved["state"])
    src.eval()
    fz.save_bitsplit(src, {"recipe": "benchmarks/bench_bitsplit.py --epochs 10 --channels 64 --bits 2 --kinds bitsplit "
                                     "--device cuda --save-state DIR; benchmarks/ship_families.py",
                           "epochs": saved.get("epochs"), "train_device": saved.get("device"),
                           "evaluated": "the bitwise engine (lowbit.nn.bitsplit.deploy), fraction of the test images"})
    model = fz.pretrained_bitsplit()
    ref, sim = logits_of(src, test.x), logits_of(model, test.x)
    out = logits_of(deploy(model), test.x)
    if not (torch.equal(ref, sim) and torch.equal(sim, out)):
        raise CheckpointError("bitsplit: the shipped model's logits differ from the source's or the engine's")
    acc = accuracies(out, test.y)
    rewrite_meta(fz.BITSPLIT, acc)
    return acc


def ship_eedn(states: Path, test) -> dict:
    from lowbit.snn.eedn import EednNet, EednSpec, cores, fold, run_batched
    from lowbit.zoo.weights_io import load_weights

    src_meta = json.loads((states / "eedn-copy0.json").read_text())
    src = EednNet(EednSpec(**src_meta["spec"]))
    load_weights(src, states / "eedn-copy0.npz")
    src.eval()
    fz.save_eedn(src, {"recipe": "benchmarks/bench_truenorth.py --epochs 12 --copies 1 --device cuda --save-state DIR; "
                                 "benchmarks/ship_families.py",
                       "train": src_meta["recipe"], "train_seconds": src_meta.get("train_seconds"),
                       "evaluated": "the folded net (lowbit.snn.eedn.fold: int8 trinary synapses, integer thresholds),"
                                    " fraction of the test images"})
    net = fz.pretrained_eedn()
    ref, bn = run_batched(fold(src), test.x), run_batched(net, test.x)
    r = run_batched(fold(net), test.x)
    if not (torch.equal(ref.counts, r.counts) and torch.equal(ref.spikes, r.spikes)):
        raise CheckpointError("eedn: the shipped net's folded counts differ from the source's")
    acc = {**accuracies(r.counts, test.y), "cores": cores(net), "spikes_per_inference": round(float(r.spikes.mean()), 1),
           "bn_net_equal_counts": int((bn.counts == r.counts).all(1).sum())}
    rewrite_meta(fz.EEDN, acc)
    return acc


def ship_stochastic(states: Path, test) -> dict:
    from bench_binary_accuracy import load_state

    from lowbit.integer import to_integer
    from lowbit.qat import convert_qat
    from lowbit.zoo.binary_zoo import save_binary

    gm, *_ = load_state(states, "cnn", "w1a1s", "xnor", 64, 12, 0.005, "-ft")
    convert_qat(gm)
    gm.eval()
    save_binary(fz.STOCHASTIC, gm, {
        "recipe": "benchmarks/bench_binary_accuracy.py --models cnn --configs w1a1s --epochs-cnn 12 --lr 0.005 "
                  "--init-state <the w1a1 run's state> --device cuda --save-state DIR; benchmarks/ship_families.py",
        "epochs": 12, "lr": 0.005, "seed": 0, "binary_scale": "xnor", "channels": 64,
        "evaluated": "integer models (lowbit.integer.to_integer); the ensemble averages its members' softmax"})
    model = fz.pretrained_stochastic()
    ens_src = fz.stochastic_ensemble(gm)
    ens = fz.stochastic_ensemble(model)
    x, y = test.x, test.y
    det = logits_of(to_integer(model, (x[:1],)), x)
    if not torch.equal(det, logits_of(to_integer(gm, (x[:1],)), x)):
        raise CheckpointError("stochastic: the shipped deterministic net differs from the source's")
    probs = []
    for m_src, m in zip(ens_src.members, ens.members):
        out = logits_of(to_integer(m, (x[:1],)), x)
        if not torch.equal(out, logits_of(to_integer(m_src, (x[:1],)), x)):
            raise CheckpointError("stochastic: a shipped ensemble member differs from the source's")
        probs.append(torch.softmax(out, dim=1))
    probs = torch.stack(probs)
    members = [fraction(p, y) for p in probs]
    acc = {**accuracies(probs.mean(0), y), "ensemble_members": fz.ENSEMBLE_MEMBERS, "ensemble_seed": fz.ENSEMBLE_SEED,
           "member_accuracy": members, "deterministic_accuracy": fraction(det, y),
           "deterministic_subset_accuracy": fraction(det[:SUBSET], y[:SUBSET]),
           "member0_subset_accuracy": fraction(probs[0, :SUBSET], y[:SUBSET]),
           "test_accuracy_by_members": {m: fraction(probs[:m].mean(0), y) for m in (1, 2, 4, 8, 16)}}
    rewrite_meta(fz.STOCHASTIC, acc)
    return acc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--states", required=True, help="folder with the benchmarks' saved states (see the docstring)")
    p.add_argument("--only", nargs="+", choices=("bitsplit", "eedn", "stochastic"),
                   default=["bitsplit", "eedn", "stochastic"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    test = load("fashion-mnist", "test")
    ship = {"bitsplit": ship_bitsplit, "eedn": ship_eedn, "stochastic": ship_stochastic}
    for name in args.only:
        print(name, json.dumps(ship[name](Path(args.states), test)), flush=True)


if __name__ == "__main__":
    main()
