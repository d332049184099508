"""One training loop for everything lowbit trains: the zoo recipes, QAT, and the method families.

:func:`train` reads top to bottom (after nanoGPT's ``train.py``)::

    history = train(model, batches, LoopConfig(epochs=3), optimizer=SGDNesterov(lr=0.01),
                    loss=CrossEntropy(), schedule=Cosine(), hooks=Hooks(), out_dir="run", resume=False)

What is an argument, and why:

- ``batches``: anything that gives the same batches for the same epoch: a :class:`Shuffled` in-memory
  split (or a bare :class:`~lowbit.data.Split`, shuffled with ``cfg.seed``), an object with
  ``epoch(e)`` and ``len()``, a callable ``epoch -> iterable``, or a re-iterable with ``len()`` (a list,
  a ``DataLoader``). A batch is ``(x, y)``; ``x`` may have any shape after the batch dimension (a
  sequence for BPTT: the model's forward is called once per batch and keeps its state inside).
  Bit-exact resume needs the data order to be a function of (seed, epoch) and nothing else.
- ``optimizer``: any ``torch.optim.Optimizer``, or a factory called with the trainable parameters
  (default :class:`SGDNesterov`). Each parameter group's own learning rate is the schedule's peak.
- ``schedule``: ``schedule(peak_lr, step, total_steps) -> lr``, set on every group before each step
  (default :class:`Cosine`).
- ``loss``: ``loss(output, y, x) -> scalar`` (default :class:`CrossEntropy`; ``x`` is there for losses
  that need the input, e.g. distillation from a teacher).
- ``hooks``: :class:`Hooks`, callables at fixed points: at each epoch's start and after each optimizer
  step (QAT's BatchNorm freezing), extra loss terms (regularizers: bit-slice L1, delta-RNN L1 on
  temporal changes), at each epoch's end (printing a validation accuracy).

Under ``torchrun`` (see :func:`init_distributed`) the model is wrapped in DistributedDataParallel and
every rank takes its share ``x[rank::world]`` of every global batch (so every rank must be given the same
global batches, as a function of seed and epoch is); its loss is weighted by
``world * n_rank / n_global`` so that DDP's gradient mean is the mean over the global batch even when the
shares are uneven: N processes compute what one process computes, up to the all-reduce's summation
order. The history's loss and accuracy are all-reduced (sums of ``loss * count`` and counts).

Checkpoints (``out_dir/checkpoint.pt``, each epoch, rank 0, atomically): one text header line
``lowbit-checkpoint 2 sha256=<hex>`` followed by the ``torch.save`` bytes it hashes. Loading checks the
hash before unpickling (with ``weights_only=True``), then that the run is the same: the model's tensor
names and shapes, ``cfg``, ``options``, the optimizer's type and settings, the loss, the schedule and
the data. A difference is refused, naming the old and new values: with a cosine schedule over the total
number of steps, a run resumed with another ``epochs`` would match neither the old nor the new run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lowbit.data.batches import random_shift_flip
from lowbit.data.datasets import Split
from lowbit.errors import CheckpointError, ConfigError, DataError
from lowbit.utils.files import atomic_write
from lowbit.utils.progress import Progress
from lowbit.utils.fields import checked_init

Batch = tuple[torch.Tensor, torch.Tensor]
Optimizer = torch.optim.Optimizer


def _int_at_least(value: object, low: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")


@checked_init()
@dataclass(frozen=True)
class LoopConfig:
    """How long to train and with which seed; ``batch_size`` is the global batch when ``batches`` is a Split."""

    epochs: int = 3
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        _int_at_least(self.epochs, 1, "LoopConfig.epochs")
        _int_at_least(self.batch_size, 1, "LoopConfig.batch_size")
        _int_at_least(self.seed, 0, "LoopConfig.seed")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Shuffled:
    """Mini-batches of an in-memory :class:`Split`, reshuffled every epoch, optionally with random shifts/flips.

    The order is a function of ``(seed, epoch)``: with ``stream=False`` epoch ``e`` draws its permutation
    and augmentation from a generator seeded ``1000 seed + e`` (QAT's order); with ``stream=True`` one
    generator seeded ``seed`` runs through all epochs (the zoo recipes' order), and epoch ``e`` starts
    by replaying the draws of epochs ``0 .. e-1`` (permutations and augmentation draws, no images), so
    a resumed run sees the batches an uninterrupted one sees.
    """

    split: Split = field(repr=False)
    batch_size: int = 128
    seed: int = 0
    augment: bool = False
    stream: bool = False
    n: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.split, Split):
            raise ConfigError(f"Shuffled needs a lowbit.data.Split, got {type(self.split).__name__}")
        _int_at_least(self.batch_size, 1, "Shuffled.batch_size")
        _int_at_least(self.seed, 0, "Shuffled.seed")
        if len(self.split) == 0:
            raise DataError("the training split is empty")
        object.__setattr__(self, "n", len(self.split))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        if not self.stream:
            return torch.Generator().manual_seed(self.seed * 1000 + epoch)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):  # replay: the same number and kind of draws, on stand-in 1x1 images
            torch.randperm(self.n, generator=gen)
            if self.augment:
                for start in range(0, self.n, self.batch_size):
                    random_shift_flip(torch.zeros(min(self.batch_size, self.n - start), 1, 1, 1), gen)
        return gen

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (0-based)."""
        gen = self._generator(epoch)
        order = torch.randperm(self.n, generator=gen)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x, y = self.split.x[idx], self.split.y[idx]
            if self.augment:  # on the global batch, so that every process count sees the same samples
                x = random_shift_flip(x, gen)
            yield x, y


def _epochs(batches: object) -> tuple[Callable[[int], Iterable], int]:
    """``(epoch -> iterable of batches, batches per epoch)`` for every accepted kind of ``batches``."""
    if hasattr(batches, "epoch") and hasattr(batches, "__len__"):
        return batches.epoch, len(batches)  # type: ignore[attr-defined, arg-type]
    if isinstance(batches, Iterator):
        raise ConfigError("batches is a one-shot iterator, which cannot be read again each epoch: pass a list, "
                          "a DataLoader, a Split, or a callable epoch -> iterable of (x, y)")
    if callable(batches):
        if hasattr(batches, "__len__"):
            return batches, len(batches)  # type: ignore[arg-type]
        return batches, sum(1 for _ in batches(0))  # counted once: the schedule needs the total step count
    if isinstance(batches, Iterable) and hasattr(batches, "__len__"):
        return (lambda epoch: batches), len(batches)  # type: ignore[arg-type, return-value]
    raise ConfigError(f"batches must be a Split, an object with epoch(e) and len(), a callable epoch -> iterable "
                      f"of (x, y), or a re-iterable with len() (list, DataLoader); got {type(batches).__name__}")


# ---------------------------------------------------------------- optimizer, schedule, loss, hooks


@dataclass(frozen=True)
class SGDNesterov:
    """SGD with Nesterov momentum; weight decay on weight matrices and kernels only (not biases, steps, BN)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-5

    def __post_init__(self) -> None:
        if not self.lr > 0 or not 0 < self.momentum < 1 or not self.weight_decay >= 0:
            raise ConfigError(f"SGDNesterov needs lr > 0, 0 < momentum < 1 and weight_decay >= 0; got lr={self.lr}, "
                              f"momentum={self.momentum}, weight_decay={self.weight_decay}")

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.SGD:
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        rest = [p for p in params if p.ndim <= 1]
        return torch.optim.SGD([{"params": decay, "weight_decay": self.weight_decay},
                                {"params": rest, "weight_decay": 0.0}],
                               lr=self.lr, momentum=self.momentum, nesterov=True)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015), no weight decay: the optimizer binary networks train with (Courbariaux, Hubara
    et al. 2016), whose latent weights take steps of about ``lr`` whatever their gradient's scale."""

    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not self.lr > 0 or not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ConfigError(f"Adam needs lr > 0 and two betas in [0, 1); got lr={self.lr}, betas={self.betas}")

    def __call__(self, params: Iterable[nn.Parameter]) -> torch.optim.Adam:
        return torch.optim.Adam([p for p in params if p.requires_grad], lr=self.lr, betas=self.betas)


@dataclass(frozen=True)
class Cosine:
    """Linear warm-up over ``warmup_steps``, then cosine decay from the peak to zero at ``total``.

    ``lr(s) = peak (s + 1) / W`` for ``s < W``, else ``peak (1 + cos(pi (s - W) / max(1, total - W))) / 2``
    (Loshchilov & Hutter, SGDR, 2017, without restarts).
    """

    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _int_at_least(self.warmup_steps, 0, "Cosine.warmup_steps")

    def __call__(self, peak: float, step: int, total: int) -> float:
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class CrossEntropy:
    """Mean cross entropy of the logits against integer labels, with optional label smoothing."""

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"CrossEntropy.label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def __call__(self, output: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_labels(output, y)
        return nn.functional.cross_entropy(output, y, label_smoothing=self.label_smoothing)


def check_labels(output: object, y: torch.Tensor) -> None:
    """Targets a cross entropy can take for class scores ``output`` (N, C, ...): int64 (or uint8) labels in
    ``0 .. C-1`` (torch's ignored label -100 too), or float class probabilities of the output's shape; a
    DataError naming the labels and the fix otherwise. One small reduction per batch (min and max)."""
    if not isinstance(output, torch.Tensor) or output.ndim == 0:
        raise DataError(f"the cross-entropy loss needs class scores (a tensor of shape (N, C)), the model returned "
                        f"{type(output).__name__ if not isinstance(output, torch.Tensor) else 'a scalar'}: pass a "
                        "loss= that takes this output")
    classes = output.shape[1] if output.ndim > 1 else output.shape[0]
    if y.is_floating_point():
        if y.shape != output.shape:
            raise DataError(f"the labels are {str(y.dtype).removeprefix('torch.')} of shape {tuple(y.shape)}: the "
                            "cross-entropy loss takes integer class labels (int64) or class probabilities of the "
                            f"output's shape {tuple(output.shape)}; convert them with y.long()")
        return
    if y.dtype not in (torch.int64, torch.uint8):
        raise DataError(f"the labels are {str(y.dtype).removeprefix('torch.')}: the cross-entropy loss takes int64 "
                        "class labels; convert them with y.long()")
    if y.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(y)).tolist()
    if lo >= 0 and hi < classes:
        return
    bad = y[((y < 0) & (y != -100)) | (y >= classes)]
    if bad.numel():
        raise DataError(f"a label is {int(bad[0])}, but the model gives {classes} class scores: labels must be in "
                        f"0..{classes - 1} ({bad.numel()} of this batch's {y.numel()} are not); check the data "
                        "set's labels, or the model's number of outputs")


StepHook = Callable[[nn.Module, int], None]
LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]
EpochEndHook = Callable[[nn.Module, dict], None]


@dataclass(frozen=True)
class Hooks:
    """Callables the loop calls at fixed points, each tuple in order.

    - ``epoch_start(model, step)``: after ``model.train()`` at an epoch's start, ``step`` optimizer steps done;
    - ``after_step(model, step)``: after each optimizer step, ``step`` steps done (counting from the run's start);
    - ``loss(model, x, y, output) -> scalar``: a term added to the loss (a regularizer);
    - ``epoch_end(model, row)``: after the epoch's checkpoint, with its history row.

    Hooks are not compared on resume: a hook that changes the training puts its settings in ``options``.
    """

    epoch_start: Sequence[StepHook] = ()
    after_step: Sequence[StepHook] = ()
    loss: Sequence[LossHook] = ()
    epoch_end: Sequence[EpochEndHook] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            hooks = getattr(self, f.name)
            if callable(hooks) or not all(callable(h) for h in hooks):
                raise ConfigError(f"Hooks.{f.name} must be a sequence of callables, got {hooks!r}")
            object.__setattr__(self, f.name, tuple(hooks))


# ---------------------------------------------------------------- distributed helpers


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); gloo, as the loop trains on the CPU."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    return world()


def _all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- checkpoints

_MAGIC = b"lowbit-checkpoint 2 sha256="
_KEYS = ("epoch", "model", "optimizer", "history", "rng", "run")
_FORMAT = 2  # the content's version (the header's is the container's)


def _make_out_dir(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"out_dir {folder} is a file, not a folder: pass a folder for the checkpoint")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the output folder {folder} ({exc.strerror or exc}): pass a writable "
                          "folder") from None


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files a killed run left next to ``path`` (``atomic_write``'s ``.NAME.*.tmp``)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` atomically: a header line with the SHA-256 of the ``torch.save`` bytes that follow."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    path = Path(path)
    _remove_stale_temps(path)
    return atomic_write(path, lambda f: (f.write(header), f.write(payload)))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint: verify its SHA-256, then unpickle it with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}: run without --resume first") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from None
    if raw.startswith(b"PK"):
        raise CheckpointError(f"{path} was written by an older lowbit (no checksum): start again without --resume")
    end = len(_MAGIC) + 64
    if not raw.startswith(_MAGIC) or raw[end:end + 1] != b"\n":
        raise CheckpointError(f"{path} is not a readable lowbit checkpoint (no lowbit-checkpoint header)")
    payload = raw[end + 1:]
    if hashlib.sha256(payload).hexdigest().encode() != raw[len(_MAGIC):end]:
        raise CheckpointError(f"{path} is corrupt: its SHA-256 differs from the one written with it (damaged or "
                              "partly copied file); delete it and train again without --resume")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for malformed pickles
        raise CheckpointError(f"{path} is not a readable lowbit checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(state, dict) or any(k not in state for k in _KEYS):
        raise CheckpointError(f"{path} is not a lowbit training checkpoint (it lacks {', '.join(_KEYS)})")
    if state.get("format") != _FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')!r:.40}; this lowbit reads format "
                              f"{_FORMAT}: train again without --resume")
    extra = sorted(map(str, set(state) - {"format", *_KEYS}))
    if extra:
        raise CheckpointError(f"{path} holds entries lowbit never writes ({', '.join(extra[:5])}): the checkpoint "
                              "was altered; train again without --resume")
    return state


def _describe(obj: object) -> str:
    """A name for a loss, schedule or data source that is the same in every process: dataclasses by value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return repr(obj)
    if hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"  # type: ignore[attr-defined]
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _plain(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _run_record(model: nn.Module, cfg: LoopConfig, options: Mapping[str, object], opt: Optimizer, loss: object,
                schedule: object, batches: object, steps: int) -> dict:
    """Everything that must be equal for a resumed run to continue the same computation, by section."""
    groups = {f"group{i}.{k}": _plain(v) for i, g in enumerate(opt.param_groups) for k, v in g.items()
              if k not in ("params", "lr")}
    return {
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "options": dict(options),
        "config": asdict(cfg),
        "optimizer": {"type": _describe(type(opt)), **groups},
        "training": {"loss": _describe(loss), "schedule": _describe(schedule), "data": _describe(batches),
                     "steps_per_epoch": steps},
    }


def _flat(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_run(path: Path, saved: object, now: dict) -> None:
    """Refuse a checkpoint of another model or of other training options, naming the values that differ."""
    if not isinstance(saved, dict) or any(not isinstance(saved.get(k), dict) for k in now):
        raise CheckpointError(f"{path} is not a lowbit training checkpoint (no run record)")
    if saved["shapes"] != now["shapes"]:
        old, new = saved["shapes"], now["shapes"]
        diff = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise CheckpointError(f"{path} was written for another model ({diff}: {old.get(diff, 'absent')} there, "
                              f"{new.get(diff, 'absent')} here); use the same model and options, or a new "
                              "output folder")
    for section in ("options", "config", "optimizer", "training"):
        old, new = _flat(saved[section]), _flat(now[section])
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k, "absent") != new.get(k, "absent")]
        if keys:
            was = ", ".join(f"{k}={old.get(k, 'absent')!r}" for k in keys)
            now_ = ", ".join(f"{k}={new.get(k, 'absent')!r}" for k in keys)
            raise ConfigError(f"cannot resume from {path}: it was written with {was}, this run has {now_}; a resumed "
                              "run must use the same training options (the learning-rate schedule spans all "
                              "epochs), so rerun with the checkpoint's values or train afresh in a new output folder")


def _load_model(path: Path, model: nn.Module, saved: object) -> None:
    own = model.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(own):
        names = sorted(set(own) ^ set(saved)) if isinstance(saved, dict) else ["(not a state dict)"]
        raise CheckpointError(f"{path} does not fit this model: tensors {names[:5]} differ; it was altered")
    for k, v in own.items():
        t = saved[k]
        if not isinstance(t, torch.Tensor) or t.shape != v.shape or t.dtype != v.dtype:
            got = f"shape {tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"{path}: tensor {k!r} is {got}, this model's is shape {tuple(v.shape)} {v.dtype}; "
                                  "the checkpoint was altered or is for another model")
    model.load_state_dict(saved)


def _load_optimizer(path: Path, opt: Optimizer, saved: object) -> None:
    try:
        opt.load_state_dict(saved)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the optimizer state does not fit this optimizer ({exc})") from None
    for group in opt.param_groups:  # element-wise state must broadcast to its parameter
        for p in group["params"]:
            for key, t in opt.state.get(p, {}).items():
                if isinstance(t, torch.Tensor) and t.ndim > 0 and \
                        (t.ndim > p.ndim or any(a not in (1, b) for a, b in zip(t.shape[::-1], p.shape[::-1]))):
                    raise CheckpointError(f"{path}: optimizer state {key!r} has shape {tuple(t.shape)} for a "
                                          f"parameter of shape {tuple(p.shape)}; the checkpoint was altered")


def _resume(path: Path | None, model: nn.Module, opt: Optimizer, run: dict) -> tuple[int, list[dict]]:
    """Restore model, optimizer and RNG from ``path``; returns (epochs done, history so far)."""
    if path is None:
        raise ConfigError("resume needs an output folder (out_dir) that holds a checkpoint")
    state = load_checkpoint(path)
    _check_same_run(path, state["run"], run)
    epoch, history, rng = state["epoch"], state["history"], state["rng"]
    if not isinstance(epoch, int) or not isinstance(history, list) or len(history) != epoch \
            or not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise CheckpointError(f"{path}: its epoch, history or RNG state is malformed; it was altered")
    _load_model(path, model, state["model"])
    _load_optimizer(path, opt, state["optimizer"])
    try:
        torch.set_rng_state(rng)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its RNG state is malformed ({exc})") from None
    return epoch, list(history)


# ---------------------------------------------------------------- the loop


def _make_optimizer(model: nn.Module, optimizer: Optimizer | Callable | None) -> Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    opt = (optimizer or SGDNesterov())(params) if not isinstance(optimizer, Optimizer) else optimizer
    if not isinstance(opt, Optimizer):
        raise ConfigError("optimizer must be a torch.optim.Optimizer or a factory returning one, "
                          f"got {type(opt).__name__}")
    own = {id(p) for p in model.parameters()}
    if any(id(p) not in own for g in opt.param_groups for p in g["params"]):
        raise ConfigError("the optimizer holds parameters that are not the model's: build it from model.parameters()")
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])  # the schedule's peak, as torch's schedulers store it
    return opt


def _share(batch: object, rank: int, world_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's part of a global batch and the weight that makes DDP's gradient mean the global one."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or \
            not all(isinstance(t, torch.Tensor) for t in batch):
        raise DataError(f"each batch must be a pair (x, y) of tensors, got {type(batch).__name__}")
    x, y = batch
    n = len(y)
    if len(x) != n or n < world_size:
        raise DataError(f"a batch has {len(x)} inputs and {n} targets; both must be equal and >= {world_size} "
                        "(one per process)")
    x, y = x[rank::world_size].to(device), y[rank::world_size].to(device)
    return x, y, world_size * len(y) / n


def _scalar(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(f"{what} must return a scalar tensor, got {shape}")
    return value


def _stop_if_not_finite(loss: torch.Tensor, epoch: int, step: int, peak: float, world_size: int) -> None:
    """The NaN guard: stop at the first non-finite loss on any rank (all ranks stop together)."""
    finite = torch.tensor([float(torch.isfinite(loss.detach()))])
    if world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() == 0:
        raise DataError(f"loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}: lower the learning "
                        f"rate (--lr, peak now {peak}) or check the data")


def _correct(output: object, y: torch.Tensor) -> tuple[int, int]:
    """(correct, labels) when ``output`` holds class scores for integer targets ``y``; (0, 0) otherwise."""
    if isinstance(output, torch.Tensor) and not y.is_floating_point() and output.ndim == y.ndim + 1 \
            and output.shape[:-1] == y.shape:
        return int((output.detach().argmax(-1) == y).sum()), y.numel()
    return 0, 0


def train(model: nn.Module, batches: object, cfg: LoopConfig = LoopConfig(), *,
          optimizer: Optimizer | Callable[[list[nn.Parameter]], Optimizer] | None = None,
          loss: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
          schedule: Callable[[float, int, int], float] | None = None, hooks: Hooks = Hooks(),
          out_dir: str | Path | None = None, resume: bool = False, options: Mapping[str, object] | None = None,
          progress: bool = True) -> list[dict]:
    """Train ``model`` in place; returns one ``{"epoch", "loss", "accuracy"}`` row per epoch (see the module doc).

    ``options``: plain values outside ``cfg`` that change the result (QAT's config, a distillation weight);
    stored in the checkpoint and compared on resume. The global RNG is seeded with ``cfg.seed`` for the run
    and restored afterwards. ``accuracy`` is None when the output is not class scores for integer targets.
    """
    if not isinstance(cfg, LoopConfig) or not isinstance(hooks, Hooks):
        raise ConfigError("cfg must be a LoopConfig and hooks a Hooks")
    rank, world_size = world()
    if isinstance(batches, Split):
        batches = Shuffled(batches, cfg.batch_size, cfg.seed)
    epoch_batches, steps = _epochs(batches)
    if steps == 0:
        raise DataError("batches yields no batch")
    opt = _make_optimizer(model, optimizer)
    loss_fn = loss if loss is not None else CrossEntropy()
    schedule = schedule if schedule is not None else Cosine()
    run = _run_record(model, cfg, options or {}, opt, loss_fn, schedule, batches, steps)
    ckpt = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    if ckpt is not None:  # a bad folder fails now, not after the first epoch
        _make_out_dir(ckpt.parent)
        if rank == 0:
            _remove_stale_temps(ckpt)  # a killed write's temp file, even if this run stops before its first save
    device = next(model.parameters()).device
    total = cfg.epochs * steps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        start, history = _resume(ckpt, model, opt, run) if resume else (0, [])
        net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
        for epoch in range(start, cfg.epochs):
            net.train()
            for hook in hooks.epoch_start:
                hook(model, epoch * steps)
            loss_sum, seen, correct, labels = 0.0, 0, 0, 0
            bar = Progress(epoch_batches(epoch), steps, f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=progress and rank == 0)
            i = -1
            for i, batch in enumerate(bar):
                if i == steps:
                    raise DataError(f"batches gave more than the {steps} batches per epoch it announced")
                x, y, weight = _share(batch, rank, world_size, device)
                step = epoch * steps + i
                for group in opt.param_groups:
                    group["lr"] = schedule(group["initial_lr"], step, total)
                output = net(x)
                value = _scalar(loss_fn(output, y, x), "the loss")
                for hook in hooks.loss:
                    value = value + _scalar(hook(model, x, y, output), "a loss hook")
                _stop_if_not_finite(value, epoch, i, opt.param_groups[0]["initial_lr"], world_size)
                opt.zero_grad(set_to_none=True)
                (value * weight if world_size > 1 else value).backward()
                opt.step()
                for hook in hooks.after_step:
                    hook(model, step + 1)
                loss_sum += float(value.detach()) * len(y)
                seen += len(y)
                c, n = _correct(output, y)
                correct, labels = correct + c, labels + n
                bar.set(loss=float(value.detach()), **({"acc": correct / labels} if labels else {}))
            if i + 1 != steps:
                raise DataError(f"epoch {epoch + 1} gave {i + 1} batches, not the {steps} announced: pass data that "
                                "can be read again every epoch")
            if world_size > 1:  # every rank's share, not rank 0's alone
                loss_sum, seen, correct, labels = _all_sum([loss_sum, seen, correct, labels])
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen,
                            "accuracy": correct / labels if labels else None})
            if ckpt is not None and rank == 0:
                save_checkpoint(ckpt, {"format": _FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                                       "optimizer": opt.state_dict(), "history": history,
                                       "rng": torch.get_rng_state(), "run": run})
            if world_size > 1:
                dist.barrier()
            for hook in hooks.epoch_end:
                hook(model, history[-1])
    return history


__all__ = ["Adam", "Cosine", "CrossEntropy", "Hooks", "LoopConfig", "SGDNesterov", "Shuffled", "init_distributed",
           "load_checkpoint", "save_checkpoint", "train", "world"]
