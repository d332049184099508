"""Safety of the integer path, as a user meets it: wrong inputs, crafted and corrupted model files, NaN/inf.

Calls that could corrupt memory if a check were missing run in a child process (tests/_integer_worker.py):
a crash there fails the test that asked, with the child's exit status, instead of killing pytest.
"""

from __future__ import annotations

import copy
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import lowbit
from lowbit.integer.backend import Kernels
from lowbit import zoo
from lowbit.cli.main import main as cli_main
from lowbit.data import fashion_mnist
from lowbit.errors import CheckpointError, DataError, ShapeError
from lowbit.native import cext, guard
from lowbit.integer import ops, plan, planner, to_integer, validate, vnni
from lowbit.integer.io import VERSION, load_integer, save_integer
from lowbit.ptq import PTQConfig, quantize
from lowbit.utils.tensorfile import load_tensors, save_tensors

needs_cext = pytest.mark.skipif(cext.library() is None, reason="no C compiler: the C kernels are not built")
WORKER = Path(__file__).with_name("_integer_worker.py")


# ---------------------------------------------------------------- the child process


class Worker:
    """The child process of tests/_integer_worker.py, started on first use and again after a crash."""

    def __init__(self, tmp: Path, bare: bool = False) -> None:
        self.tmp, self.bare, self.proc, self.paths = tmp, bare, None, {}

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(lowbit.__file__).parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]))
        self.stderr = open(self.tmp / "worker-stderr.txt", "w+")  # noqa: SIM115 - read back after a crash
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(self.tmp), *(["--bare"] if self.bare else [])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env)
        self.paths = self._read(600)["paths"]

    def _read(self, timeout: float) -> dict:
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else None
            if not line:  # died (or hung): report it and start afresh next time
                if line is None:
                    self.proc.kill()
                rc = self.proc.wait()
                self.proc.stdin.close()
                self.proc.stdout.close()
                self.stderr.seek(0)
                tail = self.stderr.read()[-3000:]
                self.stderr.close()
                self.proc = None
                pytest.fail(f"the worker process died (exit status {rc}{', timed out' if line is None else ''}); "
                            f"its stderr ends with:\n{tail}")
            if line.startswith("@@"):
                return json.loads(line[2:])

    def ask(self, **request) -> dict:
        if self.proc is None:
            self.start()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read(300)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
            self.proc.stdin.close()
            self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker"))
    w.start()
    yield w
    w.close()


def _clear(answer: dict, kind: type, *words: str) -> str:
    """The answer is a clean error of ``kind`` whose message holds every word."""
    assert answer["outcome"] == "clear_error", answer
    assert answer["type"] == kind.__name__, answer
    for w in words:
        assert w in answer["message"], (w, answer["message"])
    return answer["message"]


# ---------------------------------------------------------------- 1. wrong inputs


@needs_cext
@pytest.mark.parametrize("variant", ["memory", "loaded"])
@pytest.mark.parametrize("plan_on", [True, False])
@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_wrong_channel_count_is_a_shape_error_not_heap_corruption(worker, name, variant, plan_on):
    """The issue's crash: 2 or 3 channels into the 1-channel CNN/ResNet returned logits, then the heap died."""
    for channels in (2, 3):
        answer = worker.ask(op="call", model=name, variant=variant, shape=[4, channels, 28, 28], dtype="float32",
                            plan=plan_on)
        _clear(answer, ShapeError, "input 'x'", "expected shape (N, 1, 28, 28)", f"got (4, {channels}, 28, 28)")
    ok = worker.ask(op="call", model=name, variant=variant, shape=[4, 1, 28, 28], dtype="float32", plan=plan_on)
    assert ok["outcome"] == "ok" and ok["equal_memory"] is True, ok


@needs_cext
@pytest.mark.parametrize("name", ["cnn", "resnet", "mlp"])
def test_a_file_without_recorded_shape_names_the_layer_that_does_not_fit(worker, name):
    """A format-2 file has no input shape: the input's shape goes through every node, the first misfit named."""
    answer = worker.ask(op="call", model=name, variant="legacy", shape=[2, 3, 28, 28], dtype="float32")
    if name == "mlp":  # flatten then a 784-feature linear layer: 3 x 28 x 28 = 2352 features
        _clear(answer, ShapeError, "node 2 (linear)", "784 input features")
    else:
        _clear(answer, ShapeError, "node 1 (conv2d)", "1 input channels", "3 channels")
    ok = worker.ask(op="call", model=name, variant="legacy", shape=[3, 1, 28, 28], dtype="float32")
    assert ok["outcome"] == "ok" and ok["equal_memory"] is True, ok


_DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool"]
_near_miss = st.tuples(st.integers(0, 4), st.sampled_from([1, 1, 1, 2, 3, 4]), st.sampled_from([28, 28, 26, 27, 29]),
                       st.sampled_from([28, 28, 27, 29, 30])).map(list)
_any_shape = st.lists(st.integers(0, 6), max_size=5)
_valid = st.integers(1, 6).map(lambda b: [b, 1, 28, 28])


@needs_cext
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["cnn", "resnet", "mlp"]), variant=st.sampled_from(["memory", "loaded", "legacy"]),
       shape=_valid | _near_miss | _any_shape, dtype=st.sampled_from(["float32"] * 6 + _DTYPES), plan_on=st.booleans(),
       layout=st.sampled_from(["contiguous", "transposed"]))
def test_fuzz_input_shapes_and_dtypes_give_a_clean_error_or_the_right_output(worker, name, variant, shape, dtype,
                                                                            plan_on, layout):
    answer = worker.ask(op="call", model=name, variant=variant, shape=shape, dtype=dtype, plan=plan_on,
                        layout=layout)
    event(f"{answer['outcome']} {answer.get('type', '')}")
    assert answer["outcome"] in ("ok", "clear_error"), answer  # never a crash, never an unclear exception
    fits = len(shape) == 4 and shape[1:] == [1, 28, 28]
    if fits and dtype == "float32" and shape[0] >= 1:
        assert answer["outcome"] == "ok" and answer["equal_memory"] is True, answer
    elif variant != "legacy":  # the recorded shape and dtype decide
        assert answer["outcome"] == "clear_error", answer
        if dtype != "float32":
            _clear(answer, DataError, "expected dtype torch.float32", f"got torch.{dtype}")
        elif not fits:
            _clear(answer, ShapeError, "expected shape (N, 1, 28, 28)", f"got {tuple(shape)}")
        else:
            _clear(answer, DataError, "input is empty")


# ---------------------------------------------------------------- 2. crafted model files


@pytest.fixture(scope="module")
def calib():
    return fashion_mnist("train").take(32).x


@pytest.fixture(scope="module")
def saved(calib, tmp_path_factory):
    """The zoo models' integer forms, saved: {name: (model, path)}."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name in ("cnn", "resnet", "mlp"):
        im = to_integer(quantize(zoo.pretrained(name), [calib], PTQConfig()), (calib[:2],))
        out[name] = (im, save_integer(im, folder / f"{name}.safetensors"))
    return out


def _rewrite(path: Path, out: Path, edit=None, tensors_edit=None, checksum: bool = True) -> Path:
    """A crafted copy of a model file: ``edit(meta)`` on its JSON and ``tensors_edit(tensors)`` on its tensors,
    saved with a valid checksum (whoever crafts a file can write one)."""
    tensors, metadata = load_tensors(path)
    meta = json.loads(metadata["lowbit"])
    if edit is not None:
        edit(meta)
    if tensors_edit is not None:
        tensors_edit(tensors)
    return save_tensors(out, tensors, {"lowbit": json.dumps(meta)}, checksum=checksum)


def _node(meta: dict, kind: str, nth: int = 0) -> dict:
    return [n for n in meta["nodes"] if n["kind"] == kind][nth]


def _set(kind: str, attr: str, value, nth: int = 0):
    def edit(meta):
        _node(meta, kind, nth)["attrs"][attr] = value
    return edit


def _shrink(kind: str, tensor: str, nth: int = 0, keep: int = 1):
    def edit(tensors):
        meta_index = _index_of[kind, nth]
        tensors[f"{meta_index}.{tensor}"] = tensors[f"{meta_index}.{tensor}"][:keep].clone()
    return edit


_index_of: dict = {}  # (kind, nth) -> node index in the CNN, filled by the fixture below


@pytest.fixture(scope="module")
def cnn_index(saved):
    meta = json.loads(load_tensors(saved["cnn"][1])[1]["lowbit"])
    counts: dict = {}
    for i, n in enumerate(meta["nodes"]):
        _index_of[n["kind"], counts.get(n["kind"], 0)] = i
        counts[n["kind"]] = counts.get(n["kind"], 0) + 1
    return _index_of


def _weight_channels(tensors):
    """conv2's weight takes 3 times the input channels (a crafted file whose weight is (O, 3C, k, k))."""
    i = _index_of["conv2d", 1]
    w = tensors[f"{i}.weight"]
    tensors[f"{i}.weight"] = w.repeat(1, 3, 1, 1).contiguous()


_CRAFTED = [  # (what, JSON edit, tensor edit, words of the CheckpointError)
    ("conv padding [-3, -3]", _set("conv2d", "padding", [-3, -3]), None,
     ["node 1 (conv2d)", "'padding' = [-3, -3]", "0..65536"]),
    ("conv stride 0", _set("conv2d", "stride", [0, 1]), None, ["'stride'", "1..65536"]),
    ("conv dilation as a string", _set("conv2d", "dilation", "1"), None, ["'dilation'", "list of 2 integers"]),
    ("conv groups 3", _set("conv2d", "groups", 3), None, ["'groups' = 3 does not divide"]),
    ("conv weight with 3x the input channels", None, _weight_channels,
     ["(conv2d)", "takes 96 input channels", "has 32 channels"]),
    ("1-element bias", None, _shrink("conv2d", "bias"), ["tensor 'bias' has shape (1,)", "allowed: (32,)"]),
    ("1-element multiplier", None, _shrink("conv2d", "m"), ["tensor 'm' has shape (1,)"]),
    ("shift of 100", None, lambda t: t.__setitem__(f"{_index_of['conv2d', 0]}.n",
                                                   torch.full_like(t[f"{_index_of['conv2d', 0]}.n"], 100)),
     ["tensor 'n' holds values in 100..100", "allowed: 0..62"]),
    ("max-pool kernel 0", _set("maxpool2d", "kernel_size", [0, 0]), None,
     ["(maxpool2d)", "'kernel_size' = [0, 0]", "1..65536"]),
    ("max-pool padding over half the kernel", _set("maxpool2d", "padding", [2, 2]), None,
     ["at most half the kernel"]),
    ("a 1.1 TB allocation", _set("conv2d", "padding", [60000, 60000]), None, ["padded input", "at most"]),
    ("zero point 300", _set("quantize", "zero_point", 300), None, ["(quantize)", "'zero_point' = 300", "-128..127"]),
    ("lo > hi", lambda m: _node(m, "conv2d")["attrs"].update(lo=5, hi=4), None, ["'lo' = 5 > 'hi' = 4"]),
    ("flatten of the batch", _set("flatten", "start_dim", 0), None, ["(flatten)", "the batch dimension stays"]),
    ("an unknown attribute", _set("conv2d", "bias_shift", 3), None, ["unknown attributes ['bias_shift']"]),
    ("a NaN scale", _set("quantize", "scale", float("nan")), None, ["(quantize)", "'scale' = nan", "a finite number > 0 in 1e-30..1e+30"]),
    ("a node reading a later tensor", lambda m: m["nodes"][1].__setitem__("inputs", [m["nodes"][3]["output"]]),
     None, ["node 1 (conv2d)", "which no earlier node defines"]),
    ("input shape of 3 channels", lambda m: m.__setitem__("input_shape", [3, 28, 28]), None,
     ["node 1 (conv2d)", "has 3 channels"]),
    ("weight codes beyond weight_bits", _set("conv2d", "weight_bits", 2), None,
     ["tensor 'weight' holds values in", "allowed: -2..1"]),
]


@pytest.mark.parametrize("what,edit,tensors_edit,words", _CRAFTED, ids=[c[0] for c in _CRAFTED])
def test_crafted_model_files_are_refused_at_load(saved, cnn_index, tmp_path, what, edit, tensors_edit, words):
    """Each crafted file of the issue (and more) is a CheckpointError naming the node, kind, attribute and the
    allowed range; nothing is built, no kernel runs."""
    path = _rewrite(saved["cnn"][1], tmp_path / "crafted.safetensors", edit, tensors_edit)
    with pytest.raises(CheckpointError) as err:
        load_integer(path)
    msg = str(err.value)
    assert "is not a valid lowbit integer model" in msg
    for w in words:
        assert w in msg, (w, msg)


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.slow
def test_bench_load_refuses_crafted_corrupt_and_foreign_models(saved, cnn_index, calib, tmp_path, capsys):
    """``lowbit bench --load``: the same validation, one line and exit status 2; a model built for other
    images than the 28x28 Fashion-MNIST bench feeds is refused; a good file runs."""
    crafted = _rewrite(saved["cnn"][1], tmp_path / "pad.safetensors", _set("conv2d", "padding", [-3, -3]))
    rc, _, err = _run_cli(capsys, "bench", "--load", str(crafted), "--batch", "1", "--rounds", "1")
    _one_line_error(rc, err, "'padding' = [-3, -3]")

    corrupt = tmp_path / "flip.safetensors"
    corrupt.write_bytes(_flip_weight_byte(saved["cnn"][1]))
    rc, _, err = _run_cli(capsys, "bench", "--load", str(corrupt), "--batch", "1", "--rounds", "1")
    _one_line_error(rc, err, "SHA-256")

    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10)).eval()
    rgb_calib = torch.rand(16, 3, 32, 32)
    rgb_path = save_integer(to_integer(quantize(rgb, [rgb_calib], PTQConfig()), (rgb_calib[:2],)),
                            tmp_path / "rgb.safetensors")
    rc, _, err = _run_cli(capsys, "bench", "--load", str(rgb_path), "--batch", "1", "--rounds", "1")
    _one_line_error(rc, err, "takes inputs of shape (N, 3, 32, 32)", "(N, 1, 28, 28)")

    rc, _, err = _run_cli(capsys, "bench", "--load", str(saved["resnet"][1]), "--model", "cnn", "--batch", "1",
                          "--rounds", "1")  # same input and output shapes, another network: its speed-up would lie
    _one_line_error(rc, err, "is not a quantized 'cnn'", "pass the --model it was made from")
    rc, _, err = _run_cli(capsys, "bench", "--load", str(saved["resnet"][1]), "--model", "resnet", "--batch", "1",
                          "--rounds", "1")
    assert rc == 0, err
    rc, out, err = _run_cli(capsys, "bench", "--load", str(saved["cnn"][1]), "--batch", "1", "--rounds", "2")
    assert rc == 0 and "lowbit integer" in out, err


# ---------------------------------------------------------------- 4. integrity


def _flip_weight_byte(path: Path) -> bytes:
    """The file's bytes with one byte of a conv weight changed."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k.endswith(".weight"))
    begin = header[name]["data_offsets"][0]
    raw[8 + n + begin + 3] ^= 0x01
    return bytes(raw)


def test_one_changed_byte_in_the_weights_is_a_checkpoint_error(saved, tmp_path):
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(_flip_weight_byte(saved["cnn"][1]))
    with pytest.raises(CheckpointError, match="SHA-256 of its content"):
        load_integer(path)


def test_the_checksum_covers_the_header_too(saved, tmp_path):
    """A changed zero point (a valid value, so the validator cannot see it) in the JSON: the checksum can."""
    raw = saved["cnn"][1].read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].decode()
    at = header.index('\\"zero_point\\": ') + len('\\"zero_point\\": ')
    digit = header[at]
    header = header[:at] + ("7" if digit != "7" else "6") + header[at + 1:]
    path = tmp_path / "zp.safetensors"
    path.write_bytes(raw[:8] + header.encode() + raw[8 + n:])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_integer(path)


def test_format_version_is_3_and_older_files_load_with_a_warning(saved, tmp_path, calib):
    im, path = saved["cnn"]
    assert VERSION == 3
    meta = json.loads(load_tensors(path)[1]["lowbit"])
    assert meta["version"] == 3 and meta["input_shape"] == [1, 28, 28] and meta["input_dtype"] == "float32"

    def to_v2(m):
        m["version"] = 2
        del m["input_shape"], m["input_dtype"]

    old = _rewrite(path, tmp_path / "v2.safetensors", to_v2, checksum=False)
    with pytest.warns(UserWarning, match="format version 2: it has no checksum"):
        back = load_integer(old)
    assert back.input_shape is None
    assert torch.equal(back(calib[:20]), im(calib[:20]))


def test_save_load_keeps_input_shape_and_outputs(saved, calib):
    for im, path in saved.values():
        back = load_integer(path)
        assert back.input_shape == im.input_shape == (1, 28, 28) and back.input_dtype == torch.float32
        assert torch.equal(back(calib), im(calib))


# ---------------------------------------------------------------- 5. NaN and inf


@needs_cext
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_the_simulations_error_on_every_path(saved, calib, bad):
    sim = quantize(zoo.pretrained("cnn"), [calib], PTQConfig())
    im, path = saved["cnn"]
    x = calib[:5].clone()
    x[2, 0, 10, 3] = bad
    with pytest.raises(DataError) as want:
        sim(x)
    loaded = load_integer(path)
    runs = {"plan": lambda: im(x), "op by op": lambda: im.run(x), "loaded": lambda: loaded(x)}
    for name, run in runs.items():
        with pytest.raises(DataError) as got:
            run()
        assert str(got.value) == str(want.value), name
    with pytest.raises(DataError) as got:  # the PyTorch reference path of the quantizer
        im.run(x, Kernels.REFERENCE)
    assert str(got.value) == str(want.value)


# ---------------------------------------------------------------- the kernel guard


_GUARD_CASES = [  # (python run in the worker, error kind, words)
    ("cext.im2col_nhwc(torch.zeros(1, 2, 5, 5, dtype=torch.int8), (3, 3), (1, 1), (1, 1), (1, 1), 0, (9, 9))",
     "ShapeError", ["output size Ho = 9", "gives 5"]),
    ("cext.maxpool_nhwc(torch.zeros(1, 2, 5, 5, dtype=torch.int8), (2, 2), (1, 1), (-1, -1), (2, 2))",
     "ConfigError", ["ph = -1"]),
    (("cext.requant(torch.zeros(4, 3, dtype=torch.int32), None, torch.ones(3, dtype=torch.int64), "
      "torch.full((3,), 64), 0, -128, 127)"), "ConfigError", ["n (shift)", "0..62"]),
    (("cext.requant(torch.zeros(4, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.int32), "
      "torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64), 0, -128, 127)"),
     "ShapeError", ["buffer 'bias' holds 2 elements", "touches 3"]),
    (("cext.requant(torch.zeros(4, 3, dtype=torch.int32), None, torch.ones(6, dtype=torch.int64)[::2], "
      "torch.ones(3, dtype=torch.int64), 0, -128, 127)"), "ShapeError", ["'m'", "not contiguous"]),
    (("cext.depthwise_nhwc(torch.zeros(1, 4, 5, 5, dtype=torch.int8), torch.zeros(3, 3, 2, dtype=torch.int8), "
      "(1, 1), (1, 1), (1, 1), 0, (5, 5))"), "ShapeError", ["input of 4 channels"]),
    ("cext.quantize_f32(torch.zeros(4), torch.tensor(1.0), 0, -200, 127)", "ConfigError", ["lo = -200"]),
    ("cext.quantize_f32(torch.empty(4, device='meta'), torch.tensor(1.0), 0, -128, 127)", "ShapeError",
     ["is on meta", "CPU"]),
    ("cext.flatten_channels_last(torch.zeros(2, 3, 4, dtype=torch.int8))", "ShapeError", ["4-D"]),
    (("w = vnni.pack_weight(torch.ones(8, 16, dtype=torch.int8)); "
      "r = vnni.Requant(torch.ones(8, dtype=torch.int64), torch.ones(8, dtype=torch.int64), "
      "torch.ones(8, dtype=torch.int64), 0, -128, 127, torch.ones(8, dtype=torch.int64)); "
      "vnni.gemm(torch.zeros(5, 16, dtype=torch.int8), w, w.correction, r, torch.zeros(3, 8, dtype=torch.int8))"),
     "ShapeError", ["buffer 'residual' holds 24 elements", "touches 40"]),
    (("w = vnni.pack_weight(torch.ones(8, 36, dtype=torch.int8)); "
      "vnni.conv(torch.zeros(1, 4, 6, 6, dtype=torch.int8), w, (3, 3), (1, 1), (0, 0), (1, 1), 0, (6, 6), "
      "w.correction)"), "ShapeError", ["output size Ho = 6", "reaches past the padded input of 6"]),
    (("vnni.Requant(torch.full((4,), 2**40), torch.ones(4, dtype=torch.int64), torch.ones(4, dtype=torch.int64), "
      "0, -128, 127)"), "ConfigError", ["m (multiplier)"]),
    ("vnni.im2col(torch.zeros(1, 3, 5, 5, dtype=torch.int8), (3, 3), (1, 1), (1, 1), (1, 1), 0, (5, 5), 12)",
     "ConfigError", ["Kp = 12", "27..65536"]),
]


@needs_cext
@pytest.mark.parametrize("code,kind,words", _GUARD_CASES, ids=[f"case{i}" for i in range(len(_GUARD_CASES))])
def test_every_kernel_wrapper_checks_its_arguments_first(worker, code, kind, words):
    if "vnni." in code and not vnni.available():
        pytest.skip("needs the VNNI kernels")
    answer = worker.ask(op="exec", code="from lowbit.native import cext\nfrom lowbit.integer import vnni\n" + code)
    assert answer["outcome"] == "clear_error" and answer["type"] == kind, answer
    for w in words:
        assert w in answer["message"], (w, answer["message"])


@pytest.mark.skipif(not vnni.available(), reason="needs the VNNI kernels")
def test_plan_steps_are_checked_against_their_buffers(saved, calib):
    """A plan whose step would write past a buffer is refused when it is checked (before lowbit_run_plan)."""
    im = saved["cnn"][0]
    p = plan.Plan(im, (2, 1, 28, 28), 1, 1 << 25)
    b = planner.Builder(1 << 25)
    env = {im.input_name: planner.Value(planner.INPUT, (2, 1, 28, 28), torch.float32)}
    for node in im.nodes:
        env[node.output] = planner.HANDLERS[type(node.op.ir)](b, node.op, *(env[i] for i in node.inputs))
    out = env[im.output_name]
    args = (guard.Buf(torch.float32, 2 * 784), out.slot, guard.Buf(torch.float32, out.numel), 1)
    plan.check_steps(b.steps, b.buffers, *args)  # as built: fine
    slot = b.steps[1][1][1]  # the second step's output buffer
    b.buffers[slot] = b.buffers[slot][: b.buffers[slot].numel() // 2]
    with pytest.raises(ShapeError, match="holds .* elements; the call touches"):
        plan.check_steps(b.steps, b.buffers, *args)
    assert torch.equal(p.run(calib[:2]), im.run(calib[:2])[im.output_name])


def test_every_c_entry_point_and_plan_step_has_a_check():
    """Mechanical: each exported function of csrc/ is listed in guard.ENTRY_POINTS with an existing check, each
    plan step kind has one, and each op kind has a validator entry."""
    import importlib
    import re

    exported = set()
    for src in cext.SOURCES:
        exported |= set(re.findall(r"^(?:void|int|int64_t)\s+(lowbit_\w+)\s*\(", src.read_text(), re.MULTILINE))
    assert exported == set(guard.ENTRY_POINTS)
    for target in guard.ENTRY_POINTS.values():
        if target.startswith("lowbit."):
            module, name = target.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), name)), target
    assert set(plan.STEP_CHECKS) == set(planner.Kind)
    assert set(validate.CHECKS) == set(ops.RUNNERS)


# ---------------------------------------------------------------- the validator against reality


def test_propagated_shapes_equal_the_shapes_a_run_produces(saved, calib):
    """Shape propagation (validate.specs) is an oracle only if it agrees with what the ops compute."""
    models = [im for im, _ in saved.values()]
    torch.manual_seed(0)
    extra = nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(1, 8, 3, stride=2, dilation=2), nn.ReLU(),
                          nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 4, 10)).eval()
    models.append(to_integer(quantize(extra, [calib], PTQConfig()), (calib[:2],)))
    for im in models:
        env = im.run(calib[:3])
        specs = validate.specs(validate.views(im.nodes), im.input_name, validate.Spec(im.input_shape, torch.float32))
        assert set(specs) == set(env)
        for name, t in env.items():
            assert specs[name] == validate.Spec(tuple(t.shape[1:]), t.dtype), name


# ---------------------------------------------------------------- fuzzing model files


def _mutations(value):
    """Replacements for a JSON value: out of range, shortened, of another type; a few valid neighbours."""
    if isinstance(value, bool):
        return [not value, 0, "true", None]
    if isinstance(value, int):
        return [-1, -value, 0, value + 1, value - 1, 2**40, -(2**40), 2**63, str(value), value + 0.5, None, True,
                [value]]
    if isinstance(value, float):
        return [-value, 0.0, float("inf"), float("nan"), 1e300, 1e-300, str(value), None]
    if isinstance(value, str):
        return ["", "bogus", 1, None]
    if isinstance(value, list):
        short = value[:-1]
        return [short, [*value, value[-1] if value else 0], [], 7, None, [str(v) for v in value]]
    if isinstance(value, dict):
        return [{}, {k: v for k, v in list(value.items())[1:]}, None, 3]
    return [0, "x", [], {}]


@st.composite
def json_mutation(draw, meta: dict):
    """(description, edit) of one change to a model's JSON description."""
    where = draw(st.sampled_from(["attr", "attr", "attr", "field", "top", "drop_attr", "add_attr", "nodes"]))
    i = draw(st.integers(0, len(meta["nodes"]) - 1))
    node = meta["nodes"][i]
    if not isinstance(node, dict) or not isinstance(node.get("attrs"), dict):  # an earlier change broke it
        where = "top"
    if where in ("attr", "drop_attr") and node["attrs"]:
        key = draw(st.sampled_from(sorted(node["attrs"])))
        if where == "drop_attr":
            return f"node {i}: drop {key}", lambda m: m["nodes"][i]["attrs"].pop(key)
        new = draw(st.sampled_from(_mutations(node["attrs"][key])))
        return f"node {i}: {key} = {new!r}", lambda m: m["nodes"][i]["attrs"].__setitem__(key, new)
    if where == "add_attr":
        return f"node {i}: add attr", lambda m: m["nodes"][i]["attrs"].__setitem__("extra", 1)
    if where == "field":
        key = draw(st.sampled_from([k for k in ("kind", "inputs", "output", "grid", "tensors", "source") if k in node]))
        new = draw(st.sampled_from(_mutations(node[key]) + (["linear", "conv2d", "pad"] if key == "kind" else [])))
        return f"node {i}: {key} = {new!r}", lambda m: m["nodes"][i].__setitem__(key, new)
    if where == "nodes":
        j = draw(st.integers(0, len(meta["nodes"]) - 1))
        return f"swap nodes {i} and {j}", lambda m: m["nodes"].__setitem__(
            slice(None), [m["nodes"][k if k not in (i, j) else (j if k == i else i)] for k in range(len(m["nodes"]))])
    key = draw(st.sampled_from(["input_shape", "input_dtype", "input", "output", "version", "nodes"]))
    new = draw(st.sampled_from(_mutations(meta[key]) + (["float64", "int8"] if key == "input_dtype" else [])))
    return f"{key} = {new!r:.60}", lambda m: m.__setitem__(key, new)


@st.composite
def tensor_mutation(draw, tensors: dict):
    """(description, edit) of one crafted change to a tensor: an extreme value, another dtype, a shorter one."""
    name = draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    how = draw(st.sampled_from(["extreme", "extreme", "dtype", "shorter", "longer"]))
    if how == "extreme" and t.numel():
        at = draw(st.integers(0, t.numel() - 1))
        info = torch.finfo(t.dtype) if t.is_floating_point() else torch.iinfo(t.dtype)
        value = draw(st.sampled_from([info.min, info.max, 0, -1, 1]))

        def edit(ts, name=name, at=at, value=value):
            ts[name] = ts[name].clone()
            ts[name].view(-1)[at] = value
        return f"{name}[{at}] = {value}", edit
    if how == "dtype":
        dtype = draw(st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.uint8]))
        return f"{name} as {dtype}", lambda ts: ts.__setitem__(name, ts[name].to(dtype))
    if how == "longer":
        return f"{name} longer", lambda ts: ts.__setitem__(name, torch.cat([ts[name].reshape(-1)] * 2))
    return f"{name} shorter", lambda ts: ts.__setitem__(name, ts[name].reshape(-1)[:-1].clone())


_OK_FILE_OUTCOMES = ("clear_error", "harmless", "valid")


def _original(saved, name):
    path = saved[name][1]
    tensors, metadata = load_tensors(path)
    return path, tensors, json.loads(metadata["lowbit"])


@needs_cext
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(["cnn", "resnet", "mlp"]))
def test_fuzz_crafted_json_attributes(worker, saved, tmp_path_factory, data, name):
    """A file whose description was changed (and its checksum rewritten, as a crafter would) either fails to
    load with a CheckpointError, or runs: to the original outputs, or to other outputs that the loaded model's
    own PyTorch-reference ops confirm (a different but valid model). Never a crash or an unclear error."""
    _, tensors, meta = _original(saved, name)
    meta = copy.deepcopy(meta)
    what = []
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if not isinstance(meta.get("nodes"), list) or not meta["nodes"]:
            break  # the node list itself was replaced: nothing left to draw from
        step, edit = data.draw(json_mutation(meta))
        try:
            edit(meta)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier change removed what this one edits
        what.append(step)
    out = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    save_tensors(out, tensors, {"lowbit": json.dumps(meta)}, checksum=True)
    answer = worker.ask(op="load", path=str(out), model=name)
    event(f"{answer['outcome']} {answer.get('type', '')}")
    assert answer["outcome"] in _OK_FILE_OUTCOMES, (what, answer)
    if answer["outcome"] == "clear_error" and answer["type"] != "CheckpointError":
        assert answer["type"] in ("ShapeError", "DataError"), (what, answer)  # refused at the call


@needs_cext
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(["cnn", "resnet", "mlp"]))
def test_fuzz_crafted_tensors(worker, saved, tmp_path_factory, data, name):
    _, tensors, meta = _original(saved, name)
    what, edit = data.draw(tensor_mutation(tensors))
    tensors = dict(tensors)
    edit(tensors)
    out = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    save_tensors(out, tensors, {"lowbit": json.dumps(meta)}, checksum=True)
    answer = worker.ask(op="load", path=str(out), model=name)
    event(f"{answer['outcome']} {answer.get('type', '')}")
    assert answer["outcome"] in _OK_FILE_OUTCOMES, (what, answer)


@needs_cext
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["cnn", "resnet", "mlp"]))
def test_fuzz_random_bytes_of_the_file(worker, saved, tmp_path_factory, data, name):
    """Bytes changed anywhere (header or tensor data, the checksum left as it was): a CheckpointError, or (a
    header byte that changes nothing, e.g. padding space to tab) the original outputs."""
    raw = bytearray(saved[name][1].read_bytes())
    n = int.from_bytes(raw[:8], "little")
    region = data.draw(st.sampled_from(["length", "header", "data"]))
    lo, hi = {"length": (0, 7), "header": (8, 8 + n - 1), "data": (8 + n, len(raw) - 1)}[region]
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(lo, hi))
        raw[at] ^= data.draw(st.integers(1, 255))
    out = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    out.write_bytes(bytes(raw))
    answer = worker.ask(op="load", path=str(out), model=name)
    event(f"{answer['outcome']} {answer.get('type', '')}")
    assert answer["outcome"] in ("clear_error", "harmless"), answer
    if answer["outcome"] == "clear_error":
        assert answer["type"] == "CheckpointError", answer


def test_worker_reports_a_crash_as_a_failure(tmp_path):
    """The harness itself: a child that dies (here of a SIGSEGV) fails the test that asked, and the next
    request gets a fresh child."""
    w = Worker(tmp_path, bare=True)
    w.start()
    with pytest.raises(pytest.fail.Exception, match="worker process died"):
        w.ask(op="exec", code="import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert w.proc is None
    answer = w.ask(op="exec", code="RESULT = 1 + 1")  # a fresh worker
    assert answer == {"outcome": "ok", "result": "2"}
    w.close()

