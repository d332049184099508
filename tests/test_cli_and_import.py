import subprocess
import sys

import pytest

from lowbit.cli.main import build_parser, main

OPTIONAL = ("sklearn", "mlxtend", "onnx", "onnxruntime", "matplotlib", "scipy", "pandas", "hypothesis", "numba")


def test_import_is_light_and_fast():
    code = (
        "import sys, time; t = time.perf_counter(); import lowbit; dt = time.perf_counter() - t; "
        f"bad = [m for m in {OPTIONAL!r} + ('torch',) if m in sys.modules]; print(dt, bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert float(out[0]) < 1.5
    assert out[1].strip() == "[]"


def test_lazy_attributes():
    import lowbit

    assert lowbit.IntFormat(3).qmax == 3
    assert lowbit.quantize is __import__("lowbit.ptq", fromlist=["quantize"]).quantize
    with pytest.raises(AttributeError):
        lowbit.not_a_thing  # noqa: B018


@pytest.mark.parametrize("argv", [[], ["run"], ["zoo"], ["zoo", "list"], ["zoo", "train"], ["zoo", "eval"],
                                  ["data"], ["data", "check"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: lowbit" in capsys.readouterr().out


def test_main_job_table(capsys, tmp_path):
    assert main(["run", "--models", "mlp", "--report-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "mlp" / "report.html").exists() and (tmp_path / "mlp" / "report.json").exists()
    assert "float32" in out and "W4 per-channel" in out and "recorded" in out
    assert "integer-only model" in out and "latency, 1 thread" in out and "PTQ W-ternary" in out
    assert "delta GRU, JapaneseVowels" in out and "to_delta theta_x=0.5 theta_h=0.3" in out
    assert "BitSplit W1A2 c=64 (bitwise engine)" in out and "stochastic ensemble, M=16" in out
    assert "Binary, BitSplit, Eedn and stochastic-ensemble networks" in (tmp_path / "mlp" / "report.md").read_text()


def test_zoo_list_and_eval(capsys):
    assert main(["zoo", "list"]) == 0
    assert "resnet" in capsys.readouterr().out
    assert main(["zoo", "eval", "mlp"]) == 0
    assert "recorded" in capsys.readouterr().out


def test_clear_errors_not_tracebacks(tmp_path, capsys):
    assert main(["zoo", "eval", "mlp", "--weights-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error:") and "lowbit zoo train" in err
    assert main(["run", "--models", "mlp", "--data-dir", str(tmp_path), "--report-dir", ""]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["ptq", "--model", "mlp", "--calib", "0"]) == 2
    assert "--calib must be at least 1" in capsys.readouterr().err
    assert main(["ptq", "--model", "mlp", "--weight-bits", "17"]) == 2
    assert "weight_bits=17 is out of range" in capsys.readouterr().err


def test_console_script_runs():
    exe = [sys.executable, "-m", "lowbit.cli.main", "--version"]
    assert subprocess.run(exe, capture_output=True, text=True, check=True).stdout.startswith("lowbit 0.1.0")


def test_export_and_bench_commands(tmp_path, capsys):
    assert main(["export", "--model", "mlp", "--out", str(tmp_path), "--onnx"]) == 0
    out = capsys.readouterr().out
    assert "equal to the simulation on all 10000: True" in out
    assert (tmp_path / "mlp.safetensors").exists() and (tmp_path / "mlp.onnx").exists()
    assert main(["bench", "--model", "mlp", "--load", str(tmp_path / "mlp.safetensors"), "--batch", "2",
                 "--rounds", "2", "--onnx"]) == 0
    out = capsys.readouterr().out
    assert "lowbit integer" in out and "lowbit ONNX (ort)" in out and "float32 eager" in out
    assert main(["export", "--model", "mlp", "--act-bits", "12"]) == 2
    assert "--act-bits must be 2..8" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert main(["bench", "--model", "mlp", "--load", str(tmp_path / "junk.safetensors"), "--rounds", "1"]) == 2
    assert "not a safetensors file" in capsys.readouterr().err


def test_ptq_json_holds_the_results_and_the_quantization_op_counts(tmp_path):
    import json

    path = tmp_path / "r.json"
    assert main(["ptq", "--model", "mlp", "--calib", "8", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["model"] == "mlp" and 0.8 < r["accuracy"] <= 1
    (u_ops, _), (f_ops, _) = r["quant_ops"]["unfused"], r["quant_ops"]["fused"]
    assert f_ops < u_ops  # fusion removed quantization points


def test_export_resnet_with_requantized_residuals(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    assert main(["export", "--model", "resnet", "--out", str(tmp_path), "--onnx", "--residual", "requantize"]) == 0
    assert "equal to the simulation on all 10000: True" in capsys.readouterr().out
    ops = [n.op_type for n in onnx.load(tmp_path / "resnet.onnx").graph.node]
    assert ops.count("Add") == 6 and "Concat" not in ops and "Gemm" in ops  # (the classifier's Gemm only)
    assert ops.count("Gemm") == 1


def test_export_with_exact_layers_writes_integer_convolutions(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from lowbit.export.ort import session
    from lowbit.integer.io import load_integer

    assert main(["export", "--model", "cnn", "--out", str(tmp_path), "--exact-layers"]) == 2
    assert "--exact-layers chooses the ONNX form of the layers: add --onnx" in capsys.readouterr().err
    assert main(["export", "--model", "cnn", "--out", str(tmp_path), "--onnx", "--exact-layers"]) == 0
    assert "equal to the simulation on all 10000: True" in capsys.readouterr().out
    ops = {n.op_type for n in onnx.load(tmp_path / "cnn.onnx").graph.node}
    assert "ConvInteger" in ops and "MatMulInteger" in ops and not {"Conv", "Gemm", "MatMul"} & ops
    im = load_integer(tmp_path / "cnn.safetensors")
    x = torch.rand(64, 1, 28, 28)
    got = session(tmp_path / "cnn.onnx", threads=1).run(["output"], {"input": x.numpy()})[0]
    assert np.array_equal(got, im(x).numpy())
