"""Train the shipped ``vowels_gru`` (lowbit.zoo.recurrent): GRU(12->64) + linear, JapaneseVowels.

Adam 5e-3 with a cosine schedule, batches of 32 grouped by length (no padding steps), seeded;
well under a minute on one core. Writes ``vowels_gru.npz`` + ``.json`` (test accuracy, the
command) with the zoo's own writer.

    PYTHONPATH=src .venv/bin/python benchmarks/train_vowels_gru.py [--epochs 40] [--out src/lowbit/zoo/weights]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from torch import nn

from lowbit.data.japanese_vowels import japanese_vowels
from lowbit.zoo import recurrent
from lowbit.zoo.weights_io import save_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(recurrent.WEIGHTS_DIR))
    args = ap.parse_args()
    tr, te = japanese_vowels("train"), japanese_vowels("test")
    torch.manual_seed(args.seed)
    model = recurrent.entry("vowels_gru").build()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    steps = args.epochs * sum(1 for _ in recurrent.length_batches(tr, 32))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for x, y in recurrent.length_batches(tr, 32, gen):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: last batch loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - t0
    model.eval()
    acc = recurrent.accuracy(model, te)
    meta = {"model": "vowels_gru", "description": recurrent.entry("vowels_gru").description,
            "test_accuracy": acc, "dataset": "japanese_vowels", "train_split": f"train ({len(tr)})",
            "test_split": f"test ({len(te)})",
            "recipe": {"epochs": args.epochs, "lr": 5e-3, "optimizer": "adam, cosine", "batch": 32,
                       "seed": args.seed, "clip_grad_norm": 1.0},
            "command": "PYTHONPATH=src python " + " ".join(["benchmarks/train_vowels_gru.py", *sys.argv[1:]]),
            "train_seconds": round(seconds, 1), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    path = recurrent.weights_path("vowels_gru", args.out)
    save_weights(model, path, meta)
    print(f"vowels_gru: test accuracy {100 * acc:.2f}% ({seconds:.1f} s) -> {path}")


if __name__ == "__main__":
    main()
