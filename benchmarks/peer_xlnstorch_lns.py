"""xlnstorch (the xlns project's PyTorch LNS simulator) on bench_lns.py's Fashion-MNIST MLP 784-100-10.

Runs in its own environment (xlnstorch pins its own torch), e.g.::

    python3 -m venv /work/venvs/xlns && /work/venvs/xlns/bin/pip install xlnstorch
    PYTHONPATH=src /work/venvs/xlns/bin/python benchmarks/peer_xlnstorch_lns.py --steps 20 --out /tmp/xlns.json

Same data, initial weights (encoded from ``nn.Linear``'s seed-0 init), batch 100, SGD lr 0.1, ``f=10`` fractional
exponent bits (the fraction of lowbit's 16-bit format; xlnstorch stores codes in float64, so its exponent range is
not limited to 16 bits). Only ``--steps`` steps are timed; seconds per epoch are extrapolated (600 steps) and the
accuracy is that of the partly trained model on ``--test`` test images, both stated as such in the output.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import xlnstorch as xt

from lowbit.data.datasets import fashion_mnist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--f", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = fashion_mnist("train+val"), fashion_mnist("test")
    xtr, xte = train.x.reshape(len(train), -1).double(), test.x.reshape(len(test), -1).double()

    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(784, 100), torch.nn.Linear(100, 10)
    m1, m2 = xt.nn.LNSLinear(784, 100, weight_f=args.f, bias_f=args.f), xt.nn.LNSLinear(100, 10, weight_f=args.f,
                                                                                          bias_f=args.f)
    for m, lin in ((m1, l1), (m2, l2)):  # lowbit's initial weights, encoded by xlnstorch
        m.register_parameter("weight", xt.lnstensor(lin.weight.detach().double(), f=args.f))
        m.register_parameter("bias", xt.lnstensor(lin.bias.detach().double(), f=args.f))
    params = list(m1.lns_parameters()) + list(m2.lns_parameters())
    opt = xt.optim.LNSSGD(params, lr=0.1)

    def forward(x):
        h = torch.nn.functional.relu(m1(x))
        return m2(h)

    perm = torch.randperm(len(train.y), generator=torch.Generator().manual_seed(1000))
    times = []
    for step, idx in enumerate(perm.split(100)[: args.steps]):
        t0 = time.perf_counter()
        opt.zero_grad()
        x = xt.lnstensor(xtr[idx], f=args.f)
        loss = torch.nn.functional.cross_entropy(forward(x), train.y[idx])
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        print(f"step {step}: {times[-1]:.2f} s, loss {float(loss.value):.3f}", flush=True)
    with torch.no_grad():
        z = forward(xt.lnstensor(xte[: args.test], f=args.f)).value
    acc = float((z.argmax(1) == test.y[: args.test]).double().mean()) * 100
    per_step = sum(times[1:]) / max(1, len(times) - 1)  # the first step includes warm-up
    result = {"storage": f"lns-f{args.f}-float64", "accuracy": round(acc, 2),
              "extra": {"seconds_per_epoch": round(per_step * 600, 1), "steps_timed": args.steps,
                        "seconds_per_step": round(per_step, 3), "extrapolated": True, "frac_bits": args.f,
                        "test_images": args.test, "delta": "xlnstorch default sbdb 'ideal' (exact Delta in float64)",
                        "note": f"accuracy after {args.steps} steps only (not comparable to full training)",
                        "cpp_backend": bool(xt.CSRC_AVAILABLE), "torch": torch.__version__}}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
