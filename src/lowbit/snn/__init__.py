"""Spiking networks: neurons with explicit state, ANN-to-SNN conversion, spiking training, event-driven runs.

>>> from lowbit import snn
>>> net = snn.convert(ann, calibration_batches, neuron=snn.NeuronSpec(spikes=snn.Spikes.AUGMENTED, max_spikes=4))
>>> rows = snn.sweep(net, images, labels, time_steps=[4, 8, 16, 32])   # accuracy against time steps
"""

from lowbit.snn.convert import Coding, ConversionError, ConversionReport, MaxPool, Norm, SpikingNet, convert
from lowbit.snn.neurons import NeuronSpec, NeuronState, Reset, Spikes, SpikingNeuron, neuron_step
from lowbit.snn.pooling import MaxPoolGate
from lowbit.snn.runner import SNNRun, SweepRow, run, sweep

__all__ = ["Coding", "ConversionError", "ConversionReport", "MaxPool", "MaxPoolGate", "NeuronSpec", "NeuronState",
           "Norm", "Reset", "SNNRun", "Spikes", "SpikingNet", "SpikingNeuron", "SweepRow", "convert",
           "neuron_step", "run", "sweep"]
