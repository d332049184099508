"""Every CLI command with bad arguments, each in its own process: the promise is one line on stderr and
exit status 2 (an argparse usage message is several lines, so it is ``unclear`` by that rule)."""

from __future__ import annotations

import json
import re

import torch

from bad_inputs_cases import (
    CliResult,
    Wrong,
    add,
    case,
    cli,
    fixtures,
    sfile,
    touch,
    workdir,
)

CAT = "cli"


def c(name: str, *args, expect: str = "error", warn: str | None = None, timeout: float = 300,
      misleading: str | None = None):
    add(CAT, name, expect, lambda: cli(*args), warn=warn, timeout=timeout, misleading=misleading)


# top level
c("no_command_prints_help", expect="valid")
c("unknown_command", "frobnicate")
c("unknown_option", "--frobnicate")
c("version", "--version", expect="valid")

# run (the main job: only arguments that fail before the work starts)
c("run_unknown_model", "run", "--models", "vgg")
c("run_missing_data_dir", "run", "--models", "mlp", "--data-dir", "/nonexistent/fm", "--report-dir", "")

# zoo
c("zoo_without_subcommand", "zoo", expect="valid")
c("zoo_list", "zoo", "list", expect="valid")
c("zoo_eval_unknown_model", "zoo", "eval", "vgg")
c("zoo_eval_missing_weights_dir", "zoo", "eval", "cnn", "--weights-dir", "/nonexistent/w")
c("zoo_eval_missing_data_dir", "zoo", "eval", "cnn", "--data-dir", "/nonexistent/fm")
c("zoo_train_epochs_0", "zoo", "train", "cnn", "--epochs", "0", "--out", "zw")
c("zoo_train_epochs_negative", "zoo", "train", "cnn", "--epochs", "-1", "--out", "zw")
c("zoo_train_seed_not_int", "zoo", "train", "cnn", "--seed", "x")
c("zoo_train_missing_data_dir", "zoo", "train", "mlp", "--data-dir", "/nonexistent/fm", "--out", "zw")


def _weights_dir(edit):
    import shutil

    from lowbit import zoo
    d = workdir() / "w"
    d.mkdir(exist_ok=True)
    for ext in (".npz", ".json"):
        shutil.copy(zoo.weights_path("cnn").with_suffix(ext), d / f"cnn{ext}")
    meta = json.loads((d / "cnn.json").read_text())
    (d / "cnn.json").write_text(json.dumps(edit(meta)))
    return d


add(CAT, "zoo_eval_weights_json_is_a_list", "error", lambda: cli("zoo", "eval", "cnn", "--weights-dir",
                                                                  _weights_dir(lambda m: [m])))
add(CAT, "zoo_eval_weights_json_lacks_test_accuracy", "error",
    lambda: cli("zoo", "eval", "cnn", "--weights-dir", _weights_dir(lambda m: {k: v for k, v in m.items()
                                                                               if k != "test_accuracy"})))
add(CAT, "zoo_eval_weights_checksum_wrong", "error",
    lambda: cli("zoo", "eval", "cnn", "--weights-dir", _weights_dir(lambda m: dict(m, sha256="0" * 64))))

# ptq
PTQ = ["ptq", "--model", "mlp", "--calib", "8"]
for flag, v in (("--weight-bits", "0"), ("--weight-bits", "1"), ("--weight-bits", "17"), ("--weight-bits", "x"),
                ("--act-bits", "0"), ("--act-bits", "99"), ("--calib", "0"), ("--calib", "-1"),
                ("--first-last-bits", "1"), ("--first-last-bits", "-1"), ("--first-last-bits", "99"),
                ("--equalize", "2"), ("--equalize", "-1"), ("--equalize", "nan"), ("--model", "vgg"),
                ("--granularity", "row"), ("--observer", "x"), ("--rounding", "x"),
                ("--data-dir", "/nonexistent/fm"), ("--json", "/proc/lowbit_nope/x.json")):
    c(f"ptq{flag.replace('-', '_')}_{v.replace('/', '_')}", *PTQ, flag, v)
c("ptq_calib_10000000", *PTQ[:3], "--calib", "10000000")
c("ptq_keep_float_matching_nothing", *PTQ, "--keep-float", "layer.fc2", warn=r"layer\.fc2")
c("ptq_keep_float_everything", *PTQ, "--keep-float", "*", misleading=r"call lowbit\.ptq\.prepare first")
add(CAT, "ptq_json_is_a_directory", "error", lambda: cli(*PTQ, "--json", workdir()))


@case(CAT, "valid")
def ptq_valid_mlp_json():
    r = cli(*PTQ, "--json", workdir() / "r.json")
    if r.rc != 0:
        return r
    res = json.loads((workdir() / "r.json").read_text())
    if not 0.85 < res["accuracy"] <= 1 or abs(res["accuracy"] - res["float_accuracy"]) > 0.02:
        raise Wrong(f"ptq reports accuracy {res['accuracy']} vs float {res['float_accuracy']}")
    r.note = f"accuracy {res['accuracy']:.4f}"
    return r


# export
EXP = ["export", "--model", "mlp", "--calib", "8"]
for flag, v in (("--weight-bits", "9"), ("--weight-bits", "1"), ("--act-bits", "16"), ("--calib", "0"),
                ("--out", "/proc/lowbit_nope"), ("--model", "vgg")):
    c(f"export{flag.replace('-', '_')}_{v.replace('/', '_')}", *EXP, flag, v)
c("export_opset_99", *EXP, "--onnx", "--opset", "99", "--out", "e")
c("export_opset_5", *EXP, "--onnx", "--opset", "5", "--out", "e")
add(CAT, "export_out_is_a_file", "error", lambda: cli(*EXP, "--out", touch("f")))


@case(CAT, "valid")
def export_valid_mlp_roundtrip():
    r = cli(*EXP, "--out", workdir() / "e")
    if r.rc != 0:
        return r
    from lowbit.integer import load_integer
    im = load_integer(workdir() / "e" / "mlp.safetensors")
    with torch.no_grad():
        out = im(fixtures.test().x[:1000])
    acc = float((out.argmax(1) == fixtures.test().y[:1000]).float().mean())
    if acc < 0.85:
        raise Wrong(f"exported model has accuracy {acc:.3f} on 1000 test images")
    r.note = f"exported model accuracy {acc:.3f} on 1000 images"
    return r


# bench
BENCH = ["bench", "--model", "mlp", "--calib", "8", "--rounds", "2"]
for flag, v in (("--batch", "0"), ("--batch", "-1"), ("--batch", "100000"), ("--threads", "0"), ("--threads", "-1"),
                ("--rounds", "0"), ("--rounds", "-1"), ("--load", "/nonexistent/m.safetensors"),
                ("--weight-bits", "1")):
    c(f"bench{flag.replace('-', '_')}_{v.replace('/', '_')}", *BENCH, flag, v)


def _crafted_file(edit_meta=None, flip=False, model="cnn"):
    h, data = sfile.split(fixtures.saved(model))
    if edit_meta:
        m = sfile.meta(h)
        edit_meta(m)
        h = sfile.with_meta(h, m)
    if flip:
        key = sorted((k for k in h if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))[1]
        d = bytearray(data)
        d[h[key]["data_offsets"][0] + 3] ^= 0x20
        data = bytes(d)
    p = workdir() / "crafted.safetensors"
    p.write_bytes(sfile.join(h, data))
    return p


def _pad(m):
    next(n for n in m["nodes"] if n["kind"] == "conv2d")["attrs"]["padding"] = [-3, -3]


add(CAT, "bench_load_garbage_file", "error",
    lambda: cli(*BENCH, "--load", touch("g.safetensors", b"garbage")))
add(CAT, "bench_load_padding_neg3", "error", lambda: cli(*BENCH[:1], "--model", "cnn", *BENCH[3:], "--calib", "8",
                                                         "--batch", "1", "--load", _crafted_file(_pad)))
add(CAT, "bench_load_byte_flipped", "error", lambda: cli(*BENCH[:1], "--model", "cnn", *BENCH[3:], "--calib", "8",
                                                         "--batch", "1", "--load", _crafted_file(flip=True)))
add(CAT, "bench_load_model_of_another_zoo_model", "error",
    lambda: cli(*BENCH, "--batch", "1", "--load", fixtures.saved("cnn")))


@case(CAT, "valid")
def bench_valid_mlp():
    r = cli(*BENCH, "--batch", "1", "4")
    if r.rc == 0 and len(re.findall(r"lowbit integer", r.out)) != 2:
        raise Wrong("bench printed no row per batch")
    return r


# report
REP = ["report", "--model", "mlp", "--rounds", "0"]
c("report_rounds_negative", "report", "--model", "mlp", "--rounds", "-1")
c("report_unknown_model", "report", "--model", "vgg")
c("report_energy_table_missing", *REP, "--energy-table", "/nonexistent/t.json", "--out", "r")
add(CAT, "report_energy_table_corrupt", "error",
    lambda: cli(*REP, "--out", "r", "--energy-table", touch("t.json", "{oops")))
add(CAT, "report_energy_table_a_list", "error",
    lambda: cli(*REP, "--out", "r", "--energy-table", touch("t.json", "[1, 2]")))
add(CAT, "report_energy_table_negative_energy", "error",
    lambda: cli(*REP, "--out", "r", "--energy-table", _neg_table()))
c("report_out_unwritable", *REP, "--out", "/proc/lowbit_nope")


def _neg_table():
    from lowbit.cost import energy
    t = json.loads(energy.DEFAULT_TABLE.read_text())

    def neg(v):
        if isinstance(v, dict):
            return {k: neg(x) for k, x in v.items()}
        return -abs(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    p = workdir() / "neg.json"
    p.write_text(json.dumps({k: (neg(v) if k not in ("source", "name") else v) for k, v in t.items()}))
    return p


# qat
QAT = ["qat", "--model", "mlp", "--train-size", "256", "--batch-size", "64", "--epochs", "1", "--no-augment"]
for flag, v in (("--weight-bits", "1"), ("--weight-bits", "9"), ("--act-bits", "0"), ("--epochs", "0"),
                ("--epochs", "-1"), ("--batch-size", "0"), ("--lr", "0"), ("--lr", "-1"), ("--lr", "nan"),
                ("--distill", "2"), ("--distill", "-1"), ("--weight-decay", "-1"), ("--train-size", "0"),
                ("--train-size", "-5"), ("--bn-freeze-steps", "-1"), ("--seed", "x"), ("--method", "x"),
                ("--out", "/proc/lowbit_nope"), ("--model", "vgg"), ("--data-dir", "/nonexistent/fm")):
    c(f"qat{flag.replace('-', '_')}_{v.replace('/', '_')}", *QAT, flag, v)
c("qat_train_size_10000000", *QAT[:3], "--train-size", "10000000", "--epochs", "1", "--batch-size", "512",
  "--no-augment", timeout=400)
c("qat_resume_without_checkpoint", *QAT, "--resume", "--out", "none")
c("qat_tensor_granularity_with_bn_freeze_steps", "qat", "--model", "cnn", "--train-size", "128", "--batch-size", "64",
  "--epochs", "1", "--no-augment", "--granularity", "tensor", "--bn-freeze-steps", "1", "--out", "q")
add(CAT, "qat_out_is_a_file", "error", lambda: cli(*QAT, "--out", touch("f")))
add(CAT, "qat_resume_checkpoint_of_another_model", "error", lambda: _resume_other(), timeout=400)  # two QAT runs


def _resume_other():
    out = workdir() / "q"
    r = cli("qat", "--model", "cnn", *QAT[3:], "--out", out)
    if r.rc != 0:
        raise RuntimeError(r.err[-300:])
    return cli(*QAT, "--out", out, "--resume")


@case(CAT, "valid", timeout=400)
def qat_valid_mlp():
    r = cli(*QAT, "--out", workdir() / "q")
    if r.rc != 0:
        return r
    res = json.loads((workdir() / "q" / "result.json").read_text())
    if res["processes"] != 1 or len(res["history"]) != 1 or not res["accuracy"] > 0.7:
        raise Wrong(f"result.json: processes {res['processes']}, history {len(res['history'])}, accuracy {res['accuracy']}")
    r.note = f"integer model accuracy {res['accuracy']:.4f}"
    return r


# data
c("data_without_subcommand", "data", expect="valid")


@case(CAT, "valid")
def data_check_missing_dir_reports_missing():
    r = cli("data", "check", "--data-dir", "/nonexistent/fm")
    if r.rc == 1 and "MISSING" in r.out and "Traceback" not in r.err:
        return CliResult(0, r.out, r.err, note="exit 1, names the missing set and the install command")
    return r
