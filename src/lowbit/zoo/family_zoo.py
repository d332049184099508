"""Shipped networks of three method families: BitSplit-Net W1A2, a TrueNorth-style Eedn net, and the
stochastic-trained binary CNN that stochastic ensembles draw their members from.

As :mod:`lowbit.zoo.binary_zoo`: an ``.npz`` read without pickle, its sha256 checked against the JSON beside it
(:mod:`lowbit.zoo.weights_io`), which records the recipe and the test accuracy of the deployed model (on the 10000
Fashion-MNIST test images, and on the first 1000 for the tests). Each loader rebuilds the model and loads it bit
for bit; only what the deployed arithmetic reads is stored, as codes:

* ``bitsplit-cnn-w1a2`` (:class:`lowbit.nn.bitsplit.BitSplitCNN`; deployed by :func:`lowbit.nn.bitsplit.deploy`):
  the first layer's int8 codes (its scale is not used: BatchNorm follows), the binary convs' signs as int8 (+-1),
  the classifier's int8 codes and per-row scale ``s`` (``classifier.scale``), BatchNorms and bias as float32.
  Loading sets the classifier weight to ``codes * s`` with the largest entry of each row chosen so that
  ``max|w| / 127`` gives ``s`` back exactly (:func:`_weight_with_scale`), so ``int8_codes`` returns the same codes
  and scale;
* ``eedn-cnn`` (:class:`lowbit.snn.eedn.EednNet`; deployed by :func:`lowbit.snn.eedn.fold`): the trinary synapses
  ``eedn_trinary(h)`` as int8 in {-1, 0, +1} in place of the hidden weights ``h`` (``eedn_trinary`` of a code is
  the code), BatchNorms, the float transduction conv and the readout temperature as float32;
* ``binary-cnn-w1a1s``: :func:`lowbit.zoo.binary_zoo.pretrained_binary` (latent weights kept);
  :func:`stochastic_ensemble` draws its members.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lowbit.errors import CheckpointError
from lowbit.zoo.weights_io import load_weights, load_weights_and_extras, read_meta, save_state

WEIGHTS = Path(__file__).parent / "weights"
BITSPLIT, EEDN, STOCHASTIC = "bitsplit-cnn-w1a2", "eedn-cnn", "binary-cnn-w1a1s"
KEYS = (BITSPLIT, EEDN, STOCHASTIC)
ENSEMBLE_MEMBERS, ENSEMBLE_SEED = 16, 0  # the shipped ensemble: 16 members, generator seed 0, float draws


def weights_path(key: str) -> Path:
    if key not in KEYS:
        raise CheckpointError(f"no shipped family model {key!r}; known: {list(KEYS)}")
    return WEIGHTS / f"{key}.npz"


def recorded(key: str, field: str = "test_accuracy") -> float:
    """A recorded accuracy of ``key`` (a fraction): ``test_accuracy`` (10000 images) or ``subset_accuracy``
    (the first ``subset_images`` test images)."""
    return float(read_meta(weights_path(key))[field])


def recorded_list(key: str, field: str) -> list[float]:
    """A recorded list of accuracies of ``key`` (e.g. ``member_accuracy``: each ensemble member's, in draw order)."""
    values = read_meta(weights_path(key)).get(field)
    if not isinstance(values, list) or not values:
        raise CheckpointError(f"{weights_path(key).with_suffix('.json')} has no list '{field}'")
    return [float(v) for v in values]


# ---------------------------------------------------------------- BitSplit-Net


def _weight_with_scale(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 rows ``w`` with ``round(w / s) = codes`` and ``max|w| / 127 = s`` exactly in float32 (the arithmetic
    of :func:`lowbit.nn.bitsplit.int8_codes`): ``codes * s``, each row's largest entries (code +-127) moved to the
    float32 ``m`` nearest ``127 s`` with ``m / 127 == s``."""
    w = codes.float() * scale[:, None]
    for r in range(codes.shape[0]):
        s = scale[r : r + 1]
        m = (s * 127.0).clone()
        for _ in range(8):  # a few ulps either side of 127 s
            if torch.equal(m / 127.0, s):
                break
            m = torch.nextafter(m, torch.full_like(m, torch.inf if float(m / 127.0) < float(s) else 0.0))
        else:
            raise CheckpointError(f"bitsplit classifier row {r}: no float32 weight gives the stored scale {float(s)!r}")
        top = codes[r].abs() == 127
        if not top.any():
            raise CheckpointError(f"bitsplit classifier row {r} has no code +-127: the file was not written by lowbit")
        w[r, top] = m * codes[r, top].sign().float()
    return w


@torch.no_grad()
def save_bitsplit(model, meta: dict, key: str = BITSPLIT) -> Path:
    """Write an eval-mode :class:`~lowbit.nn.bitsplit.BitSplitCNN` as ``key`` (codes, module docstring)."""
    from lowbit.nn.bitsplit import int8_codes

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state["conv1.weight"] = int8_codes(model.conv1.weight.detach().cpu())[0].to(torch.int8)
    for k, path in enumerate(model.paths):
        for name in ("conv2", "conv3"):
            w = getattr(path, name).weight.detach().cpu()
            state[f"paths.{k}.{name}.weight"] = torch.where(w >= 0, 1, -1).to(torch.int8)
    codes, scale = int8_codes(model.classifier.weight.detach().cpu())
    state["classifier.weight"], state["classifier.scale"] = codes.to(torch.int8), scale.float()
    meta = {**meta, "bits": model.bits, "channels": model.channels,
            "stored": "first layer and classifier as int8 codes (+ the classifier's per-row scale), binary convs as "
                      "int8 signs, BatchNorms and bias float32"}
    return save_state(state, WEIGHTS / f"{key}.npz", meta, compressed=True)


@torch.no_grad()
def pretrained_bitsplit(key: str = BITSPLIT):
    """The shipped BitSplit-Net, in eval mode (its arithmetic is the deployed one: ``lowbit.nn.bitsplit.deploy``)."""
    from lowbit.nn.bitsplit import BitSplitCNN

    path = weights_path(key)
    meta = read_meta(path)
    model = BitSplitCNN(bits=int(meta["bits"]), channels=int(meta["channels"]))
    extras = load_weights_and_extras(model, path, {"classifier.scale": (model.classifier.out_features,)})
    w = model.classifier.weight
    if not torch.equal(w, w.round()) or w.abs().max() > 127:
        raise CheckpointError(f"{path}: classifier.weight holds values other than int8 codes")
    w.copy_(_weight_with_scale(w, extras["classifier.scale"]))
    return model.eval()


# ---------------------------------------------------------------- Eedn


@torch.no_grad()
def save_eedn(net, meta: dict, key: str = EEDN) -> Path:
    """Write an eval-mode TrueNorth :class:`~lowbit.snn.eedn.EednNet` as ``key`` (synapse codes, docstring)."""
    from lowbit.snn.eedn import TrinaryConv2d, spec_dict

    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    for name, m in net.named_modules():
        if isinstance(m, TrinaryConv2d):
            state[f"{name}.weight"] = m.codes().cpu()
    meta = {**meta, "spec": spec_dict(net.spec),
            "stored": "trinary synapses as int8 codes in place of the hidden weights; BatchNorms, the transduction "
                      "conv and the readout temperature float32"}
    return save_state(state, WEIGHTS / f"{key}.npz", meta, compressed=True)


def pretrained_eedn(key: str = EEDN):
    """The shipped Eedn net (BatchNorm form, eval mode); ``lowbit.snn.eedn.fold`` gives its integer-threshold net."""
    from lowbit.snn.eedn import EednNet, EednSpec

    path = weights_path(key)
    try:
        spec = EednSpec(**read_meta(path)["spec"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path.with_suffix('.json')}: no valid Eedn 'spec' ({exc})") from exc
    net = EednNet(spec)
    load_weights(net, path)
    return net.eval()


# ---------------------------------------------------------------- stochastic ensemble


def pretrained_stochastic(key: str = STOCHASTIC):
    """The converted stochastic-trained W1A1 CNN (latent weights kept; itself the deterministic ``sign(w)`` net)."""
    from lowbit.zoo.binary_zoo import pretrained_binary

    weights_path(key)
    return pretrained_binary(key)


def stochastic_ensemble(model=None, members: int = ENSEMBLE_MEMBERS, seed: int = ENSEMBLE_SEED):
    """The shipped ensemble: ``members`` bitwise networks drawn from :func:`pretrained_stochastic` (float draws)."""
    from lowbit.nn.ensemble import StochasticEnsemble

    return StochasticEnsemble(model if model is not None else pretrained_stochastic(), members, seed=seed)


__all__ = ["BITSPLIT", "EEDN", "ENSEMBLE_MEMBERS", "ENSEMBLE_SEED", "KEYS", "STOCHASTIC", "pretrained_bitsplit",
           "pretrained_eedn", "pretrained_stochastic", "recorded", "recorded_list", "save_bitsplit", "save_eedn", "stochastic_ensemble",
           "weights_path"]
