"""Worker for the two-process observer test (spawned by torch.multiprocessing)."""

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
