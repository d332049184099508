"""The one training loop: learning on real data, optimizer/loss/hook seams checked against their update
formulas, data orders, bit-exact resume, refused resumes, checkpoint integrity, the NaN guard, two processes."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from lowbit.data import Split, batches, fashion_mnist, random_shift_flip
from lowbit.errors import CheckpointError, ConfigError, DataError
from lowbit.training import (
    Cosine,
    CrossEntropy,
    Hooks,
    LoopConfig,
    SGDNesterov,
    Shuffled,
    load_checkpoint,
    save_checkpoint,
    train,
)
from tests import _dist_worker


@pytest.fixture(scope="module")
def fm():
    return fashion_mnist("train").take(1024)


def tiny(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10))


class Stop(Exception):
    pass


def stop_after_first_epoch(model, row):
    """An epoch-end hook that kills the run right after its first checkpoint."""
    if row["epoch"] == 1:
        raise Stop


def test_loop_learns_fashion_mnist(fm):
    model = tiny()
    with torch.no_grad():
        start = float(nn.functional.cross_entropy(model(fm.x), fm.y))
    history = train(model, fm, LoopConfig(epochs=3, batch_size=64), optimizer=SGDNesterov(lr=0.05), progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[2]["loss"] < history[1]["loss"] < history[0]["loss"] < start
    model.eval()
    with torch.no_grad():
        end = float(nn.functional.cross_entropy(model(fm.x), fm.y))
        accuracy = float((model(fm.x).argmax(1) == fm.y).float().mean())
    assert end < 0.5 * start and accuracy > 0.75 and history[2]["accuracy"] > 0.7


def test_custom_optimizer_takes_adams_first_step(fm):
    """One full batch, Adam: the first step moves every parameter by lr g / (|g| + eps)."""
    data = fm.take(256)
    model, ref = tiny(), tiny()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, Shuffled(data, 256), LoopConfig(epochs=1), optimizer=adam, progress=False)
    x, y = next(iter(Shuffled(data, 256).epoch(0)))  # the batch the loop saw, in its order
    nn.functional.cross_entropy(ref(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        want = q.detach() - 1e-3 * q.grad / (q.grad.abs() + 1e-8)  # the cosine's step 0 is the peak
        assert torch.allclose(p.detach(), want, atol=1e-9), name
    sgd = tiny()
    train(sgd, Shuffled(data, 256), LoopConfig(epochs=1), progress=False)  # the default SGD moves elsewhere
    assert not torch.allclose(sgd[1].weight, model[1].weight, atol=1e-5)


def test_custom_loss_and_loss_hook_enter_the_gradient(fm):
    """loss = -mean(z_0), hook = 0.5 |b|_1 on the last bias: plain SGD moves b by -lr (-e_0 + 0.5 sign b)."""
    data = fm.take(128)
    model = tiny()
    b0 = model[4].bias.detach().clone()
    calls = []

    def loss(output, y, x):
        calls.append(len(x))
        return -output[:, 0].mean()

    def l1(m, x, y, output):
        return 0.5 * m[4].bias.abs().sum()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train(model, Shuffled(data, 128), LoopConfig(epochs=1), optimizer=opt, loss=loss,
                    hooks=Hooks(loss=(l1,)), progress=False)
    grad = 0.5 * torch.sign(b0)
    grad[0] -= 1
    assert calls == [128]
    assert torch.allclose(model[4].bias.detach(), b0 - 0.1 * grad, atol=1e-7)
    ref = tiny()
    with torch.no_grad():
        want = float(-ref(data.x)[:, 0].mean() + 0.5 * ref[4].bias.abs().sum())
    assert history[0]["loss"] == pytest.approx(want, rel=1e-5)


def test_cosine_schedule_values():
    s = Cosine(warmup_steps=4)
    assert [s(0.1, k, 12) for k in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert s(0.1, 4, 12) == 0.1 and s(0.1, 8, 12) == pytest.approx(0.05) and s(0.1, 12, 12) == pytest.approx(0)
    assert Cosine()(2.0, 3, 6) == pytest.approx(1.0)


def test_stream_order_is_one_generator_through_all_epochs_and_replays(fm):
    """``stream=True`` gives the zoo recipes' order (one generator, permutation then shifts/flips per batch),
    and a fresh object asked for epoch 2 replays epochs 0 and 1 to get there."""
    split = fm.take(300)
    gen = torch.Generator().manual_seed(5)
    for epoch in range(3):
        want = [(random_shift_flip(x, gen), y) for x, y in batches(split, 64, gen)]
        got = list(Shuffled(split, 64, seed=5, augment=True, stream=True).epoch(epoch))
        assert len(got) == len(want) == 5
        for (xg, yg), (xw, yw) in zip(got, want):
            assert torch.equal(xg, xw) and torch.equal(yg, yw)


def test_per_epoch_order_depends_on_seed_and_epoch_only(fm):
    a, b = Shuffled(fm.take(200), 50, seed=1, augment=True), Shuffled(fm.take(200), 50, seed=1, augment=True)
    e1 = list(a.epoch(1))
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(e1, b.epoch(1)))
    assert not torch.equal(e1[0][1], next(iter(a.epoch(0)))[1])
    assert sorted(torch.cat([y for _, y in e1]).tolist()) == sorted(fm.take(200).y.tolist())


class SeqNet(nn.Module):
    """A GRU classifier: one forward per batch of whole sequences, the recurrent state inside the forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, T, 3) -> (N, 2)
        self.calls += 1
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def sequences(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch ``epoch``'s 6 batches: is the sum of the first feature over 10 steps positive?"""
    gen = torch.Generator().manual_seed(epoch)
    out = []
    for _ in range(6):
        x = torch.randn(32, 10, 3, generator=gen)
        out.append((x, (x[:, :, 0].sum(1) > 0).long()))
    return out


def test_sequence_batches_from_a_callable_a_list_and_refused_one_shot_iterators():
    model = SeqNet()
    history = train(model, sequences, LoopConfig(epochs=10), optimizer=torch.optim.Adam(model.parameters(), 0.02),
                    progress=False)
    assert model.calls == 6 * 10  # one forward per batch (counting the batches calls sequences(0), not the model)
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["accuracy"] > 0.8
    fixed = SeqNet()
    train(fixed, sequences(0), LoopConfig(epochs=2), progress=False)  # a list: the same batches every epoch
    assert fixed.calls == 12
    with pytest.raises(ConfigError, match="one-shot iterator"):
        train(SeqNet(), iter(sequences(0)), LoopConfig(epochs=1), progress=False)
    with pytest.raises(DataError, match="pair"):
        train(SeqNet(), [torch.randn(4, 10, 3)], LoopConfig(epochs=1), progress=False)


def test_resume_is_bit_exact(fm, tmp_path):
    """2 epochs in one go == 1 epoch, killed, then resumed in a fresh model; dropout draws from the saved RNG."""
    data = Shuffled(fm.take(512), 64, seed=3, augment=True, stream=True)
    cfg = LoopConfig(epochs=2, seed=3)
    a = tiny(dropout=0.2)
    ha = train(a, data, cfg, out_dir=tmp_path / "a", progress=False)
    b = tiny(dropout=0.2)
    with pytest.raises(Stop):
        train(b, data, cfg, out_dir=tmp_path / "b", hooks=Hooks(epoch_end=(stop_after_first_epoch,)), progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    c = tiny(seed=99, dropout=0.2)  # other initial weights: everything must come from the checkpoint
    hc = train(c, data, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert hc == ha
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(va, vc), k
    one = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    two = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"])


def _one_epoch(fm, out, **kw):
    model = tiny()
    train(model, Shuffled(fm.take(256), 64), LoopConfig(epochs=1), out_dir=out, progress=False, **kw)
    return out / "checkpoint.pt"


def test_resume_with_other_options_is_refused(fm, tmp_path):
    _one_epoch(fm, tmp_path)
    with pytest.raises(ConfigError, match=r"written with epochs=1, this run has epochs=2"):
        train(tiny(), Shuffled(fm.take(256), 64), LoopConfig(epochs=2), out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"initial_lr=0.01.*initial_lr=0.02"):
        train(tiny(), Shuffled(fm.take(256), 64), LoopConfig(epochs=1), optimizer=SGDNesterov(lr=0.02),
              out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"n=256.*n=512"):
        train(tiny(), Shuffled(fm.take(512), 64), LoopConfig(epochs=1), out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="CrossEntropy"):
        train(tiny(), Shuffled(fm.take(256), 64), LoopConfig(epochs=1), loss=CrossEntropy(0.1), out_dir=tmp_path,
              resume=True, progress=False)
    with pytest.raises(CheckpointError, match="another model"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), Shuffled(fm.take(256), 64), LoopConfig(epochs=1),
              out_dir=tmp_path, resume=True, progress=False)
    history = train(tiny(), Shuffled(fm.take(256), 64), LoopConfig(epochs=1), out_dir=tmp_path, resume=True,
                    progress=False)  # the same options: nothing left to train, the history comes back
    assert [r["epoch"] for r in history] == [1]


@pytest.mark.parametrize("where", ["header", "start", "middle", "end"])
def test_overwritten_bytes_are_detected(fm, tmp_path, where):
    path = _one_epoch(fm, tmp_path)
    raw = bytearray(path.read_bytes())
    at = {"header": 20, "start": 100, "middle": len(raw) // 2, "end": len(raw) - 200}[where]
    noise = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    raw[at:at + 200] = noise.numpy().tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        train(tiny(), Shuffled(fm.take(256), 64), LoopConfig(epochs=1), out_dir=tmp_path, resume=True, progress=False)
    assert "\n" not in str(err.value)
    assert ("corrupt" if where != "header" else "not a readable") in str(err.value)


def test_altered_tensors_and_old_files_are_one_line_errors(fm, tmp_path):
    path = _one_epoch(fm, tmp_path)
    good = load_checkpoint(path)

    def resume_with(state):
        save_checkpoint(path, state)  # a valid checksum over altered content
        with pytest.raises(CheckpointError) as err:
            train(tiny(), Shuffled(fm.take(256), 64), LoopConfig(epochs=1), out_dir=tmp_path, resume=True,
                  progress=False)
        assert "\n" not in str(err.value)
        return str(err.value)

    bad = {**good, "model": {**good["model"], "4.weight": torch.zeros(5, 32)}}
    assert "tensor '4.weight' is shape (5, 32) torch.float32, this model's is shape (10, 32)" in resume_with(bad)
    opt = good["optimizer"]
    bad = {**good, "optimizer": {**opt, "state": {**opt["state"], 0: {"momentum_buffer": torch.zeros(3, 3)}}}}
    assert "optimizer state 'momentum_buffer' has shape (3, 3)" in resume_with(bad)
    torch.save(good, path)  # the format before checksums: a bare torch.save
    with pytest.raises(CheckpointError, match="older lowbit"):
        load_checkpoint(path)


def test_stale_temp_files_of_a_killed_write_are_ignored_and_removed(fm, tmp_path):
    data, cfg = Shuffled(fm.take(256), 64), LoopConfig(epochs=2)
    with pytest.raises(Stop):
        train(tiny(), data, cfg, out_dir=tmp_path, hooks=Hooks(epoch_end=(stop_after_first_epoch,)), progress=False)
    stale = [tmp_path / ".checkpoint.pt.k1ll3d.tmp", tmp_path / ".checkpoint.pt.abc_12.tmp"]
    stale[0].write_bytes(b"")  # a kill between mkstemp and the first write
    stale[1].write_bytes(b"lowbit-checkpoint 2 sha256=")  # ... and one in the middle of it
    history = train(tiny(), data, cfg, out_dir=tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_nan_loss_stops_with_the_step_and_the_fix(fm):
    x = torch.full_like(fm.x[:128], float("nan"))
    with pytest.raises(DataError, match=r"loss became nan at epoch 1, step 1: lower the learning rate \(--lr, peak "
                                        r"now 0.01\) or check the data"):
        train(tiny(), Shuffled(Split(x, fm.y[:128]), 64), LoopConfig(epochs=1), progress=False)


def test_bad_arguments_are_clear():
    with pytest.raises(ConfigError, match="LoopConfig.epochs"):
        LoopConfig(epochs=0)
    with pytest.raises(ConfigError, match="momentum"):
        SGDNesterov(momentum=0.0)
    with pytest.raises(ConfigError, match="Hooks.after_step"):
        Hooks(after_step=print)
    with pytest.raises(ConfigError, match="not the model's"):
        train(tiny(), sequences(0), optimizer=torch.optim.SGD(tiny(1).parameters(), lr=0.1), progress=False)
    with pytest.raises(ConfigError, match="scalar"):
        train(tiny(), [(torch.randn(4, 784), torch.zeros(4, dtype=torch.long))],
              loss=lambda out, y, x: out, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_report_the_loss_of_one(tmp_path):
    """Under DDP each rank trains on its share (the last batch of 11 splits 6 + 5) and the history is all-reduced:
    the loss, accuracy and weights equal one process's up to the all-reduce's summation order."""
    mp.spawn(_dist_worker.train_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = _dist_worker.tiny_mlp()
    h1 = train(one, Shuffled(_dist_worker.train_data(), 64, seed=1), LoopConfig(epochs=2, seed=1),
               optimizer=SGDNesterov(lr=0.05), progress=False)
    for rank in (0, 1):
        h2 = torch.load(tmp_path / f"history{rank}.pt")
        for r1, r2 in zip(h1, h2, strict=True):
            assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4)
            assert r2["accuracy"] == pytest.approx(r1["accuracy"], abs=2 / 203)  # an argmax tie may flip
    two = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    for k, v in one.state_dict().items():
        assert torch.allclose(two[k], v, atol=1e-5), k


def test_cli_resume_with_other_epochs_is_one_line_and_result_reports_the_epochs(tmp_path, capsys):
    import json

    from lowbit.cli.main import main

    common = ["qat", "--model", "mlp", "--train-size", "128", "--batch-size", "64", "--out", str(tmp_path)]
    assert main([*common, "--epochs", "1"]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["epochs"] == len(result["history"]) == 1
    capsys.readouterr()
    assert main([*common, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs=1" in err and "train.epochs=2" in err
