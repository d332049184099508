"""Shipped BitSplit W1A2, Eedn and stochastic-ensemble weights (lowbit.zoo.family_zoo): bit-exact loading, the
deployed path equal to the simulation, the recorded accuracy, refusal of a corrupt file, the main-job rows and
the cost report's rows.

Accuracy tolerance: every deployed path here is integer arithmetic (XNOR-popcount and int8 GEMMs, integer
thresholds), exact on any CPU; the float parts (Eedn's host transduction conv, the ensemble's softmax average,
BitSplit's first-layer threshold comparisons made in float32 by the simulation only) can flip an image only at an
exact tie, so the first 1000 test images must give the recorded subset accuracy to within 2 images (0.2 points).
"""

import shutil

import pytest
import torch

from lowbit.data import Split, fashion_mnist
from lowbit.errors import CheckpointError
from lowbit.zoo import binary_zoo
from lowbit.zoo import family_zoo as fz

TOL = 0.002  # 2 of the first 1000 test images (module docstring)


@pytest.fixture(scope="module")
def test_set():
    return fashion_mnist("test")


def _acc(scores, y):
    return float((scores.argmax(1) == y).float().mean())


@torch.no_grad()
def test_bitsplit_engine_equals_simulation_and_recorded_accuracy(test_set):
    from lowbit.nn.bitsplit import deploy

    model = fz.pretrained_bitsplit()
    engine = deploy(model)
    x = test_set.x[:200]
    assert torch.equal(engine(x), model(x))  # the bitwise engine's logits, bit for bit
    out = torch.cat([engine(test_set.x[i:i + 500]) for i in (0, 500)])
    assert abs(_acc(out, test_set.y[:1000]) - fz.recorded(fz.BITSPLIT, "subset_accuracy")) <= TOL
    assert fz.recorded(fz.BITSPLIT) > 0.91


def test_bitsplit_classifier_weight_gives_back_codes_and_scale():
    from lowbit.nn.bitsplit import int8_codes

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 300, generator=g) * torch.rand(64, 1, generator=g).mul(10).add(1e-3)
    codes, scale = int8_codes(w)
    back_codes, back_scale = int8_codes(fz._weight_with_scale(codes, scale))
    assert torch.equal(back_codes, codes) and torch.equal(back_scale, scale)


@torch.no_grad()
def test_eedn_folded_equals_bn_net_and_recorded_accuracy(test_set):
    from lowbit.snn.eedn import cores, fold, run_batched

    net = fz.pretrained_eedn()
    folded = fold(net)
    x = test_set.x[:200]
    a, b = net.run(x), folded.run(x)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.spikes, b.spikes)
    r = run_batched(folded, test_set.x[:1000], 500)
    assert abs(_acc(r.counts, test_set.y[:1000]) - fz.recorded(fz.EEDN, "subset_accuracy")) <= TOL
    assert cores(net) == fz.recorded(fz.EEDN, "cores")


@torch.no_grad()
def test_ensemble_members_integer_equal_simulation_and_recorded_accuracy(test_set):
    from lowbit.integer import to_integer

    model = fz.pretrained_stochastic()
    ens = fz.stochastic_ensemble(model)
    x, x1k, y1k = test_set.x[:200], test_set.x[:1000], test_set.y[:1000]
    probs = []
    for i, m in enumerate(ens.members):
        im = to_integer(m, (x[:1],))
        if i < 2:
            assert torch.equal(im(x), m(x))  # a member's integer model is its simulation, bit for bit
        probs.append(torch.softmax(im(x1k), dim=1))
    probs = torch.stack(probs)
    assert abs(_acc(probs.mean(0), y1k) - fz.recorded(fz.STOCHASTIC, "subset_accuracy")) <= TOL
    assert abs(_acc(probs[0], y1k) - fz.recorded(fz.STOCHASTIC, "member0_subset_accuracy")) <= TOL
    det = to_integer(model, (x[:1],))
    assert torch.equal(det(x), model(x))
    assert abs(_acc(det(x1k), y1k) - fz.recorded(fz.STOCHASTIC, "deterministic_subset_accuracy")) <= TOL


def _copy(key: str, src, dst):
    for ext in (".npz", ".json"):
        shutil.copy(src / f"{key}{ext}", dst / f"{key}{ext}")
    return dst / f"{key}.npz"


@pytest.mark.parametrize("key", [fz.BITSPLIT, fz.EEDN, fz.STOCHASTIC])
def test_corrupt_file_is_refused(key, tmp_path, monkeypatch):
    path = _copy(key, fz.WEIGHTS, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(fz, "WEIGHTS", tmp_path)
    monkeypatch.setattr(binary_zoo, "WEIGHTS", tmp_path)
    load = {fz.BITSPLIT: fz.pretrained_bitsplit, fz.EEDN: fz.pretrained_eedn, fz.STOCHASTIC: fz.pretrained_stochastic}
    with pytest.raises(CheckpointError, match="checksum"):
        load[key]()


def test_unknown_key_is_refused():
    with pytest.raises(CheckpointError, match="no shipped family model"):
        fz.weights_path("bitsplit-resnet")


def test_main_job_family_rows(test_set):
    from lowbit.main_families import family_rows

    table = family_rows(Split(test_set.x[:200], test_set.y[:200]), images=200, rounds=2, members=2)
    names = [r.what for r in table.rows]
    assert names[0].startswith("BitSplit W1A2") and names[1].startswith("Eedn")
    assert names[2].startswith("stochastic ensemble, M=2") and "one member" in names[3] and "deterministic" in names[4]
    assert all(0.7 < r.accuracy <= 1.0 and r.lowbit_us > 0 and r.fp32_us > 0 for r in table.rows)
    assert table.rows[2].recorded is None  # the recorded accuracy is the 16-member ensemble's
    text = table.render()
    assert "first 200 test images" in text and "M BOPs" in text and "cores" in text


def test_cost_report_family_rows(tmp_path):
    from lowbit.cost import report
    from lowbit.cost.energy import Energy
    from lowbit.cost.families import family_costs

    rows = {r.name.strip(): r for r in family_costs()}
    bs, ens = rows["BitSplit W1A2 c=64"], rows[f"stochastic ensemble, M={fz.ENSEMBLE_MEMBERS}"]
    det = rows["its deterministic sign(w) net"]
    assert ens.bops == fz.ENSEMBLE_MEMBERS * det.bops and ens.compute_pj == pytest.approx(fz.ENSEMBLE_MEMBERS * det.compute_pj)
    assert bs.bops > 0 and bs.compute_pj > 0 and bs.accuracy == fz.recorded(fz.BITSPLIT)
    eedn = rows["Eedn TrueNorth-style net"]
    assert eedn.compute_pj is None and eedn.cores > 0 and eedn.spikes > 0
    r = report.Report("t", [report.Version("float32", 32, 0.9, [], Energy(1, 1, 1, 0, "sram_1mb_64bit"))],
                      families=list(rows.values()))
    md = report.to_markdown(r)
    assert "## Binary, BitSplit, Eedn and stochastic-ensemble networks" in md and "| BitSplit W1A2 c=64 | 92.25% |" in md
    assert "stochastic ensemble" in report.to_html(r) and report.to_dict(r)["families"][0]["name"] == "binary-cnn-w1a1"
