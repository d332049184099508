"""Spoken digits (espeak-ng + sox): deterministic synthesis, cache, torch-only log-mel features."""

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lowbit.data import spoken_digits as sd
from lowbit.errors import ConfigError, DatasetNotFoundError

needs_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                 reason="espeak-ng and sox are not installed (apt-get install -y espeak-ng sox)")
TINY = dict(accents=("en-us",), variants=("m3", "f1"), speeds=(175,), pitches=(50,), words=("one", "seven"))


def test_mel_filterbank_triangles():
    fb = sd.mel_filterbank().double()
    assert fb.shape == (40, 257) and fb.min() >= 0 and fb.max() <= 1
    peaks = fb.argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the band index
    # every band's triangle rises then falls around its peak
    for row in fb:
        nz = row.nonzero().flatten()
        assert torch.all(nz[1:] - nz[:-1] == 1)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3500.0])
def test_log_mel_of_a_sine_peaks_in_its_band(freq):
    t = torch.arange(16000, dtype=torch.float64) / sd.SAMPLE_RATE
    feats = sd.log_mel(torch.sin(2 * math.pi * freq * t)[None])
    assert feats.shape == (1, 101, 40)
    band = int(feats[0, 50].argmax())
    fb = sd.mel_filterbank()
    bin_ = round(freq / (sd.SAMPLE_RATE / sd.N_FFT))
    assert band in set(fb[:, bin_].nonzero().flatten().tolist())  # the sine's bin lies in the loudest band


@pytest.mark.parametrize("bad", [dict(snr_db=(5.0, 1.0)), dict(speed=(0.0, 1.0)), dict(speed=(1.0, float("nan"))),
                                 dict(window_s=0.1), dict(seed=1.5), dict(snr_db=[0, 1])])
def test_spec_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        sd.SpokenDigitsSpec(**bad)


def test_bad_split_name():
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        sd.spoken_digits("val")


def test_missing_tools_name_the_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sd.shutil, "which", lambda _name: None)
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y espeak-ng sox"):
        sd.synthesize(cache_dir=tmp_path, **TINY)


@needs_tools
def test_synthesis_is_deterministic_and_cached(tmp_path, monkeypatch):
    a = sd.synthesize(cache_dir=tmp_path / "a", **TINY)
    b = sd.synthesize(cache_dir=tmp_path / "b", **TINY)
    assert np.array_equal(a["audio"], b["audio"]) and np.array_equal(a["offsets"], b["offsets"])
    assert a["grid"].tolist() == [[0, 0, 175, 50, 0], [0, 0, 175, 50, 1], [0, 1, 175, 50, 0], [0, 1, 175, 50, 1]]
    assert all(n > 0.2 * sd.SAMPLE_RATE for n in np.diff(a["offsets"]))
    assert [p.name for p in (tmp_path / "a").iterdir()] == [next((tmp_path / "a").iterdir()).name]  # no temp left

    def no_subprocess(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    c = sd.synthesize(cache_dir=tmp_path / "a", **TINY)
    assert np.array_equal(a["audio"], c["audio"])


@needs_tools
def test_augmented_waveforms_are_seeded(tmp_path):
    data = sd.synthesize(cache_dir=tmp_path, **TINY)
    rows = np.arange(4)
    spec = sd.SpokenDigitsSpec(snr_db=(10.0, 10.0), speed=(0.9, 1.1))
    w1, w2 = sd._waveforms(data, rows, spec, 1), sd._waveforms(data, rows, spec, 1)
    assert torch.equal(w1, w2) and w1.shape == (4, int(1.2 * sd.SAMPLE_RATE))
    assert not torch.equal(w1, sd._waveforms(data, rows, spec, 2))
    clean = sd._waveforms(data, rows, sd.SpokenDigitsSpec(snr_db=None, speed=None), 1)
    assert (clean == 0).float().mean() > 0.3  # silence outside the clip
    # SNR 10 dB: noise power is a tenth of the clip's (RMS 0.1 before noise)
    noise = w1 - sd._waveforms(data, rows, sd.SpokenDigitsSpec(snr_db=None, speed=(0.9, 1.1)), 1)
    assert noise.square().mean().sqrt().item() == pytest.approx(0.1 * 10 ** -0.5, rel=0.05)
