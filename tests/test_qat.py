"""QAT: LSQ/FAQ in the loop, training, checkpoints and resume, NaN stop, torchrun DDP = one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from lowbit import zoo
from lowbit.cli.main import main
from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError, ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.granularity import PerChannel, PerTensor
from lowbit.integer import to_integer
from lowbit.nn.lsq import LSQActQuantizer, LSQWeightQuantizer
from lowbit.qat import QATConfig, TrainConfig, convert_qat, prepare_qat, train
from lowbit.training import load_checkpoint
from lowbit.spec import QuantSpec
from lowbit.zoo.recipes import evaluate


def _specs(w: int, a: int) -> tuple[QuantSpec, QuantSpec]:
    """LSQ's integer specs: ``w``-bit weights per channel, ``a``-bit activations."""
    return QuantSpec(IntFormat(w), PerChannel(0)), QuantSpec(IntFormat(a, signed=False))


@pytest.fixture(scope="module")
def data():
    return fashion_mnist("train").take(1024), fashion_mnist("test").take(1000)


def test_lsq_slots_are_in_the_loop_with_paper_init(data):
    tr, _ = data
    q = prepare_qat(zoo.pretrained("cnn"), QATConfig(), tr.x[:256])
    acts = [m for m in q.modules() if isinstance(m, LSQActQuantizer)]
    weights = [m for m in q.modules() if isinstance(m, LSQWeightQuantizer)]
    assert len(acts) >= 4 and len(weights) == 4
    assert all(bool(a.initialised) for a in acts)
    assert bool(q.input_quant_0.signed) and not bool(q.conv1.output_quant.signed)  # input has negatives; ReLU not
    w = q.conv2.weight.detach()
    want = 2 * w.abs().flatten(1).mean(1) / 7**0.5  # 4-bit signed: Q_P = 7
    assert torch.allclose(q.conv2.weight_quant.step.detach(), want)
    assert q.conv1.weight_quant.spec.format.bits == 8 and q.conv2.weight_quant.spec.format.bits == 4  # first layer 8


@torch.no_grad()
def test_mse_init_starts_from_the_least_squares_steps(data):
    from lowbit.functional.lsq import lsq_bounds, mse_init_step

    tr, te = data
    paper = prepare_qat(zoo.pretrained("cnn"), QATConfig(*_specs(3, 3)), tr.x[:256]).eval()
    mse = prepare_qat(zoo.pretrained("cnn"), QATConfig(*_specs(3, 3), init="mse"), tr.x[:256]).eval()
    w = mse.conv2.weight.detach()
    q_n, q_p = lsq_bounds(mse.conv2.weight_quant.spec.format)
    assert torch.allclose(mse.conv2.weight_quant.step[5], mse_init_step(w[5], q_n, q_p))
    assert evaluate(mse, te) >= evaluate(paper, te)  # training starts from the better quantizer


def test_per_tensor_weight_steps_train_and_export_to_onnx_with_the_same_accuracy(data, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from lowbit.export.onnx_qdq import export_onnx
    from lowbit.export.ort import session

    tr, te = data
    q = prepare_qat(zoo.pretrained("cnn"), QATConfig(QuantSpec(IntFormat(4), PerTensor())), tr.x[:256])
    assert q.conv2.weight_quant.step.numel() == 1
    train(q, tr, TrainConfig(epochs=1, batch_size=64), progress=False)
    convert_qat(q)
    im = to_integer(q, (te.x[:2],))
    path = export_onnx(im, tmp_path / "qat.onnx", (1, 1, 28, 28))
    onnx.checker.check_model(str(path))
    out = session(path, threads=1).run(None, {"input": te.x.numpy()})[0]
    acc_onnx = float((torch.from_numpy(out).argmax(1) == te.y).float().mean())
    acc_int = float((im(te.x).argmax(1) == te.y).float().mean())
    assert acc_int > 0.6 and abs(acc_onnx - acc_int) <= 0.003  # 3 of the 1,000 images at most


@torch.no_grad()
def test_weight_code_minus_128_lowers_exactly(data):
    tr, te = data
    q = prepare_qat(zoo.pretrained("cnn"), QATConfig(), tr.x[:256])
    step = q.conv1.weight_quant.step  # the 8-bit first layer: two's complement -128..127
    q.conv1.weight[0, 0, 0, 0] = -200 * step[0]
    convert_qat(q)
    im = to_integer(q, (te.x[:2],))
    assert int(im.nodes[1].op.tensors["weight"].min()) == -128
    assert torch.equal(im(te.x[:64]), q(te.x[:64]))


@pytest.mark.parametrize("method", ["lsq", "faq"])
def test_unfolded_batchnorm_trains_then_freezes_then_folds(data, method):
    from lowbit.qat import fold_trained_bn

    tr, te = data
    base = zoo.pretrained("cnn")
    q = prepare_qat(base, QATConfig(*_specs(4, 4), method=method, bn_freeze_steps=4), tr.x[:256])
    assert q.conv1.bn is not None and q.conv2.bn is not None  # conv -> BN kept inside the unified module
    before = int(q.conv2.bn.num_batches_tracked)
    train(q, tr.take(256), TrainConfig(epochs=1, batch_size=32, lr=1e-3), progress=False)  # 8 steps
    assert not torch.equal(q.conv2.bn.running_mean, base.bn2.running_mean)  # statistics trained ...
    assert int(q.conv2.bn.num_batches_tracked) - before == 4  # ... for 4 steps, then frozen
    assert not q.conv2.bn.training
    q.eval()
    with torch.no_grad():
        unfolded = q(te.x)
        assert fold_trained_bn(q) == ["conv1", "conv2"]
        convert_qat(q)
        folded = q(te.x)
    assert q.conv2.exact and (unfolded.argmax(1) == folded.argmax(1)).float().mean() > 0.98
    assert torch.equal(to_integer(q, (te.x[:2],))(te.x[:64]), folded[:64])  # and the integer model is exact


def test_lsq_training_recovers_accuracy_and_lowers_to_integers(data):
    tr, te = data
    q = prepare_qat(zoo.pretrained("cnn"), QATConfig(*_specs(2, 2)), tr.x[:256])
    before = evaluate(q, te)
    train(q, tr, TrainConfig(epochs=1, batch_size=64, lr=0.01), progress=False)
    convert_qat(q)
    im = to_integer(q, (te.x[:2],))
    after = evaluate(im, te)
    assert after > before + 0.05  # W2A2 LSQ learns within one short epoch
    with torch.no_grad():
        assert torch.equal(q(te.x[:200]), im(te.x[:200]))


def test_step_gradients_flow_and_faq_keeps_fixed_steps(data):
    tr, _ = data
    q = prepare_qat(zoo.pretrained("mlp"), QATConfig(), tr.x[:128])
    loss = torch.nn.functional.cross_entropy(q(tr.x[:64]), tr.y[:64])
    loss.backward()
    assert q.fc2.weight_quant.step.grad is not None and q.fc2.weight_quant.step.grad.abs().sum() > 0
    faq = QATConfig(QuantSpec(IntFormat(8, narrow=True), PerChannel(0)), QuantSpec(IntFormat(8, signed=False)),
                    method="faq")
    f = prepare_qat(zoo.pretrained("mlp"), faq, tr.x[:128])
    assert not [n for n, _ in f.named_parameters() if "step" in n]
    scale = f.fc2.weight_quant.scale.clone()
    train(f, tr.take(256), TrainConfig(epochs=1, batch_size=64, lr=1e-3), progress=False)
    convert_qat(f)
    assert torch.equal(f.fc2.weight_quant.scale, scale)


def test_resume_is_bit_identical_to_an_uninterrupted_run(data, tmp_path):
    tr, _ = data
    cfg2 = TrainConfig(epochs=2, batch_size=64, lr=0.01)
    a = prepare_qat(zoo.pretrained("mlp"), QATConfig(), tr.x[:128])
    train(a, tr.take(512), cfg2, tmp_path / "a", progress=False)
    # a 2-epoch run killed right after its first checkpoint; a new process resumes it
    c = prepare_qat(zoo.pretrained("mlp"), QATConfig(), tr.x[:128])

    class Kill(Exception):
        pass

    def killer(history):
        raise Kill

    with pytest.raises(Kill):
        _train_then_kill(c, tr.take(512), cfg2, tmp_path / "c", killer)
    assert load_checkpoint(tmp_path / "c" / "checkpoint.pt")["epoch"] == 1
    d = prepare_qat(zoo.pretrained("mlp"), QATConfig(), tr.x[:128])
    train(d, tr.take(512), cfg2, tmp_path / "c", resume=True, progress=False)
    for (k, va), (_, vd) in zip(a.state_dict().items(), d.state_dict().items()):
        assert torch.equal(va, vd), k


def _train_then_kill(model, data, cfg, out, killer):
    """Run ``train`` and kill it right after the first checkpoint is written."""
    import lowbit.training as loop

    original = loop.save_checkpoint

    def save_and_die(*args, **kwargs):
        original(*args, **kwargs)
        killer(None)

    loop.save_checkpoint = save_and_die
    try:
        train(model, data, cfg, out, progress=False)
    finally:
        loop.save_checkpoint = original


def test_bad_inputs_and_nan_loss_stop_clearly(data, tmp_path):
    tr, _ = data
    with pytest.raises(ConfigError, match=r"QAT cannot run IntFormat\(bits=1.*weights"):
        QATConfig(QuantSpec(IntFormat(1)))
    with pytest.raises(ConfigError, match="method"):
        QATConfig(method="magic")
    q = prepare_qat(zoo.pretrained("mlp"), QATConfig(), tr.x[:128])
    bad = tr.take(256)
    bad = type(bad)(bad.x.clone(), bad.y)
    bad.x[100:] = float("nan")  # the loss turns NaN at once
    with pytest.raises(DataError, match="loss became nan at epoch 1, step 1: lower the learning rate"):
        train(q, bad, TrainConfig(epochs=1, batch_size=64, lr=0.01, augment=False), progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(q, tr.take(256), TrainConfig(epochs=1), tmp_path / "none", resume=True, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        train(q, tr.take(256), TrainConfig(epochs=1), tmp_path / "junk", resume=True, progress=False)
    other = prepare_qat(zoo.pretrained("cnn"), QATConfig(), tr.x[:128])
    train(other, tr.take(128), TrainConfig(epochs=1, batch_size=64), tmp_path / "cnn", progress=False)
    with pytest.raises(CheckpointError, match="another model"):
        train(q, tr.take(256), TrainConfig(epochs=1, batch_size=64), tmp_path / "cnn", resume=True, progress=False)
    with pytest.raises(DataError):
        prepare_qat(zoo.pretrained("mlp"), QATConfig(), torch.empty(0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    common = ["qat", "--model", "mlp", "--weight-bits", "4", "--act-bits", "4", "--epochs", "1", "--batch-size", "64",
              "--train-size", "512"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "lowbit.cli.main", *common, "--out", str(tmp_path / "ddp")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["model"]
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    assert two.keys() == one.keys()
    for k in one:  # equal up to the summation order of the gradient all-reduce (a wrong shard or mean: ~1e-2)
        assert torch.allclose(two[k].float(), one[k].float(), atol=1e-4, rtol=1e-4), k
    h2, h1 = (json.loads((tmp_path / d / "result.json").read_text())["history"] for d in ("ddp", "one"))
    assert h2[0]["loss"] == pytest.approx(h1[0]["loss"], rel=1e-4)  # all ranks' shares, not rank 0's


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["qat", "--model", "mlp", "--weight-bits", "1", "--out", str(tmp_path)]) == 2
    assert "weight_bits=1 is out of range" in capsys.readouterr().err
    assert main(["qat", "--model", "mlp", "--resume", "--train-size", "64", "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["resnet-lsq-w4a4", "resnet-lsq-w2a2"])
def test_shipped_qat_weights_reproduce_recorded_accuracy(key):
    from lowbit.zoo.qat_zoo import pretrained_qat, shipped_qat_accuracy

    test = fashion_mnist("test")
    im = to_integer(pretrained_qat(key), (test.x[:2],))
    assert evaluate(im, test) == pytest.approx(shipped_qat_accuracy(key), abs=1e-9)


def test_folding_a_negative_batchnorm_scale_into_2bit_codes_warns_of_the_codes_it_saturates():
    """g < 0 negates a channel's codes, and -2 has no +2 in two's complement 2 bits: never silently."""
    from lowbit.qat import fold_trained_bn
    from lowbit.zoo.binary import BinaryCNN

    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    cfg = QATConfig(weight=QuantSpec(IntFormat(2), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)),
                    bn_freeze_steps=10**9)
    gm = prepare_qat(BinaryCNN(channels=4), cfg, x)
    layer = gm.get_submodule("features.4")
    with torch.no_grad():
        layer.bn.weight[1] = -0.5
        layer.weight[1] = -layer.weight_quant.step[1] * 2  # every code of channel 1 is -2
    with pytest.warns(UserWarning, match=r"features.4: folding its BatchNorm negates 1 channel\(s\), and 36 of"):
        fold_trained_bn(gm)
    gm2 = prepare_qat(BinaryCNN(channels=4), cfg, x)
    with torch.no_grad():
        gm2.get_submodule("features.4").bn.weight.abs_()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fold_trained_bn(gm2)  # g >= 0: nothing saturates, nothing to say
