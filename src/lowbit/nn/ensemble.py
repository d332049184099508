"""Stochastic ensembles of bitwise networks (Vogel, Schorn, Guntoro, Ascheid 2016).

A binary network trained with latent real-valued weights ``w`` in ``[-1, 1]`` (BNN's clipping) defines a
distribution over bitwise networks: each weight is ``+1`` with probability ``p = hard_sigmoid(w) =
clip((w + 1) / 2, 0, 1)`` and ``-1`` otherwise (stochastic binarization, Courbariaux, Hubara et al. 2016).
Inference draws ``M`` networks from it and averages their class posteriors (softmax), then takes the argmax.

Hardware draws with a few-bit pseudo-random source: with ``rng_bits = r`` the weight is ``+1`` where
``u < round(p 2^r)`` for ``u`` uniform on ``0 .. 2^r - 1`` (an r-bit comparator), so ``p`` is used at r
bits. Every draw comes from an explicit :class:`torch.Generator`, never the global RNG: an ensemble is a
function of its seed.

A member is a copy of a converted (:func:`lowbit.qat.convert_qat`) model whose binary weights are replaced
by a sample; the frozen per-channel scales (``mean|w|`` times the folded BatchNorm gain) are kept, so each
member is a deterministic bitwise network that :func:`lowbit.integer.to_integer` lowers like any other.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.functional.binary import hard_sigmoid
from lowbit.nn.unified import unified_modules


def _binary_layers(model: nn.Module) -> list:
    layers = [u for _, u in unified_modules(model) if u.weight_quant is not None and u.weight_quant.binary]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no binary weights to sample: a stochastic ensemble samples "
                          "the binary layers of a model made by lowbit.qat with QuantSpec(Binary(), PerChannel(0))")
    return layers


def _check_bits(rng_bits: int | None) -> None:
    if rng_bits is not None and (isinstance(rng_bits, bool) or not isinstance(rng_bits, int) or not 1 <= rng_bits <= 24):
        raise ConfigError(f"rng_bits = {rng_bits!r}; allowed: None (a float uniform) or an integer in 1..24")


def stochastic_signs(w: torch.Tensor, generator: torch.Generator, rng_bits: int | None = None) -> torch.Tensor:
    """+1 with probability ``hard_sigmoid(w)``, else -1 (float32, ``w``'s shape); ``rng_bits``: an r-bit draw."""
    _check_bits(rng_bits)
    p = hard_sigmoid(w.detach().float())
    if rng_bits is None:
        u = torch.rand(w.shape, generator=generator)
        return torch.where(u < p, 1.0, -1.0)
    levels = 1 << rng_bits
    u = torch.randint(0, levels, w.shape, generator=generator)
    return torch.where(u < torch.round(p * levels), 1.0, -1.0)


@torch.no_grad()
def sample_member(model: nn.Module, generator: torch.Generator, rng_bits: int | None = None) -> nn.Module:
    """A copy of the converted binary ``model`` with every binary weight drawn stochastically from its latent value
    (the frozen scales kept), in eval mode."""
    member = copy.deepcopy(model)
    for u in _binary_layers(member):
        u.weight.copy_(stochastic_signs(u.weight, generator, rng_bits).to(u.weight.dtype))
    return member.eval()


class StochasticEnsemble:
    """``members`` bitwise networks sampled from ``model`` with ``torch.Generator().manual_seed(seed)``; calling it
    averages their softmax posteriors. ``members[i]`` is the i-th network (lower it with ``to_integer``)."""

    def __init__(self, model: nn.Module, members: int, seed: int = 0, rng_bits: int | None = None) -> None:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ConfigError(f"StochasticEnsemble: members = {members!r}; allowed: an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"StochasticEnsemble: seed = {seed!r}; allowed: an integer >= 0")
        _check_bits(rng_bits)
        _binary_layers(model)
        g = torch.Generator().manual_seed(seed)
        self.members = [sample_member(model, g, rng_bits) for _ in range(members)]

    @torch.no_grad()
    def posteriors(self, x: torch.Tensor, members: int | None = None) -> torch.Tensor:
        """Mean softmax of the first ``members`` networks (all by default)."""
        use = self.members[:members] if members is not None else self.members
        return torch.stack([torch.softmax(m(x), dim=1) for m in use]).mean(dim=0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.posteriors(x)


__all__ = ["StochasticEnsemble", "sample_member", "stochastic_signs"]
