"""The C kernels compiled with AddressSanitizer and UndefinedBehaviorSanitizer, under the integer tests.

ASan puts poisoned red zones around every heap block (PyTorch's tensors included, since the runtime is
preloaded and intercepts malloc) and aborts on the first read or write outside one; UBSan aborts on undefined
behaviour (a shift of 64 or more, a signed overflow). The library is built once into a temporary cache
(``cext.flags("address,undefined")``), and a child pytest process, with the runtime preloaded and
``LOWBIT_CEXT_SANITIZE`` naming the same build, runs the tests of the integer path, of the delta runtime and of the spiking event runtime against it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lowbit
from lowbit.native import cext

TESTS = ["tests/test_integer.py", "tests/test_plan.py", "tests/test_vnni.py", "tests/test_safety_integer.py",
         "tests/test_delta_runtime.py", "tests/test_bitwise.py", "tests/test_bitwise_ternary.py",
         "tests/test_binary.py", "tests/test_snn_runtime.py", "tests/test_dynamic.py", "tests/test_integer_1d.py",
         "tests/test_integer_tables.py", "tests/test_bitsplit.py", "tests/test_integer_recurrent.py",
         "tests/test_integer_recurrent16.py"]
SANITIZE = "address,undefined"


def _asan_runtime(cc: str) -> str | None:
    """The path of gcc's shared ASan runtime, or None when the compiler has none."""
    try:
        out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


# the positive control: a kernel called directly (no guard) with an output 16 bytes short must be caught
_OVERFLOW = """
import torch
from lowbit.native import cext
x, out = torch.zeros(64, dtype=torch.int8), torch.zeros(48, dtype=torch.int8)
cext.library().lowbit_nhwc_to_nchw(x.data_ptr(), 1, 16, 4, out.data_ptr())
"""


@pytest.mark.slow
def test_integer_tests_pass_with_the_kernels_under_asan_and_ubsan(tmp_path):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    runtime = _asan_runtime(cc)
    if runtime is None:
        pytest.skip(f"{cc} has no AddressSanitizer runtime (libasan.so); install it (e.g. apt-get install libasan8)")
    env = dict(os.environ, LOWBIT_CACHE=str(tmp_path), LOWBIT_CEXT_SANITIZE=SANITIZE, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(lowbit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    flag_list = cext.flags(SANITIZE)
    path = cext.library_path(flag_list, tmp_path)  # where the child's cext.library() looks for it
    try:
        cext.build(cext.SOURCES, path, flag_list)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"{cc} cannot build with -fsanitize={SANITIZE}: {exc.stderr.decode()[-500:]}")
    env.update(LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    root = Path(__file__).parents[1]
    probe = subprocess.run([sys.executable, "-c", "from lowbit.native import cext; print(cext.library()._name)"],
                           env=env, cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert probe.returncode == 0 and probe.stdout.strip() == str(path), probe.stderr[-2000:]
    control = subprocess.run([sys.executable, "-c", _OVERFLOW], env=env, cwd=root, capture_output=True, text=True,
                             timeout=300, check=False)
    assert control.returncode != 0 and "heap-buffer-overflow" in control.stderr, control.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                          # (PyTorch's own quantize_dynamic, and its fx tracing of pack_padded_sequence, abort under
                          # the preloaded ASan runtime: not ours to check)
                          "-k", "not worker_reports_a_crash and not pytorch_quantize_dynamic and not packed_sequence",
                          *TESTS], env=env,
                          cwd=root, capture_output=True,
                         text=True, timeout=900, check=False)
    tail = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, tail
    assert "passed" in run.stdout and "ERROR: AddressSanitizer" not in tail and "runtime error" not in tail, tail
