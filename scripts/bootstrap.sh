#!/usr/bin/env bash
# Create .venv (once) and install lowbit with the extras named in $1 (default: test).
# Idempotent: a second run installs nothing that is already there.
#   torch==2.13.0 goes in first (the CPU wheel on disk), everything else through
#   constraints.txt, which pins torch so that no dependency can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
py="${PYTHON:-python3}"
venv=".venv"

need_deb=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_deb+=(dataset-fashion-mnist)
command -v cc >/dev/null 2>&1 || need_deb+=(gcc)   # lowbit's C kernels are compiled on first use
command -v chromium >/dev/null 2>&1 || need_deb+=(chromium)   # the HTML report is checked in a real browser
command -v espeak-ng >/dev/null 2>&1 || need_deb+=(espeak-ng)   # spoken digits (lowbit.data.spoken_digits)
command -v sox >/dev/null 2>&1 || need_deb+=(sox)
if [ ${#need_deb[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages: ${need_deb[*]}"
    (apt-get install -y -q "${need_deb[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${need_deb[@]}" >/dev/null; }) \
      || echo "[setup] apt-get could not install ${need_deb[*]}; what needs them will say so" >&2
  else
    echo "[setup] missing Debian packages; run:  sudo apt-get update && sudo apt-get install -y ${need_deb[*]}" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
pip_install() {  # pip install, minus this machine's harmless "Location ... is ignored" warnings
  local log rc=0
  log=$(mktemp)
  "$venv/bin/python" -m pip --disable-pip-version-check -q install "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  rm -f "$log"
  return $rc
}
stamp="$venv/.lowbit-installed-$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ]; then
  exit 0   # already installed for these extras and this pyproject
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU)"
  pip_install torch==2.13.0
fi
echo "[setup] installing lowbit[$extras]"
pip_install -c constraints.txt -e ".[$extras]"
# JapaneseVowels ships inside aeon; lowbit reads its .ts files and never imports aeon (whose own loaders need numba)
"$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('aeon') is None)" 2>/dev/null \
  || pip_install --no-deps aeon==1.6.0
touch "$stamp"
