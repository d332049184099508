"""The real pretrained network of the PTQ issue: EfficientNet-Lite0 and the photo crops."""

import pytest
import torch

from lowbit.data.photos import photo_crops
from lowbit.errors import DataError
from lowbit.nn import UnifiedConv, unified_modules
from lowbit.prepared import record_of
from lowbit.ptq import PTQConfig, prepare, quantizers_off
from lowbit.zoo.efficientnet import efficientnet_lite0, with_plain_convs


@pytest.fixture(scope="module")
def model():
    return with_plain_convs(efficientnet_lite0()).eval()


def test_photo_crops_are_deterministic_prefix_stable_and_split():
    a = photo_crops(6, "calib", size=64)
    assert a.shape == (6, 3, 64, 64) and float(a.min()) >= -1 and float(a.max()) <= 1
    assert torch.equal(photo_crops(3, "calib", size=64), a[:3])
    assert not torch.equal(photo_crops(6, "eval", size=64), a)
    with pytest.raises(DataError, match="unknown split"):
        photo_crops(2, "train")


def test_pretrained_weights_recognise_the_cat(model):
    import numpy as np
    import skimage.data

    img = torch.from_numpy(np.asarray(skimage.data.chelsea())).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True) / 127.5 - 1
    with torch.no_grad():
        assert int(model(x).argmax()) == 285  # Egyptian cat


def test_fuses_into_unified_modules_with_one_input_quantizer(model):
    x = photo_crops(2, "calib")
    prepared = prepare(model, PTQConfig(), (x[:1],))
    mods = dict(unified_modules(prepared))
    assert len(mods) == 50 and record_of(prepared).plan.float_ops == []
    assert len(record_of(prepared).plan.input_quantizers) == 1
    depthwise = [m for m in mods.values() if isinstance(m, UnifiedConv) and m.groups > 1]
    assert len(depthwise) == 16 and all(isinstance(m.act, torch.nn.Hardtanh) for m in depthwise)
    assert sum(m.has_residual for m in mods.values()) == 9
    (u_ops, _), (f_ops, _) = record_of(prepared).quant_ops.unfused, record_of(prepared).quant_ops.fused
    assert f_ops < u_ops / 2
    with quantizers_off(prepared), torch.no_grad():
        assert torch.allclose(prepared(x), model(x), atol=1e-3)
