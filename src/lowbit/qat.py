"""Quantization-aware training from a float model: LSQ (Esser et al. 2020) and FAQ (McKinstry et al. 2019).

1. :func:`prepare_qat` traces, folds BatchNorm and fuses as :func:`lowbit.ptq.prepare` does,
   then puts quantizers in the loop:

   - ``method="lsq"``: every weight and activation slot gets a learned step (per output
     channel for weights, or one per tensor with ``weight_granularity="tensor"``), initialised ``2 mean|v| / sqrt(Q_P)`` on a calibration batch,
     gradient scale ``1 / sqrt(N Q_P)`` (``convention`` picks N); ``init="mse"`` starts each
     step at its least-squares value instead (better at 4 bits; at 2 bits it collapsed to chance
     on the zoo ResNet, where the paper's initialisation reaches 91%);
   - ``method="faq"``: fixed steps from percentile calibration (99.99th), straight-through
     rounding; only the weights train.

   BatchNorm is folded into the weights before training (its statistics frozen), or, with
   ``bn_freeze_steps=N``, kept after its quantized conv: it normalises with batch statistics and
   updates its running ones for the first N optimizer steps, then uses the frozen running ones
   (Jacob et al., CVPR 2018, sec. 3.2; Krishnamoorthi 2018); :func:`convert_qat` folds it into the
   weights and scales each channel's step by ``|gamma / sigma|``. First and last layers stay at
   ``first_last_bits`` (8).
2. :func:`train` runs SGD with Nesterov momentum and a cosine decay, optionally distilling from
   the float model, with a progress bar, an atomic checkpoint per epoch and ``resume``.
   Under ``torchrun`` it uses DistributedDataParallel over gloo (CPU) or nccl (GPU): each rank
   takes its share of every global batch, so N processes compute what one process computes
   with the same global batch.
3. :func:`convert_qat` freezes the learned steps: the model runs the exact integer
   arithmetic and lowers with :func:`lowbit.integer.to_integer`.

Bit widths, as the papers define them: ``b``-bit weights are two's complement
``-2^(b-1) .. 2^(b-1) - 1`` (2 bits: {-2, -1, 0, 1}); activations after ReLU are
``0 .. 2^b - 1``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import fx, nn

from lowbit.data import Split
from lowbit.data.batches import random_shift_flip
from lowbit.errors import CheckpointError, ConfigError, DataError
from lowbit.formats import check_bits
from lowbit.nn.lsq import LSQActQuantizer, LSQWeightQuantizer
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.unified import unified_modules
from lowbit.ptq import PTQConfig, calibrate, check_model, convert, prepare
from lowbit.utils.files import atomic_write
from lowbit.utils.progress import Progress
from lowbit.zoo.recipes import sgd_nesterov


@dataclass(frozen=True)
class QATConfig:
    """What to train: widths, method, LSQ gradient-scale convention."""

    weight_bits: int = 4
    act_bits: int = 4
    method: Literal["lsq", "faq"] = "lsq"
    first_last_bits: int | None = 8
    convention: Literal["paper", "numel", "features"] = "paper"
    init: Literal["lsq", "mse"] = "lsq"
    bn_freeze_steps: int | None = None
    weight_granularity: Literal["channel", "tensor"] = "channel"

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "QATConfig.weight_bits", low=2, high=8)
        check_bits(self.act_bits, "QATConfig.act_bits", low=2, high=8)
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "QATConfig.first_last_bits", low=2, high=8)
        if self.method not in ("lsq", "faq"):
            raise ConfigError(f"QATConfig.method must be 'lsq' or 'faq', got {self.method!r}")
        if self.convention not in ("paper", "numel", "features"):
            raise ConfigError(f"QATConfig.convention must be paper, numel or features, got {self.convention!r}")
        if self.bn_freeze_steps is not None and (isinstance(self.bn_freeze_steps, bool)
                                                 or not isinstance(self.bn_freeze_steps, int) or self.bn_freeze_steps < 0):
            raise ConfigError(f"QATConfig.bn_freeze_steps must be None (fold before training) or an int >= 0, "
                              f"got {self.bn_freeze_steps!r}")
        if self.weight_granularity not in ("channel", "tensor"):
            raise ConfigError(f"QATConfig.weight_granularity must be 'channel' or 'tensor', got {self.weight_granularity!r}")
        if self.init not in ("lsq", "mse"):
            raise ConfigError(f"QATConfig.init must be 'lsq' or 'mse', got {self.init!r}")
        if self.bn_freeze_steps is not None and self.weight_granularity == "tensor":
            # folding a trained BatchNorm scales each output channel's weight step by |gamma / sigma|:
            # one step per tensor cannot hold per-channel factors
            raise ConfigError("QATConfig.bn_freeze_steps (BatchNorm trained unfolded) needs per-channel weight "
                              "steps: use weight_granularity='channel' (CLI: --granularity channel), or drop "
                              "bn_freeze_steps to fold BatchNorm before training")

    def ptq(self) -> PTQConfig:
        observer = "percentile" if self.method == "faq" else "minmax"
        return PTQConfig(self.weight_bits, self.act_bits, weight_granularity=self.weight_granularity,
                         act_observer=observer, first_last_bits=self.first_last_bits, bias_correction=False)


@dataclass(frozen=True)
class TrainConfig:
    """SGD + Nesterov momentum, cosine decay to zero; ``distill`` > 0 mixes in KL to the float model."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-5
    distill: float = 0.0
    temperature: float = 2.0
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0 or not 0 <= self.distill <= 1:
            raise ConfigError(f"lr must be > 0 and distill in [0, 1], got {self.lr}, {self.distill}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


def _swap_lsq(gm: nn.Module, config: QATConfig) -> None:
    for name, m in list(gm.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is ActQuantizer:
                setattr(m, child_name, LSQActQuantizer(child.spec, config.convention, config.init))
    for _, u in unified_modules(gm):
        if u.weight_quant is not None:
            u.weight_quant = LSQWeightQuantizer(u.weight_quant.spec, u.weight, config.convention, config.init)


def prepare_qat(model: nn.Module, config: QATConfig, calibration: torch.Tensor) -> nn.Module:
    """A training-ready copy of ``model`` with quantizers in the loop (see the module docstring)."""
    if not isinstance(config, QATConfig):
        raise ConfigError(f"config must be a QATConfig, got {type(config).__name__}")
    check_model(model, "lowbit.qat.prepare_qat")
    if not isinstance(calibration, torch.Tensor) or calibration.numel() == 0:
        raise DataError("prepare_qat needs a non-empty calibration batch (a tensor of inputs)")
    if calibration.is_floating_point() and not bool(torch.isfinite(calibration).all()):
        raise DataError("prepare_qat's calibration batch holds NaN or inf values: clean the data first")
    gm = prepare(model, config.ptq(), (calibration[:2],), fold_bn=config.bn_freeze_steps is None)
    if not isinstance(gm, fx.GraphModule):
        raise ConfigError(f"lowbit QAT needs a graph of {type(model).__name__}, and neither torch.fx nor torch.export "
                          "could capture one (data-dependent control flow?); post-training quantization "
                          "(lowbit.ptq.quantize) works on it by module swap")
    if config.method == "lsq":
        _swap_lsq(gm, config)
        with torch.no_grad():
            gm(calibration)  # initialises every activation step on this batch
    else:
        calibrate(gm, [calibration], progress=False)
        convert(gm)  # fixed steps; the weights (and biases) train through straight-through rounding
    gm.lowbit_qat = asdict(config)  # type: ignore[attr-defined]
    return gm.train()


# ---------------------------------------------------------------- distributed helpers


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` set); gloo on CPU, nccl on GPU."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _world()


# ---------------------------------------------------------------- checkpoints


def _fingerprint(model: nn.Module, config: QATConfig, train_cfg: TrainConfig) -> str:
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    text = shapes + repr(asdict(config)) + repr({k: v for k, v in asdict(train_cfg).items() if k != "epochs"})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, fingerprint: str,
                    history: list) -> None:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "fingerprint": fingerprint,
             "history": history, "rng": torch.get_rng_state(), "format": "lowbit-qat-checkpoint-1"}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, fingerprint: str) -> dict:
    """Read a checkpoint without executing pickled code (``weights_only``) and check it fits this run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}: run without --resume first") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for corrupt files
        raise CheckpointError(f"{path} is not a readable lowbit QAT checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != "lowbit-qat-checkpoint-1":
        raise CheckpointError(f"{path} is not a lowbit QAT checkpoint")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path} was written for another model or configuration; "
                              "use the same --model, bits, method and training options, or a new --out")
    return state


# ---------------------------------------------------------------- training


def _loss(logits: torch.Tensor, y: torch.Tensor, teacher: nn.Module | None, x: torch.Tensor,
          cfg: TrainConfig) -> torch.Tensor:
    loss = nn.functional.cross_entropy(logits, y)
    if teacher is None or cfg.distill == 0:
        return loss
    with torch.no_grad():
        t = nn.functional.softmax(teacher(x) / cfg.temperature, dim=1)
    kl = nn.functional.kl_div(nn.functional.log_softmax(logits / cfg.temperature, 1), t, reduction="batchmean")
    return (1 - cfg.distill) * loss + cfg.distill * cfg.temperature**2 * kl


def train(model: nn.Module, data: Split, cfg: TrainConfig = TrainConfig(), out_dir: str | Path | None = None,
          resume: bool = False, teacher: nn.Module | None = None, progress: bool = True) -> list[dict]:
    """Train a :func:`prepare_qat` model in place; returns per-epoch ``{"epoch", "loss", "accuracy"}``."""
    qcfg = QATConfig(**getattr(model, "lowbit_qat", {}))
    rank, world = _world()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must divide evenly over {world} processes")
    fingerprint = _fingerprint(model, qcfg, cfg)
    opt = sgd_nesterov(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    ckpt = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    history: list[dict] = []
    start = 0
    if resume:
        if ckpt is None:
            raise ConfigError("resume needs an output folder with a checkpoint")
        state = load_checkpoint(ckpt, fingerprint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history = state["epoch"], list(state["history"])
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    for epoch in range(start, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # the data order depends on the epoch only
        order = torch.randperm(len(data), generator=gen)
        net.train()
        freeze_bn(model, qcfg.bn_freeze_steps, epoch * steps_per_epoch)
        seen = correct = 0
        loss_sum = 0.0
        bar = Progress(range(steps_per_epoch), steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                       enabled=progress and rank == 0)
        for i in bar:
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x, y = data.x[idx], data.y[idx]
            if cfg.augment:  # on the global batch, so that every rank count gives the same samples
                x = random_shift_flip(x, gen)
            x, y = x[rank::world], y[rank::world]  # this rank's share of the global batch
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps_per_epoch + i) / total))
            for group in opt.param_groups:
                group["lr"] = lr
            logits = net(x)
            loss = _loss(logits, y, teacher, x, cfg)
            if not torch.isfinite(loss):
                raise DataError(f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {i + 1}: lower --lr "
                                f"(now {cfg.lr}) or check the data")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            freeze_bn(model, qcfg.bn_freeze_steps, epoch * steps_per_epoch + i + 1)
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen})
        if ckpt is not None and rank == 0:
            save_checkpoint(ckpt, model, opt, epoch + 1, fingerprint, history)
        if world > 1:
            dist.barrier()
    return history


def freeze_bn(model: nn.Module, freeze_steps: int | None, step: int) -> None:
    """From optimizer step ``freeze_steps`` on, unfolded BatchNorms use (and keep) their running statistics."""
    if freeze_steps is None or step < freeze_steps:
        return
    for _, u in unified_modules(model):
        if u.bn is not None:
            u.bn.eval()


@torch.no_grad()
def fold_trained_bn(model: nn.Module) -> list[str]:
    """Fold every unfolded BatchNorm into its unified layer; returns the layers folded.

    ``w' = g w``, ``b' = g (b - mu) + beta`` with ``g = gamma / sqrt(var + eps)`` per channel, and the
    channel's weight step (or fixed scale) becomes ``|g| s``: the codes stay ``round(w / s)``, their
    sign flipped where ``g < 0`` (a code of -2^(b-1) there saturates at 2^(b-1) - 1).
    """
    done = []
    for name, u in unified_modules(model):
        if u.bn is None:
            continue
        bn, wq = u.bn, u.weight_quant
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shape = (-1, *[1] * (u.weight.ndim - 1))
        u.weight.mul_(g.reshape(shape))
        bias = u.bias if u.bias is not None else torch.zeros_like(g)
        u.bias = nn.Parameter(g * (bias - bn.running_mean) + bn.bias)
        if wq is not None:
            steps = wq.step if hasattr(wq, "step") else wq.scale
            if steps.numel() != g.numel():
                raise ConfigError(f"{name}: folding a trained BatchNorm needs per-channel weight steps")
            steps.mul_(g.abs().reshape(steps.shape))
        u.bn = None
        done.append(name)
    return done


def convert_qat(model: nn.Module) -> nn.Module:
    """Freeze a trained QAT model: LSQ steps become scales; FAQ keeps its fixed scales. Returns it in eval mode.

    BatchNorms kept unfolded for training (``bn_freeze_steps``) are folded first."""
    fold_trained_bn(model)
    method = getattr(model, "lowbit_qat", {}).get("method", "lsq")
    if method == "lsq":
        convert(model)
    else:
        from lowbit.graph.fx_passes import attach_input_qparams

        attach_input_qparams(model)
    return model.eval()


__all__ = ["QATConfig", "TrainConfig", "convert_qat", "fold_trained_bn", "freeze_bn", "init_distributed",
           "load_checkpoint", "prepare_qat", "train"]
