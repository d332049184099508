"""Workers for the two-process tests (spawned by torch.multiprocessing): observers and the training loop."""

import os

import torch
import torch.distributed as dist

from lowbit.granularity import PerChannel, PerTensor
from lowbit.observers import MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver


def data_for(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(rank)
    return [torch.randn(8, 3, 5, generator=gen) * (rank + 1) for _ in range(4)]


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        obs = {
            "minmax": MinMaxObserver(PerChannel(1)),
            "ema": MovingAverageMinMaxObserver(PerTensor(), momentum=0.5),
            "pct": PercentileObserver(PerTensor(), percentile=99.0, max_samples=1 << 12),
        }
        for x in data_for(rank)[: 2 + rank]:  # ranks see different amounts of data
            for o in obs.values():
                o(x)
        for o in obs.values():
            o.sync()
        result = {name: o.range() for name, o in obs.items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def tiny_mlp() -> torch.nn.Module:
    """The model of the two-process training test, initialised the same on every rank."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def train_data(n: int = 203):
    """Fashion-MNIST's first ``n`` training images: 203 in batches of 64 leaves an uneven last batch of 11."""
    from lowbit.data import fashion_mnist

    return fashion_mnist("train").take(n)


def train_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Train ``tiny_mlp`` with the loop on this rank's share of every global batch; save the history."""
    from lowbit.training import LoopConfig, SGDNesterov, Shuffled, train

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_mlp()
        history = train(model, Shuffled(train_data(), 64, seed=1), LoopConfig(epochs=2, seed=1),
                        optimizer=SGDNesterov(lr=0.05), out_dir=out_dir, progress=False)
        torch.save(history, os.path.join(out_dir, f"history{rank}.pt"))
    finally:
        dist.destroy_process_group()
