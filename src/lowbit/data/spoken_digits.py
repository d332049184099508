"""Spoken digits synthesized with espeak-ng and sox, as 40-band log-mel sequences.

A stand-in for TIDIGITS (the data set of Neil et al., ICML 2017, "Delta Networks"), made on
this machine with no download (``apt-get install -y espeak-ng sox``): the ten words
"zero".."nine" spoken by 6 English accents x 10 voice variants x 3 speeds x 2 pitches =
3,600 clips, 16 kHz mono int16. Synthesis is deterministic (espeak-ng is; sox runs with
``-D``, no dither); it runs once and the clips are cached in ``$LOWBIT_CACHE`` (default
``~/.cache/lowbit``) under a name hashed from the synthesis grid (temporary name, then rename).

Split by voice variant: :data:`TEST_VARIANTS` are never heard in training (2,520 / 1,080 clips).

Each clip is trimmed of leading and trailing silence, scaled to a fixed RMS, then made harder
(:class:`SpokenDigitsSpec`, drawn per clip from a seeded generator, so a split is always the
same tensor): a speed change (resampling, tempo and pitch together, as Kaldi's speed
perturbation), a random position in a fixed window, and white noise at a random SNR. The noise
keeps every frame changing a little, so that skipping small changes has a price in accuracy.

Features (torch only): power spectrum of 25 ms Hann frames every 10 ms (``n_fft = 512``),
40 triangular filters on the HTK mel scale ``m = 2595 log10(1 + f / 700)`` from 20 Hz to
8 kHz, ``log(mel + 1e-6)``, then each band normalised by the training split's mean and
standard deviation. ``x``: ``(N, T, 40)`` float32 (batch-first sequences), ``y``: digit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.data.datasets import Split
from lowbit.errors import ConfigError, DataError, DatasetNotFoundError
from lowbit.utils.files import atomic_write

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m3", "f1", "f3", "klatt2", "Annie", "Storm")
TEST_VARIANTS = ("m7", "f5", "Andy")
SPEEDS = (130, 175, 230)  # words per minute
PITCHES = (30, 60)
SAMPLE_RATE = 16000
N_MELS, WIN, HOP, N_FFT = 40, 400, 160, 512
_RMS = 0.1  # level of every clip before noise


@dataclass(frozen=True)
class SpokenDigitsSpec:
    """How hard the task is. ``snr_db``: range of the white-noise SNR (``None``: no noise);
    ``speed``: range of the speed factor (``None``: none); ``window_s``: fixed clip length
    (a clip longer than the window after the speed change is cut at the end); ``seed``."""

    snr_db: tuple[float, float] | None = (0.0, 20.0)
    speed: tuple[float, float] | None = (0.8, 1.25)
    window_s: float = 1.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name, rng, lo in (("snr_db", self.snr_db, -math.inf), ("speed", self.speed, 0.0)):
            if rng is None:
                continue
            ok = (isinstance(rng, tuple) and len(rng) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng))
            if not ok or not lo < rng[0] <= rng[1]:
                raise ConfigError(f"{name}={rng!r}: pass a (low, high) pair of finite numbers with low <= high"
                                  + (" and low > 0" if name == "speed" else "") + ", or None for none")
        if (not isinstance(self.window_s, (int, float)) or isinstance(self.window_s, bool)
                or not 0.3 <= self.window_s <= 10):
            raise ConfigError(f"window_s={self.window_s!r}: pass a clip length in seconds from 0.3 to 10")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r}: pass an integer")


# ---- synthesis and cache ---------------------------------------------------------------------

def _cache_dir() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))


def _grid(accents, variants, speeds, pitches, words) -> list[tuple[str, str, int, int, int]]:
    return [(a, v, s, p, d) for a in accents for v in variants for s in speeds for p in pitches
            for d in range(len(words))]


def _synthesize_one(accent: str, variant: str, speed: int, pitch: int, word: str) -> np.ndarray:
    """One clip: espeak-ng's WAV, resampled by sox to 16 kHz mono int16 without dither."""
    speak = ["espeak-ng", "-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch), "--stdout", word]
    to_raw = ["sox", "-D", "-V1", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
              "-e", "signed-integer", "-L", "-", "gain", "-6"]
    try:
        wav = subprocess.run(speak, capture_output=True, check=True, timeout=60).stdout
        raw = subprocess.run(to_raw, input=wav, capture_output=True, check=True, timeout=60).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        raise DataError(f"synthesizing '{word}' with voice {accent}+{variant} failed ({exc}; "
                        f"{err.decode(errors='replace').strip()[:200]}); check 'espeak-ng --voices=en' and "
                        "reinstall with 'apt-get install --reinstall espeak-ng sox'") from exc
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def synthesize(accents=ACCENTS, variants=TRAIN_VARIANTS + TEST_VARIANTS, speeds=SPEEDS, pitches=PITCHES,
               words=WORDS, cache_dir: str | Path | None = None, workers: int = 4) -> dict[str, np.ndarray]:
    """The clips of the grid ``accents x variants x speeds x pitches x words``, from the cache or
    synthesized once and cached: ``{"audio": int16 (total,), "offsets": (N+1,), "grid": ...}``,
    ``grid`` columns (accent index, variant index, speed, pitch, digit)."""
    grid = _grid(accents, variants, speeds, pitches, words)
    key_src = json.dumps([list(accents), list(variants), list(speeds), list(pitches), list(words), SAMPLE_RATE, 1])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = Path(cache_dir) if cache_dir is not None else _cache_dir()
    path = path / f"spoken_digits-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                data = {k: f[k] for k in ("audio", "offsets", "grid")}
            if data["grid"].shape == (len(grid), 5) and data["offsets"].shape == (len(grid) + 1,):
                return data
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a corrupt cache file is rebuilt below
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise DatasetNotFoundError(f"spoken digits are synthesized on first use with espeak-ng and sox; "
                                   f"{' and '.join(missing)} not found: install with "
                                   "'sudo apt-get install -y espeak-ng sox'")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        clips = list(pool.map(lambda g: _synthesize_one(g[0], g[1], g[2], g[3], words[g[4]]), grid))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
    table = np.array([[accents.index(a), variants.index(v), s, p, d] for a, v, s, p, d in grid], dtype=np.int64)
    data = {"audio": np.concatenate(clips), "offsets": offsets, "grid": table}

    def write(f) -> None:
        buf = io.BytesIO()
        np.savez(buf, **data)
        f.write(buf.getvalue())

    atomic_write(path, write)
    return data


# ---- features --------------------------------------------------------------------------------

def mel_filterbank(n_freqs: int = N_FFT // 2 + 1, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> torch.Tensor:
    """``(n_mels, n_freqs)`` triangles on the HTK mel scale, peak 1 at each band's centre."""
    f_max = sample_rate / 2 if f_max is None else f_max
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    edges_mel = torch.linspace(mel(f_min), mel(f_max), n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)  # Hz
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """``(N, S)`` float waveforms at 16 kHz -> ``(N, 1 + S // 160, 40)`` log-mel frames."""
    window = torch.hann_window(WIN, dtype=audio.dtype)
    spec = torch.stft(audio, N_FFT, HOP, WIN, window=window, center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (N, F, T)
    mel = mel_filterbank().to(audio.dtype) @ power  # (N, n_mels, T)
    return torch.log(mel + 1e-6).transpose(1, 2)


def _trim(clip: np.ndarray, rel: float = 0.02) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``rel`` of the peak."""
    a = np.abs(clip.astype(np.float32))
    loud = np.flatnonzero(a > rel * max(float(a.max()), 1.0))
    return clip if loud.size == 0 else clip[loud[0]: loud[-1] + 1]


def _waveforms(data: dict[str, np.ndarray], rows: np.ndarray, spec: SpokenDigitsSpec, split_seed: int
               ) -> torch.Tensor:
    """``(len(rows), window)`` float32 waveforms, each trimmed, levelled, sped, placed and noised."""
    window = int(round(spec.window_s * SAMPLE_RATE))
    gen = torch.Generator().manual_seed(spec.seed * 1000 + split_seed)
    n = len(rows)
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)  # speed, position, snr draws
    noise = torch.randn(n, window, generator=gen)
    out = torch.zeros(n, window)
    for i, r in enumerate(rows):
        clip = torch.from_numpy(_trim(data["audio"][data["offsets"][r]: data["offsets"][r + 1]]).astype(np.float32))
        clip = clip * (_RMS / clip.square().mean().sqrt().clamp_min(1e-3))
        if spec.speed is not None:
            factor = spec.speed[0] + (spec.speed[1] - spec.speed[0]) * float(u[i, 0])
            length = max(2, int(round(len(clip) / factor)))
            clip = torch.nn.functional.interpolate(clip[None, None], size=length, mode="linear",
                                                   align_corners=True)[0, 0]
        clip = clip[:window]
        start = int(float(u[i, 1]) * (window - len(clip)))
        out[i, start: start + len(clip)] = clip
        if spec.snr_db is not None:
            snr = spec.snr_db[0] + (spec.snr_db[1] - spec.snr_db[0]) * float(u[i, 2])
            out[i] += noise[i] * (_RMS * 10.0 ** (-snr / 20.0))
    return out


def spoken_digits(split: str, spec: SpokenDigitsSpec | None = None, cache_dir: str | Path | None = None) -> Split:
    """The ``"train"`` or ``"test"`` split as a :class:`~lowbit.data.Split` with ``x`` ``(N, T, 40)``
    normalised log-mel frames (batch first) and ``y`` the digit (0..9)."""
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r}: pass 'train' or 'test'")
    spec = SpokenDigitsSpec() if spec is None else spec
    if not isinstance(spec, SpokenDigitsSpec):
        raise ConfigError(f"spec must be a SpokenDigitsSpec, got {type(spec).__name__}")
    data = synthesize(cache_dir=cache_dir)
    n_train = len(TRAIN_VARIANTS)
    is_train = data["grid"][:, 1] < n_train
    feats = {}
    for name, rows in (("train", np.flatnonzero(is_train)), ("test", np.flatnonzero(~is_train))):
        if name == "train" or split == "test":
            feats[name] = (log_mel(_waveforms(data, rows, spec, 1 if name == "train" else 2)),
                           torch.from_numpy(data["grid"][rows, 4].copy()))
    x_train = feats["train"][0]
    mean, std = x_train.mean(dim=(0, 1)), x_train.std(dim=(0, 1)).clamp_min(1e-6)
    x, y = feats[split]
    return Split(((x - mean) / std).float().contiguous(), y)
