"""A folder of images as samples (``--calib-data path/to/images``).

* images directly in the folder: inputs ``x`` without labels;
* one subfolder per class (``folder/<class>/*.png``, the ImageFolder layout): labels ``y`` are the classes'
  indices in sorted folder-name order.

Every image is read by Pillow (imported only here; ``pip install pillow``), kept grey (one channel) when
every image is 8-bit grey or black-and-white, and converted to RGB otherwise, and becomes float32 ``(C, H, W)`` in ``[0, 1]``
(pixel / 255): the same scaling a model trained on ``ToTensor()`` inputs expects. All images must have one
size (resize them first); lowbit does not resize or normalise behind the user's back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: Path) -> bool:
    """A folder holding images, directly or in class subfolders."""
    if not path.is_dir():
        return False
    return bool(_images_in(path)) or any(d.is_dir() and _images_in(d) for d in path.iterdir())


def read_image_folder(path: Path, option: str) -> dict[str, np.ndarray]:
    """``{"x": (N, C, H, W) float32 in [0, 1]}`` plus ``"y"`` (int64 class indices) for class subfolders."""
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError(f"{option} {path} is a folder of images: reading them needs Pillow (pip install "
                          "pillow), or save the samples as .npy") from None
    classes = sorted(d for d in path.iterdir() if d.is_dir() and _images_in(d))
    direct = _images_in(path)
    if classes and direct:
        raise DataError(f"{option} {path}: holds images and class subfolders ({classes[0].name}, ...); put every "
                        "image in its class folder, or use a folder of images alone (no labels)")
    files = [(p, i) for i, d in enumerate(classes) for p in _images_in(d)] if classes else [(p, -1) for p in direct]
    opened = []
    for p, label in files:
        try:
            with Image.open(p) as im:
                im.load()
                opened.append((p, label, im.copy()))
        except (OSError, ValueError) as exc:
            raise DataError(f"{option} {p}: cannot be read as an image ({type(exc).__name__}: {exc})") from None
    mode = "L" if all(im.mode in ("L", "1") for _, _, im in opened) else "RGB"
    arrays, sizes = [], set()
    for _, _, im in opened:
        a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        sizes.add(arrays[-1].shape[1:])
    if len(sizes) > 1:
        raise DataError(f"{option} {path}: the images have different sizes ({', '.join(map(str, sorted(sizes)[:4]))}); "
                        "resize them to one size first (lowbit does not resize behind your back)")
    out = {"x": np.stack(arrays)}
    if classes:
        out["y"] = np.array([label for _, label, _ in opened], dtype=np.int64)
    return out


__all__ = ["IMAGE_SUFFIXES", "is_image_folder", "read_image_folder"]
