"""Spiking and neuromorphic networks: for now, TrueNorth's core constraint (:mod:`lowbit.snn.truenorth`)."""
