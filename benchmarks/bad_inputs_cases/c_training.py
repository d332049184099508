"""Training: resume with other settings, corrupted or mismatched checkpoints, NaN loss, bad labels and
data; and a real ``lowbit qat`` process killed with SIGKILL, then resumed (the result must equal an
uninterrupted run, or the resume must fail clearly)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch

from bad_inputs_cases import CliResult, Wrong, add, case, cli, env, fixtures, workdir

CAT = "training"


def _prep(model="mlp", **kw):
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    return prepare_qat(fixtures.model(model), QATConfig(int_weight(4), uint_act(4), **kw), fixtures.calib(64))


def _cfg(**kw):
    from lowbit.qat import TrainConfig
    return TrainConfig(**{"epochs": 1, "batch_size": 64, **kw})


def _data(n=256):
    return fixtures.train().take(n)


def _train(m, data, cfg, out=None, resume=False):
    from lowbit.qat import train
    return train(m, data, cfg, out, resume, progress=False)


def _same(a, b, what):
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        if not torch.equal(va, vb):
            raise Wrong(f"{what}: {k} differs from the uninterrupted run")


def _ckpt_then_resume(mutate, cfg_resume=None):
    out = workdir() / "run"
    _train(_prep(), _data(), _cfg(), out)
    mutate(out / "checkpoint.pt")
    m = _prep()
    _train(m, _data(), cfg_resume or _cfg(epochs=2), out, resume=True)
    return "resumed"


@case(CAT, "any")
def resume_with_more_epochs_equals_uninterrupted():
    out = workdir() / "run"
    _train(_prep(), _data(), _cfg(epochs=1), out)
    resumed = _prep()
    hist = _train(resumed, _data(), _cfg(epochs=2), out, resume=True)
    ref = _prep()
    _train(ref, _data(), _cfg(epochs=2))
    _same(resumed, ref, "a 1-epoch run resumed to 2 epochs")
    if len(hist) != 2:
        raise Wrong(f"history has {len(hist)} epochs")
    return "equal to the uninterrupted 2-epoch run"


@case(CAT, "error")
def resume_with_fewer_epochs_than_done():
    out = workdir() / "run"
    _train(_prep(), _data(), _cfg(epochs=2), out)
    h = _train(_prep(), _data(), _cfg(epochs=1), out, resume=True)
    return f"resumed a 2-epoch checkpoint with epochs=1: history of {len(h)} epochs"


add(CAT, "resume_with_other_lr", "error", lambda: _ckpt_then_resume(lambda p: None, _cfg(epochs=2, lr=0.02)))
add(CAT, "resume_with_other_batch_size", "error", lambda: _ckpt_then_resume(lambda p: None, _cfg(epochs=2, batch_size=32)))


@case(CAT, "error")
def resume_with_other_bits():
    from lowbit.ptq import int_weight, uint_act
    out = workdir() / "run"
    _train(_prep(), _data(), _cfg(), out)
    from lowbit.qat import QATConfig, prepare_qat
    m = prepare_qat(fixtures.model("mlp"), QATConfig(int_weight(2), uint_act(2)), fixtures.calib(64))
    _train(m, _data(), _cfg(epochs=2), out, resume=True)


@case(CAT, "error")
def resume_with_other_data_size():
    out = workdir() / "run"
    _train(_prep(), _data(256), _cfg(), out)
    m = _prep()
    _train(m, _data(512), _cfg(epochs=2), out, resume=True)
    return "resumed on a different data set size"


add(CAT, "resume_without_checkpoint", "error", lambda: _train(_prep(), _data(), _cfg(), workdir() / "empty", True))
add(CAT, "resume_without_out_dir", "error", lambda: _train(_prep(), _data(), _cfg(), None, True))


_overwrite, _resave = fixtures.overwrite, fixtures.resave


def _wrong_shape(s):
    k = next(k for k, v in s["model"].items() if v.ndim == 2)
    s["model"][k] = s["model"][k][:, :-1].clone()


def _nan_weights(s):
    k = next(k for k, v in s["model"].items() if v.ndim == 2)
    s["model"][k] = torch.full_like(s["model"][k], float("nan"))


add(CAT, "resume_checkpoint_200_bytes_overwritten", "error", lambda: _ckpt_then_resume(_overwrite))
add(CAT, "resume_checkpoint_truncated", "error", lambda: _ckpt_then_resume(lambda p: p.write_bytes(p.read_bytes()[:5000])))
add(CAT, "resume_checkpoint_wrong_shape_tensor", "error", lambda: _ckpt_then_resume(_resave(_wrong_shape)))
add(CAT, "resume_checkpoint_nan_weights", "error", lambda: _ckpt_then_resume(_resave(_nan_weights)))
add(CAT, "resume_checkpoint_missing_optimizer", "error", lambda: _ckpt_then_resume(_resave(lambda s: s.pop("optimizer"))))
add(CAT, "resume_checkpoint_missing_rng", "error", lambda: _ckpt_then_resume(_resave(lambda s: s.pop("rng"))))
add(CAT, "resume_checkpoint_epoch_negative", "error", lambda: _ckpt_then_resume(_resave(lambda s: s.update(epoch=-1))))
add(CAT, "resume_checkpoint_epoch_string", "error", lambda: _ckpt_then_resume(_resave(lambda s: s.update(epoch="1"))))
add(CAT, "resume_checkpoint_history_not_list", "error", lambda: _ckpt_then_resume(_resave(lambda s: s.update(history=5))))
add(CAT, "resume_checkpoint_extra_model_key", "error",
    lambda: _ckpt_then_resume(_resave(lambda s: s["model"].update(extra=torch.zeros(3)))))
add(CAT, "resume_checkpoint_rng_wrong", "error",
    lambda: _ckpt_then_resume(_resave(lambda s: s.update(rng=torch.zeros(10, dtype=torch.uint8)))))


@case(CAT, "error")
def nan_loss_from_huge_lr():
    h = _train(_prep(), _data(), _cfg(lr=1e30, augment=False))
    return f"trained with lr 1e30: loss {h[-1]['loss']}"


@case(CAT, "error")
def labels_out_of_range():
    from lowbit.data import Split
    d = _data()
    _train(_prep(), Split(d.x, torch.full_like(d.y, 10)), _cfg())


@case(CAT, "error")
def labels_negative():
    from lowbit.data import Split
    d = _data()
    _train(_prep(), Split(d.x, torch.full_like(d.y, -1)), _cfg())


@case(CAT, "error")
def labels_float():
    from lowbit.data import Split
    d = _data()
    _train(_prep(), Split(d.x, d.y.float()), _cfg())


@case(CAT, "error")
def train_on_empty_split():
    _train(_prep(), _data(0), _cfg())


@case(CAT, "error")
def train_on_images_of_wrong_shape():
    from lowbit.data import Split
    _train(_prep(), Split(torch.randn(128, 1, 14, 14), torch.zeros(128, dtype=torch.int64)), _cfg())


@case(CAT, "error")
def train_with_out_dir_a_file():
    p = workdir() / "afile"
    p.write_text("x")
    _train(_prep(), _data(), _cfg(), p)


@case(CAT, "error")
def train_a_float_model():
    return _train(fixtures.model("mlp").train(), _data(), _cfg())


@case(CAT, "error")
def train_with_tensor_granularity_and_bn_freeze():
    from lowbit.ptq import uint_act
    from lowbit.spec import QuantSpec
    from lowbit.granularity import PerTensor
    from lowbit.formats import IntFormat
    from lowbit.qat import QATConfig, convert_qat, prepare_qat
    m = prepare_qat(fixtures.model("cnn"), QATConfig(QuantSpec(IntFormat(4), PerTensor()), uint_act(4), bn_freeze_steps=2),
                    fixtures.calib(64))
    _train(m, _data(128), _cfg())
    convert_qat(m)


@case(CAT, "valid")
def batch_larger_than_data():
    m = _prep()
    h = _train(m, _data(100), _cfg(batch_size=512))
    if len(h) != 1 or not h[0]["loss"] == h[0]["loss"]:
        raise Wrong(f"history {h}")
    return f"one step, loss {h[0]['loss']:.3f}"


# ----------------------------------------------------------------------------- a real process, killed


QAT = ["qat", "--model", "mlp", "--weight-bits", "4", "--act-bits", "4", "--batch-size", "64", "--train-size", "512",
       "--no-augment"]


def _qat_proc(out, epochs, resume=False):
    cmd = [sys.executable, "-m", "lowbit.cli.main", *QAT, "--epochs", str(epochs), "--out", str(out)]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), cwd=workdir())


def _kill_when(out, cond, epochs, timeout=240):
    p = _qat_proc(out, epochs)
    t0 = time.time()
    hit = False
    while p.poll() is None and time.time() - t0 < timeout:
        if cond(out):
            hit = True
            break
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    return hit


def _state(out):
    return __import__("lowbit.training", fromlist=["x"]).load_checkpoint(out / "checkpoint.pt")


def _killed_then_resumed(cond, epochs=2, what="") -> CliResult:
    ref = workdir() / "ref"
    r = cli(*QAT, "--epochs", str(epochs), "--out", ref)
    if r.rc != 0:
        raise RuntimeError(f"uninterrupted run failed: {r.err[-300:]}")
    out = workdir() / "killed"
    hit = _kill_when(out, cond, epochs)
    had = (out / "checkpoint.pt").exists()
    r = cli(*QAT, "--epochs", str(epochs), "--out", out, "--resume")
    stale = [f.name for f in out.glob(".*.tmp")] if out.exists() else []
    if stale:
        raise Wrong(f"{what}: the temp file of the killed write is still there after --resume (exit {r.rc}): {stale}")
    if r.rc != 0:
        r.note = f"killed at the moment asked: {hit}; checkpoint present: {had}"
        return r
    a, b = _state(ref), _state(out)
    for k in a["model"]:
        if not torch.equal(a["model"][k], b["model"][k]):
            raise Wrong(f"{what}: resumed model differs from the uninterrupted run ({k})")
    ra, rb = json.loads((ref / "result.json").read_text()), json.loads((out / "result.json").read_text())
    if ra["accuracy"] != rb["accuracy"] or ra["history"] != rb["history"]:
        raise Wrong(f"{what}: result.json differs from the uninterrupted run")
    if stale:
        raise Wrong(f"{what}: resumed run equal, but stale temp files left: {stale}")
    r.note = f"equal to the uninterrupted run (killed at the moment asked: {hit})"
    return r


@case(CAT, "valid", timeout=400)
def kill9_after_first_checkpoint_then_resume():
    return _killed_then_resumed(lambda out: (out / "checkpoint.pt").exists(), what="killed after epoch 1")


@case(CAT, "valid", timeout=400)
def kill9_during_second_checkpoint_write_then_resume():
    return _killed_then_resumed(lambda out: (out / "checkpoint.pt").exists() and any(out.glob(".checkpoint.pt.*")),
                                what="killed while writing the second checkpoint")


@case(CAT, "any", timeout=400)
def kill9_during_first_checkpoint_write_then_resume():
    return _killed_then_resumed(lambda out: out.exists() and any(out.glob(".checkpoint.pt.*")),
                                what="killed while writing the first checkpoint")


@case(CAT, "any", timeout=400)
def kill9_during_startup_then_resume():
    """Killed 1.5 s after the start (imports, data): --resume must say there is no checkpoint (or start over equal)."""
    started: list[float] = []  # the clock starts at the first poll, right after the process is started

    def after_1_5_s(out) -> bool:
        started.append(time.time())
        return started[-1] - started[0] > 1.5

    return _killed_then_resumed(after_1_5_s, what="killed during start-up")


@case(CAT, "any", timeout=400)
def cli_resume_with_more_epochs_than_the_killed_run():
    """A 1-epoch run resumed with --epochs 2: equal to a 2-epoch run and a result.json that says 2, or a clear error."""
    one, ref = workdir() / "one", workdir() / "ref"
    r = cli(*QAT, "--epochs", "1", "--out", one)
    if r.rc != 0:
        raise RuntimeError(r.err[-300:])
    r = cli(*QAT, "--epochs", "2", "--out", one, "--resume")
    if r.rc != 0:
        return r
    cli(*QAT, "--epochs", "2", "--out", ref)
    a, b = _state(ref), _state(one)
    for k in a["model"]:
        if not torch.equal(a["model"][k], b["model"][k]):
            raise Wrong(f"--resume with --epochs 2 after a 1-epoch run differs from a 2-epoch run ({k})")
    res = json.loads((one / "result.json").read_text())
    if res["train"]["epochs"] != 2 or len(res["history"]) != 2:
        raise Wrong(f"result.json says epochs {res['train']['epochs']}, history {len(res['history'])}")
    r.note = "equal to a 2-epoch run"
    return r
