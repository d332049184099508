"""Spiking networks: neurons with explicit state, ANN-to-SNN conversion, spiking training, event-driven runs.

>>> import torch
>>> from torch import nn
>>> from lowbit import snn
>>> _ = torch.manual_seed(0)
>>> ann = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
>>> images, labels = torch.rand(32, 1, 8, 8), torch.randint(0, 3, (32,))
>>> net = snn.convert(ann, [images], neuron=snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=4))
>>> rows = snn.sweep(net, images, labels, time_steps=[4, 8, 16, 32])   # accuracy against time steps
>>> rt = snn.EventRuntime.from_net(net)             # batch 1, event-driven, compiled (lowbit.snn.events)
>>> r = rt.run(images[0], time_steps=8)             # r.outputs[8]: the readout; r.synops[8]: accumulates
>>> r.synops[8] == snn.run(net, images[:1], 8).synops[8]
True
"""

from lowbit.snn.convert import Coding, ConversionError, ConversionReport, MaxPool, Norm, SpikingNet, convert
from lowbit.snn.events import Engine, EventRun, EventRuntime
from lowbit.snn.lower import EventProgram, lower
from lowbit.snn.neurons import NeuronSpec, NeuronState, Reset, Spikes, SpikingNeuron, neuron_step
from lowbit.snn.pooling import MaxPoolGate
from lowbit.snn.runner import SNNRun, SweepRow, run, sweep

__all__ = ["Coding", "ConversionError", "ConversionReport", "Engine", "EventProgram", "EventRun", "EventRuntime",
           "MaxPool", "MaxPoolGate", "NeuronSpec", "NeuronState",
           "Norm", "Reset", "SNNRun", "Spikes", "SpikingNet", "SpikingNeuron", "SweepRow", "convert",
           "lower", "neuron_step", "run", "sweep"]
