"""Spiking networks (issue "Spiking networks"): zero or negative time steps, threshold percentiles outside
(0, 100], layers the converter cannot map (named), inputs of the wrong shape for the coding, bad neuron specs,
empty or NaN calibration, running a converted net as a plain module, and the ``lowbit snn convert`` flags;
legitimate conversions checked against a reference."""

from __future__ import annotations

import torch
from torch import nn

from bad_inputs_cases import Wrong, add, case, cli

CAT = "snn"


class _Small(nn.Module):
    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = act or nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.act(self.conv(x))))


def _calib() -> list[torch.Tensor]:
    return [torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))]


def _net(**kw):
    from lowbit import snn
    return snn.convert(_Small().eval(), _calib(), **kw)


# ---------------------------------------------------------------- time steps, percentiles, neuron specs

for _t in (0, -1, 2.5, "8", [4, 0], [], None):
    add(CAT, f"time_steps_{_t!r}", "error", lambda t=_t: __import__("lowbit.snn", fromlist=["run"]).run(
        _net(), torch.zeros(2, 1, 8, 8), t))

for _p in (0, -5, 100.01, 250, float("nan"), float("inf")):
    add(CAT, f"percentile_{_p}", "error", lambda p=_p: __import__("lowbit.snn", fromlist=["Norm"]).Norm(p))

_SPECS = {"threshold_zero": {"threshold": 0.0}, "threshold_negative": {"threshold": -1.0},
          "leak_zero": {"leak": 0.0}, "leak_above_one": {"leak": 1.5}, "max_spikes_binary": {"max_spikes": 4},
          "reset_string": {"reset": "subtract"}, "spikes_string": {"spikes": "ternary"},
          "initial_potential_one": {"initial_potential": 1.0}, "negative_threshold_zero": {"negative_threshold": 0.0},
          "surrogate_string": {"surrogate": "triangle"}}
for _name, _kw in _SPECS.items():
    add(CAT, f"neuron_spec_{_name}", "error",
        lambda kw=_kw: __import__("lowbit.snn", fromlist=["NeuronSpec"]).NeuronSpec(**kw))


@case(CAT, "error")
def augmented_max_spikes_zero():
    from lowbit.snn import NeuronSpec, Spikes
    return NeuronSpec(spikes=Spikes.AUGMENTED, max_spikes=0)


# ---------------------------------------------------------------- models the converter cannot map


for _act in (nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.ReLU6(), nn.LeakyReLU(), nn.Softmax(dim=1)):
    add(CAT, f"unmappable_{type(_act).__name__}", "error",
        lambda a=_act: __import__("lowbit.snn", fromlist=["convert"]).convert(_Small(a).eval(), _calib()))


@case(CAT, "error")
def unmappable_lstm_named():
    from lowbit import snn

    class WithLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu, self.lstm = nn.Linear(8, 8), nn.ReLU(), nn.LSTM(8, 4)

        def forward(self, x):
            return self.lstm(self.relu(self.fc(x)))[0]

    try:
        snn.convert(WithLSTM(), [torch.randn(4, 3, 8)])
    except snn.ConversionError as exc:
        if "lstm" not in str(exc):
            raise Wrong(f"the error does not name the LSTM layer: {exc}") from None
        raise


@case(CAT, "error")
def no_relu_at_all():
    from lowbit import snn
    return snn.convert(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), _calib())


# ---------------------------------------------------------------- calibration and inputs


@case(CAT, "error")
def calibration_empty():
    from lowbit import snn
    return snn.convert(_Small().eval(), [])


@case(CAT, "error")
def calibration_nan():
    from lowbit import snn
    return snn.convert(_Small().eval(), [torch.full((4, 1, 8, 8), float("nan"))])


@case(CAT, "error")
def calibration_not_tensors():
    from lowbit import snn
    return snn.convert(_Small().eval(), [[1.0, 2.0]])


@case(CAT, "error")
def input_wrong_image_size():
    from lowbit import snn
    return snn.run(_net(), torch.zeros(2, 1, 9, 9), 4)


@case(CAT, "error")
def input_missing_batch_dim_rate_coding():
    from lowbit import snn
    return snn.run(_net(coding=snn.Coding.RATE), torch.zeros(1, 8, 8), 4)


@case(CAT, "error")
def input_not_a_tensor():
    from lowbit import snn
    return snn.run(_net(), [[0.0] * 8] * 8, 4)


@case(CAT, "error")
def spiking_net_called_like_a_module():
    return _net()(torch.zeros(2, 1, 8, 8))


@case(CAT, "error")
def run_a_plain_module():
    from lowbit import snn
    return snn.run(_Small(), torch.zeros(2, 1, 8, 8), 4)


@case(CAT, "error")
def sweep_labels_mismatch():
    from lowbit import snn
    return snn.sweep(_net(), torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), [2])


@case(CAT, "error")
def convert_with_string_norm():
    return _net(norm="max")


@case(CAT, "error")
def convert_with_string_neuron():
    return _net(neuron="if")


@case(CAT, "valid")
def conversion_reaches_the_ann():
    """Augmented neurons, max norm: after 64 steps the readout's argmax equals the ANN's on >= 95% of inputs."""
    from lowbit import snn
    torch.manual_seed(3)
    model = _Small().eval()
    x = torch.randn(64, 1, 8, 8)
    net = snn.convert(model, [x], neuron=snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=4), norm=snn.Norm.max())
    agree = float((snn.run(net, x, 64).outputs[64].argmax(1) == model(x).argmax(1)).float().mean())
    if agree < 0.95:
        raise Wrong(f"only {agree:.0%} of argmaxes agree with the ANN after 64 steps")
    return f"{agree:.0%} agree"


# ---------------------------------------------------------------- CLI

for _args, _name in ((["--time-steps", "0"], "t0"), (["--time-steps", "-4"], "tneg"), (["--percentile", "0"], "p0"),
                     (["--percentile", "101"], "p101"), (["--max-spikes", "0"], "c0"), (["--model", "lstm"], "model"),
                     (["--neuron", "lif"], "neuron"), (["--initial-potential", "1"], "v1"),
                     (["--test-size", "0"], "n0"), (["--data-dir", "/no/such/dir"], "datadir")):
    add(CAT, f"cli_snn_convert_{_name}", "error", lambda a=_args: cli("snn", "convert", *a, "--test-size", "10")
        if "--test-size" not in a else cli("snn", "convert", *a))


# ---------------------------------------------------------------- spiking training and event data

for _name, _kw in {"time_steps_0": {"time_steps": 0}, "time_steps_negative": {"time_steps": -2},
                   "coding_unknown": {"coding": "poisson"}, "surrogate_unknown": {"surrogate": "sigmoid"},
                   "channels_empty": {"channels": ()}, "leak_zero": {"leak": 0.0}, "threshold_zero": {"threshold": 0.0},
                   "too_many_pools": {"channels": (8, 8, 8, 8, 8, 8)}}.items():
    add(CAT, f"spiking_cnn_spec_{_name}", "error",
        lambda kw=_kw: __import__("lowbit.snn.models", fromlist=["SpikingCNNSpec"]).SpikingCNNSpec(**kw))


@case(CAT, "error")
def events_time_steps_zero():
    from lowbit.data.events import saccade_events
    return saccade_events(torch.rand(2, 1, 28, 28), 0)


@case(CAT, "error")
def events_from_normalised_frames():
    from lowbit.data.events import saccade_events
    return saccade_events(torch.randn(2, 1, 28, 28) * 3, 4)


@case(CAT, "error")
def events_wrong_shape():
    from lowbit.data.events import saccade_events
    return saccade_events(torch.rand(28, 28), 4)


@case(CAT, "error")
def spiking_cnn_wrong_input_shape():
    from lowbit.snn.models import SpikingCNN, SpikingCNNSpec
    return SpikingCNN(SpikingCNNSpec(channels=(4,), hidden=0))(torch.zeros(2, 3, 28, 28))


@case(CAT, "error")
def cli_snn_train_time_steps_zero():
    return cli("snn", "train", "--time-steps", "0")


@case(CAT, "error")
def cli_snn_train_bad_channels():
    return cli("snn", "train", "--channels", "8,x")
