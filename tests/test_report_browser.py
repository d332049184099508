"""The HTML report in a real headless browser: it renders, with no console errors and no network use."""

import re
import shutil
import subprocess

import pytest
import torch

from lowbit import zoo
from lowbit.cost import report as rep
from lowbit.cost.energy import energy
from lowbit.cost.profile import profile
from lowbit.data import fashion_mnist
from lowbit.ptq import PTQConfig, quantize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def html_path(tmp_path_factory):
    x = (torch.randn(2, 1, 28, 28),)
    model = zoo.pretrained("cnn")
    q = quantize(model, [fashion_mnist("train").take(32).x], PTQConfig())
    versions = [rep.Version("float32", 32, 0.924, profile(model, x), None, {"batch 1": 500.0}),
                rep.Version("W8A8", 8, 0.925, profile(q, x), None, {"batch 1": 300.0})]
    for v in versions:
        v.energy = energy(v.rows)
    r = rep.Report("browser check", versions, "test machine", ["a warning"], [(1, 0.92), (4, 0.925)],
                   [("conv1", 0.1), ("conv2", 0.2)], ["note"])
    return rep.write(r, tmp_path_factory.mktemp("report"))["html"]


def test_report_renders_without_console_errors(html_path, tmp_path):
    shot = tmp_path / "shot.png"
    run = subprocess.run([CHROMIUM, *FLAGS, "--window-size=1200,1600", f"--screenshot={shot}",
                          html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a real picture, not a blank page
    console = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln or "Failed to load resource" in ln]
    assert console == []


def test_report_dom_has_every_plot(html_path):
    run = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", html_path.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0
    dom = run.stdout
    assert len(re.findall(r"<svg", dom)) >= 7
    for title in ("Test accuracy", "Energy per inference", "Measured latency", "Calibration curve",
                  "Per-layer sensitivity", "Accuracy against weight bits"):
        assert title in dom
