"""Bit-slice sparsity of the models ``bench_bitslice.py --save-models DIR`` saved, measured four ways side by side.

- ``cells``: the benchmark's measure: zero cells / all cells per 2-bit slice over the Linear weights (pruned weights
  included, codes clipped at 255), averaged over the four slices (every slice has as many cells, so this is also
  the zero share of all cells).
- ``official``: as the official code (zjysteven/bitslice_sparsity, ``calc_zero_ratio``): over all parameters,
  biases included, each tensor with its own scale ``ceil(log2 max|p|)``, codes ``round(|p| / 2^(scale-8))`` not
  clipped (a code of 256 puts 4 in the top slice).
- ``kept``: the benchmark's measure over the weights that survived pruning only (the pruned ones are zero in
  every slice for every regularizer, so they pull all ratios towards 1).
- ``per-layer``: the unweighted mean over the two layers of each layer's mean zero ratio.

For each measure: bit-slice L1's pick / plain L1's pick of the mean zero ratio, and plain L1's / bit-slice L1's
non-zero share (fewer non-zero cells). The picks are given on the command line (the benchmark's matching rule).

    PYTHONPATH=src .venv/bin/python benchmarks/bitslice_measures.py DIR --l1 10 --bitslice 0.02
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lowbit.functional.bitslice import bit_slices


def official_slices(p: torch.Tensor) -> torch.Tensor:
    amax = float(p.abs().max())
    scale = torch.ceil(torch.log2(torch.tensor(max(amax, 1e-5))))
    y = torch.round(p.abs() / 2 ** (scale - 8))
    b1 = torch.floor(y / 64)
    b2 = torch.floor((y - 64 * b1) / 16)
    b3 = torch.floor((y - 64 * b1 - 16 * b2) / 4)
    return torch.stack([b1, b2, b3, y - 64 * b1 - 16 * b2 - 4 * b3])


def measures(state: dict) -> dict[str, list[float]]:
    weights = [v for k, v in state.items() if k.endswith("weight")]
    params = list(state.values())
    out = {}
    cells = [bit_slices(w).flatten(1) for w in weights]
    out["cells"] = ((torch.cat(cells, 1) == 0).float().mean(1)).tolist()
    out["official"] = ((torch.cat([official_slices(p).flatten(1) for p in params], 1) == 0).float().mean(1)).tolist()
    kept = torch.cat([s[:, w.flatten() != 0] for s, w in zip(cells, weights)], 1)
    out["kept"] = ((kept == 0).float().mean(1)).tolist()
    per_layer = [(s == 0).float().mean(1) for s in cells]
    out["per-layer"] = (sum(per_layer) / len(per_layer)).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--l1", type=float, required=True, help="plain L1's picked alpha")
    ap.add_argument("--bitslice", type=float, required=True, help="bit-slice L1's picked alpha")
    args = ap.parse_args()
    folder = Path(args.folder)
    models = {p.stem: measures(torch.load(p)) for p in sorted(folder.glob("*.pt"))}
    lines = ["| model | measure | b1 zero | b2 zero | b3 zero | b4 zero | mean |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        for kind, z in m.items():
            lines.append(f"| {name} | {kind} | " + " | ".join(f"{v:.3f}" for v in z) + f" | {sum(z) / 4:.3f} |")
    l1, bs = models[f"plain_L1_{args.l1:g}"], models[f"bitslice_L1_{args.bitslice:g}"]
    lines += ["", f"Picks: plain L1 alpha {args.l1:g}, bit-slice L1 alpha {args.bitslice:g}.", "",
              "| measure | mean zero ratio x (bit-slice / L1) | non-zero reduction x (L1 / bit-slice) | "
              "per slice zero ratio x b1/b2/b3/b4 | per slice non-zero reduction x b1/b2/b3/b4 |",
              "|---|---:|---:|---|---|"]
    for kind in l1:
        a, b = l1[kind], bs[kind]
        ma, mb = sum(a) / 4, sum(b) / 4
        zero = "/".join(f"{y / max(x, 1e-12):.2f}" for x, y in zip(a, b))
        dense = "/".join(f"{(1 - x) / max(1 - y, 1e-12):.2f}" for x, y in zip(a, b))
        lines.append(f"| {kind} | {mb / ma:.2f} | {(1 - ma) / max(1 - mb, 1e-12):.2f} | {zero} | {dense} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
