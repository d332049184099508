"""ImageNet-style inputs cut from the RGB photos that ship inside scikit-image.

There is no ImageNet data here, so calibration and agreement checks of an
ImageNet model (e.g. :func:`lowbit.zoo.efficientnet.efficientnet_lite0`) run on
random crops of the sample photos of ``skimage.data``. Only photos whose file is
bundled with scikit-image are used: loaders that would fetch a file with pooch
(``brain``, ``eagle``, ``skin``, ...) are never called, so nothing touches the
network. Grey-level images and the RGBA ``logo`` are left out; ``cat`` is the
same file as ``chelsea`` and is counted once.

The two splits are different crops: each split draws from its own random
stream, seeded from ``crc32("lowbit.photos:<split>:<seed>")``. By default both
draw from all ten photos (calibration and evaluation data from one
distribution, as PTQ assumes). With ``disjoint_photos=True`` they also use
different photos: ``"calib"`` crops come only from astronaut, hubble deep
field, immunohistochemistry and the two motorcycle stereo views (one scene,
so kept together); ``"eval"`` crops only from chelsea, coffee, rocket, retina
and colorwheel. That is a deliberate distribution shift (the colour wheel's
saturated colours, for one, exceed every calibrated range), a harder test.

Crops are deterministic for a given ``(split, seed, size)``, and prefix-stable:
``photo_crops(100, s)`` equals ``photo_crops(600, s)[:100]``.

>>> from lowbit.data.photos import photo_crops
>>> x = photo_crops(64, "calib")       # (64, 3, 224, 224) float32 in [-1, 1]
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError, DataError, DatasetNotFoundError

SPLITS = ("calib", "eval")
INSTALL_HINT = "pip install 'lowbit[bench]'"


@dataclass(frozen=True)
class Photo:
    """One bundled scikit-image photo: its name, the file shipped in ``skimage/data``, its split."""

    name: str
    filename: str
    split: str


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "astronaut.png", "calib"),
    Photo("hubble_deep_field", "hubble_deep_field.jpg", "calib"),
    Photo("immunohistochemistry", "ihc.png", "calib"),
    Photo("motorcycle_left", "motorcycle_left.png", "calib"),
    Photo("motorcycle_right", "motorcycle_right.png", "calib"),
    Photo("chelsea", "chelsea.png", "eval"),
    Photo("coffee", "coffee.png", "eval"),
    Photo("rocket", "rocket.jpg", "eval"),
    Photo("retina", "retina.jpg", "eval"),
    Photo("colorwheel", "color.png", "eval"),
)


@dataclass(frozen=True)
class CropConfig:
    """How crops are drawn: square side as a fraction of the photo's shorter side, flip chance."""

    min_scale: float = 0.1
    max_scale: float = 1.0
    flip_prob: float = 0.5


DEFAULT_CROPS = CropConfig()


def _skimage_data():
    """``skimage.data``, or a :class:`DatasetNotFoundError` naming the install command."""
    try:
        import skimage.data
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"the photo crops need scikit-image (its bundled sample photos): {INSTALL_HINT}"
        ) from exc
    return skimage.data


def _load_rgb(data, photo: Photo):
    """The photo as an (H, W, 3) uint8 array, or ``None`` if it is not bundled or not RGB."""
    if not (Path(data.__file__).parent / photo.filename).is_file():
        return None  # not shipped with this scikit-image: would need a download
    if photo.name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        image = left if photo.name.endswith("left") else right
    else:
        image = getattr(data, photo.name)()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype.name != "uint8":
        return None
    return image


@functools.lru_cache(maxsize=2 * len(SPLITS))
def split_photos(split: str, disjoint_photos: bool = False) -> tuple[tuple[str, torch.Tensor], ...]:
    """The ``(name, (3, H, W) uint8 tensor)`` pairs a split draws from (cached; do not modify)."""
    _check_split(split)
    data = _skimage_data()
    out = []
    for photo in PHOTOS:
        if disjoint_photos and photo.split != split:
            continue
        image = _load_rgb(data, photo)
        if image is not None:
            out.append((photo.name, torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()))
    if not out:
        raise DatasetNotFoundError(
            f"no bundled RGB photo of split {split!r} found in scikit-image "
            f"({[p.name for p in PHOTOS if p.split == split]}); reinstall it: {INSTALL_HINT}"
        )
    return tuple(out)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'calib' or 'eval'")


def _generator(split: str, seed: int) -> torch.Generator:
    """A generator private to ``(split, seed)``: the splits never share a random stream."""
    key = zlib.crc32(f"lowbit.photos:{split}:{seed}".encode())
    return torch.Generator().manual_seed(key)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread, then restore the caller's setting.

    Each crop is a few small kernels; with two OpenMP threads their start/stop
    cost dominates (about 10x slower on a shared 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _crop_resize(image: torch.Tensor, u: torch.Tensor, size: int, cfg: CropConfig) -> torch.Tensor:
    """One square crop of ``image`` chosen by four uniforms ``u``, resized to ``size``, in 0..255."""
    _, h, w = image.shape
    frac = cfg.min_scale + float(u[0]) * (cfg.max_scale - cfg.min_scale)
    side = max(1, min(h, w, round(frac * min(h, w))))
    top = min(int(float(u[1]) * (h - side + 1)), h - side)
    left = min(int(float(u[2]) * (w - side + 1)), w - side)
    crop = image[:, top : top + side, left : left + side].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if float(u[3]) < cfg.flip_prob:
        out = out.flip(-1)
    return out[0]


def photo_crops(n: int, split: str, size: int = 224, seed: int = 0, disjoint_photos: bool = False,
                crops: CropConfig = DEFAULT_CROPS) -> torch.Tensor:
    """``n`` random square crops of the split's photos, (n, 3, size, size) float32.

    Crop ``i`` comes from photo ``i mod k`` of the split (so every photo is used
    equally); its side is uniform in 10%..100% of that photo's shorter side
    (``crops.min_scale``..``crops.max_scale``), its
    position uniform, and it is flipped left-right with probability 1/2. It is
    resized with bilinear antialiased interpolation and normalised as
    EfficientNet-Lite expects: ``(x / 255 - 0.5) / 0.5``, i.e. values in [-1, 1].
    The work runs on one torch thread (the setting is restored afterwards); 600
    crops take about 1-2 s.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be a non-negative int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size must be a positive int, got {size!r}")
    _check_split(split)
    if not 0 < crops.min_scale <= crops.max_scale <= 1:
        raise ConfigError(f"crop scales must satisfy 0 < min_scale <= max_scale <= 1, got {crops}")
    photos = split_photos(split, disjoint_photos)
    uniforms = torch.rand((n, 4), generator=_generator(split, int(seed)))
    out = torch.empty((n, 3, size, size), dtype=torch.float32)
    with _one_thread():
        for i in range(n):
            out[i] = _crop_resize(photos[i % len(photos)][1], uniforms[i], size, crops)
    return out.clamp_(0.0, 255.0).div_(127.5).sub_(1.0)


__all__ = ["CropConfig", "DEFAULT_CROPS", "PHOTOS", "Photo", "SPLITS", "photo_crops", "split_photos"]
