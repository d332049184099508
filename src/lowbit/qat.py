"""Quantization-aware training from a float model: LSQ (Esser et al. 2020) and FAQ (McKinstry et al. 2019).

1. :func:`prepare_qat` traces, folds BatchNorm and fuses as :func:`lowbit.ptq.prepare` does,
   then puts quantizers in the loop:

   - ``method="lsq"``: every weight and activation slot gets a learned step (per output
     channel for weights, or one per tensor with a ``PerTensor()`` weight spec), initialised ``2 mean|v| / sqrt(Q_P)`` on a calibration batch,
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
2. :func:`train` runs the one training loop (:func:`lowbit.train`) with SGD + Nesterov
   momentum and a cosine decay, optionally distilling from the float model (:class:`Distill`),
   with a progress bar, an atomic checksummed checkpoint per epoch and ``resume``. Under
   ``torchrun`` it uses DistributedDataParallel over gloo: each rank takes its share of every
   global batch, so N processes compute what one process computes with the same global batch.
3. :func:`convert_qat` freezes the learned steps: the model runs the exact integer
   arithmetic and lowers with :func:`lowbit.integer.to_integer`.

Binary networks (BNN, Courbariaux, Hubara et al. 2016; XNOR-Net, Rastegari et al. 2016): a
``QuantSpec(Binary(), PerChannel(0))`` weight spec trains ``sign(w)`` (times ``mean|w|`` per channel with
``binary="xnor"``) with the hard-tanh straight-through gradient, the latent weights clipped to
``[-1, 1]`` after each step (:class:`ClipLatent`); a ``QuantSpec(Binary())`` activation spec makes every
hidden layer's output ``sign(x)``. BatchNorm stays unfolded and trains with batch statistics for the
whole run (or ``bn_freeze_steps``), and is folded into each channel's sign threshold at conversion.
Binary weights take ``optimizer="adam"`` (:class:`lowbit.training.Adam`) in their recipe.

Quantized gradients (QNN, Hubara, Courbariaux et al., JMLR 2018, sec. 4): ``QATConfig(grad_bits=6)`` sets
``grad_bits`` on every unified layer with a quantized weight, so the gradient w.r.t. its GEMM output (what
the GEMM's backward turns into both the weight and the input gradient) is quantized to 6 bits with a
per-tensor ``max|g|`` scale and stochastic rounding (:func:`lowbit.functional.grad_quant.quantize_grad`).
The rounding draws from one ``torch.Generator`` per model, never the global RNG: :func:`prepare_qat` seeds
it with 0, and :func:`train` replaces it at each epoch's start with one seeded from ``TrainConfig.seed``
(:class:`SeedGradNoise`), so a resumed run draws what an uninterrupted one does. ``grad_bits`` is part of
the config stored in the run record, so resume refuses a checkpoint trained with other gradient bits.

Stochastic binary weights (BinaryConnect / BNN stochastic binarization, the training that stochastic ensembles
of bitwise nets sample from: Vogel et al. 2016, :mod:`lowbit.nn.ensemble`): ``QATConfig(stochastic_weights=True)``
draws each binary weight's sign in every training forward, ``+1`` with probability ``hard_sigmoid(w) =
clip((w + 1) / 2, 0, 1)`` (so ``E[sign] = clip(w, -1, 1)``), times the live ``mean|w|`` scale; the gradient is
the same hard-tanh straight-through one. Evaluation (``model.eval()``) and conversion use the deterministic
``sign(w)``. The draws come from a generator seeded per epoch exactly as the gradient rounding's (a stream of
its own), so resumed runs are reproducible.

Bit widths, as the papers define them: ``b``-bit weights are two's complement
``-2^(b-1) .. 2^(b-1) - 1`` (2 bits: {-2, -1, 0, 1}); activations after ReLU are
``0 .. 2^b - 1``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import fx, nn

from lowbit.data import Split
from lowbit.errors import ConfigError, DataError
from lowbit.formats import Binary, IntFormat, check_bits
from lowbit.functional.grad_quant import GRAD_BITS
from lowbit.functional.lsq import lsq_quantize_int
from lowbit.granularity import PerChannel
from lowbit.nn.lsq import LSQActQuantizer, LSQWeightQuantizer
from lowbit.nn.quantizers import ActQuantizer
from lowbit.nn.unified import unified_modules
from lowbit.ptq import PTQConfig, calibrate, check_model, convert, prepare
from lowbit.prepared import attach, record_of, require_record
from lowbit.spec import Percentile, QuantSpec, check_runs, lsq_range
from lowbit.training import (
    Adam,
    Cosine,
    CrossEntropy,
    Hooks,
    LoopConfig,
    SGDNesterov,
    Shuffled,
    check_labels,
    init_distributed,
    load_checkpoint,
    world,
)
from lowbit.training import train as train_loop
from lowbit.utils.fields import checked_init


_OLD = {k: "bit widths, granularity, observers and pow2 scales are QuantSpec values now: weight=int_weight(4) or QuantSpec(IntFormat(4), PerChannel(0)), act=uint_act(8) or QuantSpec(IntFormat(8, signed=False), observer=Percentile(99.99), pow2_scale=True)"
        for k in ("weight_bits", "act_bits", "weight_granularity", "weight_observer", "act_observer", "act_percentile",
                  "pow2_scales")}


@checked_init(_OLD)
@dataclass(frozen=True)
class QATConfig:
    """What to train: weight and activation specs, method, LSQ gradient-scale convention.

    ``weight`` may be ``IntFormat(2..8)`` (LSQ trains two's complement codes), ``Ternary()``
    (exact or TWN start; TNT recomputes its support and two scales from the latent weight at every step),
    ``PowerOfTwo(2..4)``, per output channel or per tensor, or ``Binary()``
    per output channel; ``act`` is ``IntFormat(2..8)`` per tensor (LSQ picks the sign from the first
    batch) or ``Binary()`` (sign). ``grad_bits`` (2..16; None keeps float gradients) quantizes the gradient
    w.r.t. every quantized layer's GEMM output to that many bits in the backward pass (QNN, Hubara et al.
    2018, sec. 4: 6 bits; :func:`lowbit.functional.grad_quant.quantize_grad`)."""

    weight: QuantSpec = field(default_factory=lambda: QuantSpec(IntFormat(4), PerChannel(0)))
    act: QuantSpec = field(default_factory=lambda: QuantSpec(IntFormat(4, signed=False)))
    method: Literal["lsq", "faq"] = "lsq"
    first_last_bits: int | None = 8
    convention: Literal["paper", "numel", "features"] = "paper"
    init: Literal["lsq", "mse"] = "lsq"
    bn_freeze_steps: int | None = None
    grad_bits: int | None = None
    stochastic_weights: bool = False

    def __post_init__(self) -> None:
        check_runs(self.weight, "weight", "QAT", max_bits=8)
        check_runs(self.act, "act", "QAT", max_bits=8)
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
        if self.grad_bits is not None and (isinstance(self.grad_bits, bool) or not isinstance(self.grad_bits, int)
                                           or not GRAD_BITS[0] <= self.grad_bits <= GRAD_BITS[1]):
            raise ConfigError(f"QATConfig.grad_bits must be None (float gradients) or an int in "
                              f"{GRAD_BITS[0]}..{GRAD_BITS[1]} (QNN quantizes gradients to 6 bits), got {self.grad_bits!r}")
        if not isinstance(self.stochastic_weights, bool):
            raise ConfigError(f"QATConfig.stochastic_weights must be True or False, got {self.stochastic_weights!r}")
        if self.stochastic_weights and not isinstance(self.weight.format, Binary):
            raise ConfigError(f"QATConfig.stochastic_weights draws binary signs (BinaryConnect / BNN stochastic "
                              f"binarization) and applies to Binary() weights only, not {self.weight.format!r}")
        if self.init not in ("lsq", "mse"):
            raise ConfigError(f"QATConfig.init must be 'lsq' or 'mse', got {self.init!r}")
        if self.binary and not isinstance(self.weight.granularity, PerChannel):
            # the BatchNorm kept for training folds into one scale per output channel
            raise ConfigError("QATConfig: binary weights train with their BatchNorm and fold it into one scale per "
                              "output channel: use QuantSpec(Binary(), PerChannel(0)) (CLI: --granularity channel)")
        if self.bn_freeze_steps is not None and not isinstance(self.weight.granularity, PerChannel):
            # folding a trained BatchNorm scales each output channel's weight step by |gamma / sigma|:
            # one step per tensor cannot hold per-channel factors
            raise ConfigError("QATConfig.bn_freeze_steps (BatchNorm trained unfolded) needs per-channel weight "
                              "steps: use a weight spec with PerChannel(0) (CLI: --granularity channel), or drop "
                              "bn_freeze_steps to fold BatchNorm before training")

    @property
    def binary(self) -> bool:
        """True for binary weights: BatchNorm stays unfolded in training, latent weights are clipped."""
        return isinstance(self.weight.format, Binary)

    def ptq(self) -> PTQConfig:
        faq_int = self.method == "faq" and isinstance(self.act.format, IntFormat)  # a binary act has no observer
        act = replace(self.act, observer=Percentile()) if faq_int else self.act
        return PTQConfig(self.weight, act, first_last_bits=self.first_last_bits, bias_correction=False)


@checked_init()
@dataclass(frozen=True)
class TrainConfig:
    """SGD + Nesterov momentum, cosine decay to zero; ``distill`` > 0 mixes in KL to the float model."""

    epochs: int = 3
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-5
    distill: float = 0.0
    temperature: float = 2.0
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise ConfigError(f"TrainConfig.{name} must be an integer >= {0 if name == 'seed' else 1}, got {v!r}")
        for name in ("lr", "momentum", "weight_decay", "distill", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"TrainConfig.{name} must be a finite number, got {v!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"TrainConfig.optimizer must be 'sgd' (Nesterov momentum) or 'adam', got {self.optimizer!r}")
        if not isinstance(self.augment, bool):
            raise ConfigError(f"TrainConfig.augment must be True or False, got {self.augment!r}")
        if not 0 <= self.momentum < 1 or not self.temperature > 0:
            raise ConfigError(f"momentum must be in [0, 1) and temperature > 0, got {self.momentum}, {self.temperature}")
        if not self.lr > 0 or not 0 <= self.distill <= 1:
            raise ConfigError(f"lr must be > 0 and distill in [0, 1], got {self.lr}, {self.distill}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


def _swap_lsq(gm: nn.Module, config: QATConfig) -> None:
    """Learned steps on every integer slot; binary slots stay ``sign`` (weights in ``live`` mode); TNT weights
    train in ``live`` mode too (support and both scales recomputed from the latent weight at every step)."""
    for _, m in list(gm.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is ActQuantizer and not child.binary:
                setattr(m, child_name, LSQActQuantizer(child.spec, config.convention, config.init))
    for _, u in unified_modules(gm):
        if u.weight_quant is not None and (u.weight_quant.binary or u.weight_quant.tnt):
            u.weight_quant.mode = "live"
        elif u.weight_quant is not None:
            u.weight_quant = LSQWeightQuantizer(u.weight_quant.spec, u.weight, config.convention, config.init)


def prepare_qat(model: nn.Module, config: QATConfig, calibration: torch.Tensor) -> nn.Module:
    """A training-ready copy of ``model`` with quantizers in the loop (see the module docstring)."""
    if not isinstance(config, QATConfig):
        raise ConfigError(f"config must be a QATConfig, got {type(config).__name__}")
    check_model(model, "lowbit.qat.prepare_qat", single_input=True)
    if not isinstance(calibration, torch.Tensor) or calibration.numel() == 0:
        raise DataError("prepare_qat needs a non-empty calibration batch (a tensor of inputs)")
    if calibration.is_floating_point() and not bool(torch.isfinite(calibration).all()):
        raise DataError("prepare_qat's calibration batch holds NaN or inf values: clean the data first")
    gm = prepare(model, config.ptq(), (calibration[:2],), fold_bn=config.bn_freeze_steps is None and not config.binary)
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
        convert(gm, tables=False)  # fixed steps; the weights (and biases) train through straight-through rounding
    if config.grad_bits is not None:
        set_grad_bits(gm, config.grad_bits, torch.Generator().manual_seed(0))
    if config.stochastic_weights:
        for _, u in unified_modules(gm):
            if u.weight_quant is not None and u.weight_quant.binary:
                u.weight_quant.generator = torch.Generator(device=u.weight.device).manual_seed(0)
    attach(gm, replace(require_record(gm, "prepare_qat"), qat=config))
    return gm.train()


def set_grad_bits(model: nn.Module, bits: int | None, generator: torch.Generator | None) -> list[str]:
    """Quantize the output gradient of every unified layer with a quantized weight to ``bits`` bits (None: float),
    the stochastic rounding drawing from ``generator`` (one for the model); returns the layers set."""
    names = []
    for name, u in unified_modules(model):
        if u.weight_quant is not None:
            u.grad_bits, u.grad_generator = bits, (generator if bits is not None else None)
            names.append(name)
    return names


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class Distill:
    """``(1 - w) CE(z, y) + w T^2 KL(softmax(t / T) || softmax(z / T))`` with teacher logits ``t``.

    Hinton et al. 2015; the ``T^2`` keeps the soft term's gradient scale independent of ``T``.
    """

    teacher: nn.Module = field(repr=False, compare=False)
    weight: float = 0.5
    temperature: float = 2.0

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_labels(logits, y)
        loss = nn.functional.cross_entropy(logits, y)
        with torch.no_grad():
            t = nn.functional.softmax(self.teacher(x) / self.temperature, dim=1)
        kl = nn.functional.kl_div(nn.functional.log_softmax(logits / self.temperature, 1), t, reduction="batchmean")
        return (1 - self.weight) * loss + self.weight * self.temperature**2 * kl


@dataclass(frozen=True)
class ClipLatent:
    """Step hook: clip the latent weights of binary layers to ``[-1, 1]`` (BNN, Courbariaux, Hubara et al. 2016):
    past 1 a weight's sign can no longer change, and its straight-through gradient is cancelled there."""

    def __call__(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            for _, u in unified_modules(model):
                if u.weight_quant is not None and u.weight_quant.binary:
                    u.weight.clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class SeedGradNoise:
    """Epoch-start hook: fresh generators for the epoch's random draws, seeded from ``(seed, rank, step)``, on the
    model's device: the stochastic rounding of quantized gradients (``grad_bits``) and the stochastic signs of
    binary weights (``stochastic_weights``), one generator each. Seeding per epoch makes a resumed run
    (checkpoints are per epoch) draw what an uninterrupted one draws; the rank keeps the processes' noise
    independent under torchrun."""

    seed: int

    def __call__(self, model: nn.Module, step: int) -> None:
        grads = [u for _, u in unified_modules(model) if u.grad_bits is not None]
        signs = [u.weight_quant for _, u in unified_modules(model)
                 if u.weight_quant is not None and u.weight_quant.generator is not None]
        rank, _ = world()
        device = next(model.parameters()).device
        seed = (self.seed * 1_000_003 + rank) * 1_000_000_007 + step
        def generator(stream: int) -> torch.Generator:  # stream 0: the gradients' draws, as before sign draws existed
            return torch.Generator(device=device).manual_seed((seed + stream * 7_919) % (1 << 63))

        if grads:
            shared = generator(0)
            for u in grads:
                u.grad_generator = shared
        if signs:
            shared = generator(1)
            for wq in signs:
                wq.generator = shared


@dataclass(frozen=True)
class FreezeBN:
    """Step hook: from optimizer step ``steps`` on, unfolded BatchNorms use (and keep) their running statistics."""

    steps: int

    def __call__(self, model: nn.Module, step: int) -> None:
        freeze_bn(model, self.steps, step)


def train(model: nn.Module, data: Split, cfg: TrainConfig = TrainConfig(), out_dir: str | Path | None = None,
          resume: bool = False, teacher: nn.Module | None = None, progress: bool = True) -> list[dict]:
    """Train a :func:`prepare_qat` model in place with :func:`lowbit.train`; returns per-epoch
    ``{"epoch", "loss", "accuracy"}`` (over all processes under torchrun)."""
    record = record_of(model)
    if record is None or record.qat is None:
        why = "it was prepared for post-training quantization" if record is not None else "it has no quantizers to train"
        raise ConfigError(f"lowbit.qat.train trains a model made by lowbit.qat.prepare_qat, and this "
                          f"{type(model).__name__} was not ({why}): call model = prepare_qat(model, QATConfig(...), "
                          "calibration_batch) first, or train a float model with lowbit.train")
    qcfg = record.qat
    if not isinstance(data, Split):
        raise DataError(f"lowbit.qat.train takes its training data as a lowbit.data.Split, got {type(data).__name__}: "
                        "wrap tensors as Split(x, y), or call lowbit.train for other kinds of batches")
    batches = Shuffled(data, cfg.batch_size, cfg.seed, augment=cfg.augment)
    loss = Distill(teacher, cfg.distill, cfg.temperature) if teacher is not None and cfg.distill > 0 else CrossEntropy()
    freeze = (FreezeBN(qcfg.bn_freeze_steps),) if qcfg.bn_freeze_steps is not None else ()
    clip = (ClipLatent(),) if qcfg.binary else ()
    noise = (SeedGradNoise(cfg.seed),) if qcfg.grad_bits is not None or qcfg.stochastic_weights else ()
    optimizer = Adam(cfg.lr) if cfg.optimizer == "adam" else SGDNesterov(cfg.lr, cfg.momentum, cfg.weight_decay)
    options = {"qat": repr(qcfg), "train": asdict(cfg), "train_size": len(data), "teacher": teacher is not None}
    return train_loop(model, batches, LoopConfig(cfg.epochs, cfg.batch_size, cfg.seed),
                      optimizer=optimizer, loss=loss, schedule=Cosine(),
                      hooks=Hooks(epoch_start=noise + freeze, after_step=freeze + clip), out_dir=out_dir, resume=resume,
                      options=options, progress=progress)


def freeze_bn(model: nn.Module, freeze_steps: int | None, step: int) -> None:
    """From optimizer step ``freeze_steps`` on, unfolded BatchNorms use (and keep) their running statistics."""
    if freeze_steps is None or step < freeze_steps:
        return
    for _, u in unified_modules(model):
        if u.bn is not None:
            u.bn.eval()


def _warn_saturated(name: str, u: nn.Module, g: torch.Tensor) -> None:
    """Warn when negating the codes of channels with ``g < 0`` saturates two's complement codes -2^(b-1)."""
    wq = u.weight_quant
    if wq is None or not bool((g < 0).any()) or not isinstance(wq.spec.format, IntFormat):
        return
    fmt = wq.spec.format
    if not fmt.signed:
        return
    channel = (-1, *[1] * (u.weight.ndim - 1))
    q_n, q_p = lsq_range(wq.spec)
    if getattr(wq, "mode", None) == "quantize":
        codes = wq.codes(u.weight)
    elif hasattr(wq, "step"):  # LSQ, not frozen yet: the codes training saw
        codes = lsq_quantize_int(u.weight, wq.step.reshape(channel), q_n, q_p)
    else:
        return
    hit = int(((codes == -q_n) & (g < 0).reshape(channel)).sum())
    if hit:
        warnings.warn(f"{name}: folding its BatchNorm negates {int((g < 0).sum())} channel(s), and {hit} of their "
                      f"{fmt.bits}-bit weight codes (-{q_n}) saturate at {q_p}: "
                      "the converted model differs from the trained one. Keep the BatchNorm scales >= 0 while "
                      "training (a step hook clamping bn.weight), or fold BatchNorm before training",
                      stacklevel=3)


@torch.no_grad()
def fold_trained_bn(model: nn.Module) -> list[str]:
    """Fold every unfolded BatchNorm into its unified layer; returns the layers folded.

    ``w' = g w``, ``b' = g (b - mu) + beta`` with ``g = gamma / sqrt(var + eps)`` per channel, and the
    channel's weight step (or fixed scale) becomes ``|g| s``: the codes stay ``round(w / s)``, their
    sign flipped where ``g < 0`` (a code of -2^(b-1) there saturates at 2^(b-1) - 1, with a warning that
    counts them). A binary weight keeps
    its latent values up to sign, ``w' = sign(g) w``, and its quantizer's ``gain`` takes ``|g|``: its
    frozen scale is then ``alpha |g|`` whether ``alpha`` is ``mean|w|`` or 1.
    """
    done = []
    for name, u in unified_modules(model):
        if u.bn is None:
            continue
        bn, wq = u.bn, u.weight_quant
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shape = (-1, *[1] * (u.weight.ndim - 1))
        if wq is not None and wq.binary:
            u.weight.mul_(torch.where(g < 0, -1.0, 1.0).reshape(shape))
            wq.gain = wq.gain * g.abs()
            wq.freeze(u.weight)  # the gain lives in the frozen scale: freeze now (convert freezes the same again)
        else:
            _warn_saturated(name, u, g)
            u.weight.mul_(g.reshape(shape))
        bias = u.bias if u.bias is not None else torch.zeros_like(g)
        u.bias = nn.Parameter(g * (bias - bn.running_mean) + bn.bias)
        if wq is not None and not wq.binary and not (wq.tnt and wq.mode == "live"):  # live TNT: convert re-solves
            steps = wq.step if hasattr(wq, "step") else wq.scale
            if steps.numel() != g.numel():
                raise ConfigError(f"{name}: folding a trained BatchNorm needs per-channel weight steps")
            steps.mul_(g.abs().reshape(steps.shape))
            if wq.ternary and wq.threshold.numel() == g.numel():  # a frozen support |w| > t scales with w
                wq.threshold.mul_(g.abs().reshape(wq.threshold.shape))
            if wq.tnt and wq.code_pos.numel() == g.numel():  # g < 0 flips the signs: m+ and m- swap
                flip = (g < 0).reshape(wq.code_pos.shape)
                wq.code_pos, wq.code_neg = (torch.where(flip, wq.code_neg, wq.code_pos),
                                            torch.where(flip, wq.code_pos, wq.code_neg))
        u.bn = None
        done.append(name)
    return done


def convert_qat(model: nn.Module) -> nn.Module:
    """Freeze a trained QAT model: LSQ steps become scales; FAQ keeps its fixed scales. Returns it in eval mode.

    BatchNorms kept unfolded for training (``bn_freeze_steps``) are folded first; stochastic binary weights
    (``stochastic_weights``) become their deterministic ``sign(w)``."""
    fold_trained_bn(model)
    for _, u in unified_modules(model):
        if u.weight_quant is not None:
            u.weight_quant.generator = None
    record = record_of(model)
    method = record.qat.method if record is not None and record.qat is not None else "lsq"
    if method == "lsq":
        convert(model)
    else:
        from lowbit.graph.fx_passes import attach_input_qparams

        attach_input_qparams(model)
    return model.eval()


__all__ = ["ClipLatent", "Distill", "FreezeBN", "QATConfig", "SeedGradNoise", "TrainConfig", "convert_qat", "fold_trained_bn",
           "freeze_bn", "init_distributed", "load_checkpoint", "prepare_qat", "set_grad_bits", "train"]
