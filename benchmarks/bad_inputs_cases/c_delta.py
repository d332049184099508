"""Delta networks (issue "Delta networks"): negative, NaN or non-numeric thresholds, sequences of the wrong rank
or feature size, packed sequences, models with no recurrent layer, layers the runtimes cannot run (bidirectional,
projected, too wide for the fixed-point accumulators), bad stream inputs and the ``lowbit delta`` flags;
legitimate uses checked against ``nn.GRU`` / ``nn.LSTM`` and the simulation."""

from __future__ import annotations

import torch
from torch import nn

from bad_inputs_cases import Wrong, add, case, cli

CAT = "delta"


def _gru(**kw):
    from lowbit.delta import DeltaGRU
    return DeltaGRU(6, 10, **kw)


# ---------------------------------------------------------------- thresholds

for _v in (-0.1, float("nan"), float("inf"), "0.1", True, None):
    add(CAT, f"theta_x_{_v!r}", "error", lambda v=_v: _gru(theta_x=v))
    add(CAT, f"to_delta_theta_h_{_v!r}", "error",
        lambda v=_v: __import__("lowbit.delta", fromlist=["to_delta"]).to_delta(nn.GRU(6, 10), theta_x=0.1, theta_h=v))


@case(CAT, "error")
def runtime_theta_negative():
    from lowbit.delta.runtime import DeltaRuntime
    return DeltaRuntime.from_layer(nn.GRU(6, 10), theta_x=-1.0)


@case(CAT, "error")
def fixed_point_theta_nan():
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime
    return FixedDeltaLSTMRuntime.from_layer(nn.LSTM(6, 10), theta_h=float("nan"))


@case(CAT, "error")
def sweep_without_pairs():
    from lowbit.delta import sweep
    return sweep(nn.Sequential(nn.GRU(6, 10)), [], lambda m: 0.0)


@case(CAT, "error")
def sweep_pair_of_three():
    from lowbit.delta import sweep
    return sweep(nn.Sequential(nn.GRU(6, 10)), [(0.1, 0.1, 0.1)], lambda m: 0.0)


# ---------------------------------------------------------------- sequences

@case(CAT, "error")
def sequence_rank_2():
    return _gru()(torch.randn(5, 6))


@case(CAT, "error")
def sequence_wrong_features():
    return _gru()(torch.randn(5, 2, 7))


@case(CAT, "error")
def sequence_packed():
    return _gru()(nn.utils.rnn.pack_sequence([torch.randn(5, 6), torch.randn(3, 6)]))


@case(CAT, "error")
def sequence_nan_into_runtime():
    from lowbit.delta.runtime import DeltaRuntime
    return DeltaRuntime.from_layer(nn.GRU(6, 10)).run(torch.full((4, 6), float("nan")))


@case(CAT, "error")
def runtime_step_wrong_size():
    from lowbit.delta.runtime import DeltaRuntime
    return DeltaRuntime.from_layer(nn.LSTM(6, 10)).step(torch.randn(7))


@case(CAT, "error")
def runtime_empty_sequence():
    from lowbit.delta.runtime import DeltaRuntime
    return DeltaRuntime.from_layer(nn.GRU(6, 10)).run(torch.zeros(0, 6))


@case(CAT, "error")
def fixed_point_int64_codes():
    from lowbit.delta.fixed import FixedDeltaGRURuntime
    return FixedDeltaGRURuntime.from_layer(nn.GRU(6, 10)).run(torch.zeros(3, 6, dtype=torch.int64))


@case(CAT, "error")
def fixed_point_codes_out_of_int16():
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime
    return FixedDeltaLSTMRuntime.from_layer(nn.LSTM(6, 10)).run(torch.full((3, 6), 40000, dtype=torch.int32))


# ---------------------------------------------------------------- models and layers

@case(CAT, "error")
def to_delta_no_recurrent_layer():
    from lowbit.delta import to_delta
    return to_delta(nn.Sequential(nn.Linear(6, 10), nn.ReLU()))


@case(CAT, "error")
def runtime_bidirectional():
    from lowbit.delta.runtime import DeltaRuntime
    return DeltaRuntime.from_layer(nn.GRU(6, 10, bidirectional=True))


@case(CAT, "error")
def runtime_plain_rnn():
    from lowbit.delta.runtime import DeltaRuntime
    return DeltaRuntime.from_layer(nn.RNN(6, 10))


@case(CAT, "error")
def fixed_point_lstm_with_projection():
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime
    return FixedDeltaLSTMRuntime.from_layer(nn.LSTM(6, 10, proj_size=4))


@case(CAT, "error")
def fixed_point_too_wide():
    from lowbit.delta.fixed import FixedDeltaGRURuntime
    return FixedDeltaGRURuntime.from_layer(nn.GRU(6, 300))


@case(CAT, "error")
def fixed_point_gru_runtime_given_lstm():
    from lowbit.delta.fixed import FixedDeltaGRURuntime
    return FixedDeltaGRURuntime.from_layer(nn.LSTM(6, 10))


@case(CAT, "error")
def fixed_point_two_layers():
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime
    return FixedDeltaLSTMRuntime.from_layer(nn.LSTM(6, 10, num_layers=2))


@case(CAT, "error")
def fixed_point_frac_bits_16():
    from lowbit.delta.fixed import FixedDeltaGRURuntime
    return FixedDeltaGRURuntime.from_layer(nn.GRU(6, 10), frac_bits=16)


# ---------------------------------------------------------------- legitimate uses, checked

@case(CAT, "valid")
def zero_thresholds_equal_nn_lstm():
    from lowbit.delta import DeltaLSTM
    torch.manual_seed(0)
    ref = nn.LSTM(6, 10, num_layers=2, batch_first=True)
    x = torch.randn(3, 12, 6)
    with torch.no_grad():
        want, _ = ref(x)
        got, _ = DeltaLSTM.from_torch(ref, 0.0, 0.0)(x)
    if not torch.allclose(got, want, atol=1e-5):
        raise Wrong(f"DeltaLSTM at zero thresholds differs from nn.LSTM by {float((got - want).abs().max()):.3g}")
    return got


@case(CAT, "valid")
def fixed_point_lstm_matches_its_simulation():
    from lowbit.delta.fixed import FixedDeltaLSTMRuntime, fixed_delta_lstm
    torch.manual_seed(1)
    rt = FixedDeltaLSTMRuntime.from_layer(nn.LSTM(6, 10), theta_x=0.05, theta_h=0.02)
    x = torch.cumsum(0.3 * torch.randn(30, 6), 0)
    want, _ = fixed_delta_lstm(rt.q, rt.q.quantize_input(x))
    got = rt.run(x)
    if not torch.equal(got, want):
        raise Wrong("the fixed-point LSTM runtime differs from its simulation")
    return got


@case(CAT, "valid")
def runtime_step_equals_run():
    from lowbit.delta.runtime import DeltaRuntime
    torch.manual_seed(2)
    gru = nn.GRU(6, 10)
    x = torch.randn(8, 6)
    a, b = DeltaRuntime.from_layer(gru, theta_x=0.1, theta_h=0.05), DeltaRuntime.from_layer(gru, theta_x=0.1,
                                                                                              theta_h=0.05)
    steps = torch.stack([a.step(xt) for xt in x])
    if not torch.equal(steps, b.run(x)):
        raise Wrong("step by step differs from one run of the sequence")
    return steps


# ---------------------------------------------------------------- CLI

for _flag, _value in (("--theta-x", "-1"), ("--theta-x", "nan"), ("--theta-h", "abc"), ("--model", "resnet")):
    add(CAT, f"cli_convert_{_flag.strip('-')}_{_value}", "error",
        lambda f=_flag, v=_value: cli("delta", "convert", f, v))


@case(CAT, "error")
def cli_convert_missing_weights_dir():
    return cli("delta", "convert", "--weights-dir", "no/such/folder")


@case(CAT, "error")
def cli_train_zero_epochs():
    return cli("delta", "train", "--epochs", "0")


@case(CAT, "error")
def cli_train_negative_lam():
    return cli("delta", "train", "--lam", "-0.5")
