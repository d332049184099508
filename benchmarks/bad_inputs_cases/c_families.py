"""The bitwise method families: stochastic ensembles (sizes, comparator bits, stochastic weights on a format that
has no sign), BitSplit-Net (a width outside 1..8), TrueNorth-style Eedn nets (a group size whose filters cannot
fit a core's 128 inputs); one legitimate run of each checked against a reference."""

from __future__ import annotations

import torch

from bad_inputs_cases import Wrong, case, cli

CAT = "families"
QAT = ["qat", "--train-size", "128", "--batch-size", "64", "--epochs", "1", "--no-augment"]


def _w1a1_model():
    """A converted W1A1 BinaryMLP after one Adam epoch on 128 random images."""
    from lowbit.data import Split
    from lowbit.formats import Binary
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig, TrainConfig, convert_qat, prepare_qat, train
    from lowbit.spec import QuantSpec
    from lowbit.zoo.binary import BinaryMLP

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g)
    data = Split(x, (x[:, 0, 10:18, 10:18].mean(dim=(1, 2)) > 0).long())
    cfg = QATConfig(weight=QuantSpec(Binary(), PerChannel(0)), act=QuantSpec(Binary()), stochastic_weights=True)
    gm = prepare_qat(BinaryMLP(hidden=32, depth=2), cfg, data.x[:64])
    train(gm, data, TrainConfig(epochs=1, batch_size=64, optimizer="adam", augment=False), progress=False)
    return convert_qat(gm)


# ---------------------------------------------------------------- stochastic ensembles


@case(CAT, "error")
def ensemble_of_zero_members():
    from lowbit.nn.ensemble import StochasticEnsemble
    return StochasticEnsemble(_w1a1_model(), members=0)


@case(CAT, "error")
def ensemble_of_negative_members():
    from lowbit.nn.ensemble import StochasticEnsemble
    return StochasticEnsemble(_w1a1_model(), members=-4)


@case(CAT, "error")
def ensemble_comparator_of_zero_bits():
    from lowbit.nn.ensemble import StochasticEnsemble
    return StochasticEnsemble(_w1a1_model(), members=2, rng_bits=0)


@case(CAT, "error")
def ensemble_of_a_model_without_binary_weights():
    from lowbit import zoo
    from lowbit.nn.ensemble import StochasticEnsemble
    return StochasticEnsemble(zoo.pretrained("mlp"), members=2)


@case(CAT, "error")
def stochastic_weights_on_2bit_weights():
    from lowbit.formats import IntFormat
    from lowbit.granularity import PerChannel
    from lowbit.qat import QATConfig
    from lowbit.spec import QuantSpec
    return QATConfig(weight=QuantSpec(IntFormat(2), PerChannel(0)), act=QuantSpec(IntFormat(2, signed=False)),
                     stochastic_weights=True)


@case(CAT, "error")
def cli_stochastic_weights_without_binary_weights():
    return cli(*QAT, "--model", "binary-mlp", "--stochastic-weights", "--out", "out")


@case(CAT, "valid")
def ensemble_members_lower_exactly_and_average():
    from lowbit.integer import to_integer
    from lowbit.nn.ensemble import StochasticEnsemble
    model = _w1a1_model()
    ens = StochasticEnsemble(model, members=3, seed=1, rng_bits=4)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), dim=1) for m in ens.members]).mean(0)
        if not torch.allclose(ens(x), mean):
            raise Wrong("the ensemble's posterior is not the mean of its members' softmax")
        if not torch.equal(to_integer(ens.members[2], (x[:1],))(x), ens.members[2](x)):
            raise Wrong("a member's integer model differs from its simulation")
    return "posterior = mean member softmax; member 2's integer model equals its simulation"


# ---------------------------------------------------------------- BitSplit-Net


@case(CAT, "error")
def bitsplit_width_9():
    from lowbit.nn.bitsplit import BitSplitCNN
    return BitSplitCNN(bits=9, channels=8)


@case(CAT, "error")
def bitsplit_width_0():
    from lowbit.nn.bitsplit import BitSplitCNN
    return BitSplitCNN(bits=0, channels=8)


@case(CAT, "valid")
def bitsplit_deployed_equals_eval_model():
    from lowbit.nn.bitsplit import BitSplitCNN, deploy
    torch.manual_seed(0)
    net = BitSplitCNN(bits=2, channels=8).eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = net(x), deploy(net)(x)
    if not torch.equal(ref, out):
        raise Wrong(f"deployed logits differ: max |diff| {float((ref - out).abs().max()):.4g}")
    return "deployed BitSplit logits equal the eval-mode model's on 8 images"


# ---------------------------------------------------------------- TrueNorth-style Eedn nets


@case(CAT, "error")
def eedn_group_size_16():
    from lowbit.snn.eedn import EednSpec
    return EednSpec(group_size=16)


@case(CAT, "error")
def eedn_group_size_3():
    from lowbit.snn.eedn import EednSpec
    return EednSpec(group_size=3)


@case(CAT, "valid")
def eedn_net_fits_truenorth_cores():
    from lowbit.snn.eedn import EednNet, EednSpec, core_rows, cores
    net = EednNet(EednSpec(group_size=8, population=4))
    rows = core_rows(net)
    if not all(r.fan_in <= 128 and r.fits for r in rows):
        raise Wrong(f"a layer breaks the 128-input core limit: {[(r.name, r.fan_in) for r in rows]}")
    n = cores(net)
    if n != sum(r.cores for r in rows):
        raise Wrong(f"cores() = {n}, the per-layer rows sum to {sum(r.cores for r in rows)}")
    return f"every on-core layer fan-in <= 128; {n} cores"
