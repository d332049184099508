"""Data: calibration, example and training inputs with NaN/inf, empty, wrong shape/dtype/rank, mismatched
batches, labels out of range; data-set loaders on missing or corrupt files; the functional ops."""

from __future__ import annotations

import torch

from bad_inputs_cases import Wrong, add, case, fixtures, workdir

CAT = "data"


def _quantize(model_name: str, batches, **kw):
    from lowbit.ptq import PTQConfig, quantize
    return quantize(fixtures.model(model_name), batches, PTQConfig(**kw))


def _close_to_float(q, model_name: str, x: torch.Tensor, tol: float = 0.2) -> str:
    """The quantized model must stay near the float model on real test images (a wrong calibration does not)."""
    with torch.no_grad():
        ref, out = fixtures.model(model_name)(x), q(x)
    err = float((out - ref).norm() / ref.norm())
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    if not err < tol or agree < 0.9:
        raise Wrong(f"quantized output far from float: relative error {err:.3f}, argmax agreement {agree:.2f}")
    return f"relative error {err:.3f} to float"


def _nan_batch():
    x = fixtures.calib(8).clone()
    x[3, 0, 5, 5] = float("nan")
    return x


def _inf_batch(sign=1.0):
    x = fixtures.calib(8).clone()
    x[0, 0, 0, 0] = sign * float("inf")
    return x


for m in ("mlp", "cnn", "resnet"):
    add(CAT, f"calib_nan_{m}", "error", lambda m=m: _quantize(m, [_nan_batch()]))
add(CAT, "calib_inf", "error", lambda: _quantize("cnn", [_inf_batch()]))
add(CAT, "calib_neg_inf", "error", lambda: _quantize("cnn", [_inf_batch(-1.0)]))
add(CAT, "calib_nan_in_second_batch", "error", lambda: _quantize("cnn", [fixtures.calib(8), _nan_batch()]))
add(CAT, "calib_empty_tensor", "error", lambda: _quantize("cnn", [torch.empty(0, 1, 28, 28)]))
add(CAT, "calib_empty_list", "error", lambda: _quantize("cnn", []))
add(CAT, "calib_None", "error", lambda: _quantize("cnn", None))
add(CAT, "calib_list_of_strings", "error", lambda: _quantize("cnn", ["a", "b"]))
add(CAT, "calib_wrong_channels", "error", lambda: _quantize("cnn", [torch.randn(4, 3, 28, 28)]))
add(CAT, "calib_wrong_size_mlp", "error", lambda: _quantize("mlp", [torch.randn(4, 1, 32, 32)]))
add(CAT, "calib_wrong_size_cnn", "error", lambda: _quantize("cnn", [torch.randn(4, 1, 32, 32)]))
add(CAT, "calib_rank2", "error", lambda: _quantize("cnn", [torch.randn(28, 28)]))
add(CAT, "calib_rank5", "error", lambda: _quantize("cnn", [torch.randn(2, 1, 1, 28, 28)]))
add(CAT, "calib_second_batch_other_shape", "error",
    lambda: _quantize("cnn", [fixtures.calib(8), torch.randn(8, 1, 14, 14)]))
add(CAT, "calib_second_batch_other_channels", "error",
    lambda: _quantize("resnet", [fixtures.calib(8), torch.randn(8, 3, 28, 28)]))
add(CAT, "calib_second_batch_empty", "error", lambda: _quantize("cnn", [fixtures.calib(8), torch.empty(0, 1, 28, 28)]))
add(CAT, "calib_second_batch_not_tensor", "error", lambda: _quantize("cnn", [fixtures.calib(8), [1, 2, 3]]))
add(CAT, "calib_bool_tensor", "error", lambda: _quantize("cnn", [torch.ones(4, 1, 28, 28, dtype=torch.bool)]))
add(CAT, "calib_int64_tensor", "error", lambda: _quantize("cnn", [torch.ones(4, 1, 28, 28, dtype=torch.int64)]))
add(CAT, "calib_complex_tensor", "error", lambda: _quantize("mlp", [torch.randn(4, 1, 28, 28, dtype=torch.cfloat)]))


@case(CAT, "any")
def calib_single_tensor_not_a_list():
    """A (32, 1, 28, 28) tensor passed where a list of batches is expected iterates over 32 unbatched images."""
    return _close_to_float(_quantize("cnn", fixtures.calib(32)), "cnn", fixtures.xs(64))


@case(CAT, "any")
def calib_unbatched_image_cnn():
    return _close_to_float(_quantize("cnn", [fixtures.calib(1)[0]]), "cnn", fixtures.xs(64))


@case(CAT, "any")
def calib_uint8_images():
    x = (fixtures.calib(8) * 80 + 100).clamp(0, 255).to(torch.uint8)
    return _close_to_float(_quantize("mlp", [x]), "mlp", fixtures.xs(64))


@case(CAT, "any")
def calib_float64_batch():
    return _close_to_float(_quantize("cnn", [fixtures.calib(16).double()]), "cnn", fixtures.xs(64))


@case(CAT, "any")
def calib_float16_batch():
    return _close_to_float(_quantize("mlp", [fixtures.calib(16).half()]), "mlp", fixtures.xs(64))


@case(CAT, "valid")
def calib_batches_of_different_sizes():
    return _close_to_float(_quantize("cnn", [fixtures.calib(7), fixtures.calib(32)[7:], fixtures.calib(1)]), "cnn",
                           fixtures.xs(64))


@case(CAT, "valid")
def calib_xy_pairs_and_generator():
    x, y = fixtures.calib(32), fixtures.train().y[:32]
    return _close_to_float(_quantize("resnet", ((x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8))), "resnet",
                           fixtures.xs(64))


@case(CAT, "valid")
def calib_non_contiguous_and_channels_last():
    x = fixtures.calib(16)
    nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    return _close_to_float(_quantize("cnn", [nc, x.to(memory_format=torch.channels_last)]), "cnn", fixtures.xs(64))


@case(CAT, "valid")
def calib_requires_grad():
    return _close_to_float(_quantize("mlp", [fixtures.calib(16).requires_grad_()]), "mlp", fixtures.xs(64))


@case(CAT, "error")
def prepare_example_inputs_not_tuple():
    from lowbit.ptq import prepare
    prepare(fixtures.model("cnn"), example_inputs=fixtures.calib(1))


@case(CAT, "error")
def prepare_example_inputs_nan():
    from lowbit.ptq import prepare
    prepare(fixtures.model("cnn"), example_inputs=(_nan_batch()[3:4],))


@case(CAT, "error")
def prepare_example_inputs_wrong_shape():
    from lowbit.ptq import prepare
    prepare(fixtures.model("mlp"), example_inputs=(torch.randn(1, 1, 10, 10),))


@case(CAT, "error")
def calibrate_on_unprepared_model():
    from lowbit.ptq import calibrate
    calibrate(fixtures.model("cnn"), [fixtures.calib(8)])


@case(CAT, "error")
def correct_bias_without_data():
    from lowbit.ptq import PTQConfig, calibrate, convert, correct_bias, prepare
    p = prepare(fixtures.model("cnn"), PTQConfig(), (fixtures.calib(1),))
    calibrate(p, [fixtures.calib(8)], progress=False)
    convert(p)
    correct_bias(p, None)


@case(CAT, "error")
def convert_before_calibrate():
    from lowbit.integer import to_integer
    from lowbit.ptq import PTQConfig, convert, prepare
    p = prepare(fixtures.model("cnn"), PTQConfig(), (fixtures.calib(1),))
    convert(p)
    to_integer(p, (fixtures.calib(2),))(fixtures.xs(4))


@case(CAT, "error")
def prepare_qat_calibration_nan():
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    prepare_qat(fixtures.model("mlp"), QATConfig(int_weight(4), uint_act(4)), _nan_batch())


@case(CAT, "error")
def prepare_qat_calibration_empty():
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    prepare_qat(fixtures.model("mlp"), QATConfig(int_weight(4), uint_act(4)), torch.empty(0, 1, 28, 28))


@case(CAT, "error")
def prepare_qat_calibration_wrong_shape():
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    prepare_qat(fixtures.model("cnn"), QATConfig(int_weight(4), uint_act(4)), torch.randn(8, 3, 28, 28))


@case(CAT, "error")
def prepare_qat_calibration_list():
    from lowbit.ptq import int_weight, uint_act
    from lowbit.qat import QATConfig, prepare_qat
    prepare_qat(fixtures.model("cnn"), QATConfig(int_weight(4), uint_act(4)), [fixtures.calib(8)])


# ----------------------------------------------------------------------------- data sets


@case(CAT, "error")
def Split_mismatched_lengths():
    from lowbit.data import Split
    Split(torch.randn(10, 1, 28, 28), torch.zeros(9, dtype=torch.int64))


@case(CAT, "error")
def Split_take_negative():
    return len(fixtures.test().take(-5))


@case(CAT, "error")
def fashion_mnist_unknown_split():
    from lowbit.data import fashion_mnist
    fashion_mnist("validation")


@case(CAT, "error")
def fashion_mnist_missing_root():
    from lowbit.data import fashion_mnist
    fashion_mnist("test", root="/nonexistent/fashion")


@case(CAT, "error")
def fashion_mnist_root_is_a_file():
    from lowbit.data import fashion_mnist
    p = workdir() / "afile"
    p.write_text("x")
    fashion_mnist("test", root=p)


def _fake_root(images: bytes, labels: bytes | None = None):
    root = workdir() / "fm"
    root.mkdir(exist_ok=True)
    (root / "t10k-images-idx3-ubyte").write_bytes(images)
    src = fixtures.shared_dir()  # labels: a valid file unless given
    import gzip

    from lowbit.data import FASHION_MNIST_DIR
    lab = FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(lab.read_bytes()) if lab.exists() else (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte").read_bytes()
    (root / "t10k-labels-idx1-ubyte").write_bytes(labels if labels is not None else raw)
    del src
    return root


def _images_raw() -> bytes:
    import gzip

    from lowbit.data import FASHION_MNIST_DIR
    p = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    return gzip.decompress(p.read_bytes()) if p.exists() else (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte").read_bytes()


@case(CAT, "error")
def fashion_mnist_garbage_idx():
    from lowbit.data import fashion_mnist
    fashion_mnist("test", root=_fake_root(b"garbage" * 10))


@case(CAT, "error")
def fashion_mnist_truncated_idx():
    from lowbit.data import fashion_mnist
    fashion_mnist("test", root=_fake_root(_images_raw()[:100000]))


@case(CAT, "error")
def fashion_mnist_empty_idx():
    from lowbit.data import fashion_mnist
    fashion_mnist("test", root=_fake_root(b""))


@case(CAT, "error")
def fashion_mnist_labels_count_differs():
    import struct

    from lowbit.data import fashion_mnist
    labels = struct.pack(">HBBI", 0, 8, 1, 5000) + bytes(5000)
    fashion_mnist("test", root=_fake_root(_images_raw(), labels))


@case(CAT, "error")
def fashion_mnist_images_wrong_rank():
    """An idx file that declares 1 dimension (labels) given as the images."""
    import struct

    from lowbit.data import fashion_mnist
    fashion_mnist("test", root=_fake_root(struct.pack(">HBBI", 0, 8, 1, 10000) + bytes(10000)))


@case(CAT, "error")
def fashion_mnist_labels_out_of_range():
    import struct

    from lowbit.data import fashion_mnist
    labels = struct.pack(">HBBI", 0, 8, 1, 10000) + bytes([200]) * 10000
    fashion_mnist("test", root=_fake_root(_images_raw(), labels))


@case(CAT, "error")
def fashion_mnist_val_size_negative():
    from lowbit.data import fashion_mnist
    return len(fashion_mnist("val", val_size=-100))


@case(CAT, "error")
def fashion_mnist_val_size_too_large():
    from lowbit.data import fashion_mnist
    return len(fashion_mnist("train", val_size=70000))


@case(CAT, "error")
def load_unknown_dataset():
    from lowbit.data import load
    load("cifar10")


# ----------------------------------------------------------------------------- functional ops and observers


@case(CAT, "error")
def fake_quant_zero_scale():
    from lowbit.formats import IntFormat
    from lowbit.functional import fake_quant_affine
    fake_quant_affine(torch.randn(10), torch.tensor(0.0), torch.tensor(0), IntFormat(8))


@case(CAT, "error")
def fake_quant_nan_scale():
    from lowbit.formats import IntFormat
    from lowbit.functional import fake_quant_affine
    fake_quant_affine(torch.randn(10), torch.tensor(float("nan")), torch.tensor(0), IntFormat(8))


@case(CAT, "error")
def fake_quant_nan_input():
    from lowbit.formats import IntFormat
    from lowbit.functional import fake_quant_affine
    x = torch.randn(10)
    x[2] = float("nan")
    return fake_quant_affine(x, torch.tensor(0.1), torch.tensor(0), IntFormat(8))


@case(CAT, "error")
def qparams_from_range_min_above_max():
    from lowbit.formats import IntFormat
    from lowbit.functional import qparams_from_range
    return qparams_from_range(torch.tensor(1.0), torch.tensor(-1.0), IntFormat(8), symmetric=False)


@case(CAT, "error")
def qparams_from_range_nan():
    from lowbit.formats import IntFormat
    from lowbit.functional import qparams_from_range
    return qparams_from_range(torch.tensor(float("nan")), torch.tensor(1.0), IntFormat(8))


@case(CAT, "error")
def ternarize_empty():
    from lowbit.functional import ternarize
    ternarize(torch.empty(0, 3))


@case(CAT, "error")
def ternarize_nan():
    from lowbit.functional import ternarize
    w = torch.randn(4, 4)
    w[0, 0] = float("nan")
    return ternarize(w)


@case(CAT, "error")
def lsq_quantize_zero_step():
    from lowbit.functional import lsq_quantize
    return lsq_quantize(torch.randn(10), torch.tensor(0.0), 8, 7)


@case(CAT, "error")
def observer_nan_input():
    from lowbit.granularity import PerTensor
    from lowbit.observers import MinMaxObserver
    x = torch.randn(10)
    x[0] = float("nan")
    MinMaxObserver(PerTensor())(x)


@case(CAT, "error")
def observer_qparams_without_data():
    from lowbit.formats import IntFormat
    from lowbit.granularity import PerTensor
    from lowbit.observers import MinMaxObserver
    MinMaxObserver(PerTensor()).qparams(IntFormat(8))


@case(CAT, "error")
def observer_channel_count_changes():
    from lowbit.granularity import PerChannel
    from lowbit.observers import MinMaxObserver
    o = MinMaxObserver(PerChannel(1))
    o(torch.randn(4, 3, 5))
    o(torch.randn(4, 5, 5))
