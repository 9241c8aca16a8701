#!/usr/bin/env bash
# Create .venv-pfl (once), the separate environment in which benchmarks/peers.py runs Apple's
# pfl-research (PyPI "pfl"). It is kept apart from .venv because pfl 0.6.0 pins
# dp-accounting<0.6 (Privet's tests use 0.6.0), packaging<26, wheel<0.46 and prv-accountant<0.3.
# torch is installed first, alone, from the CPU build on this machine, so that nothing resolves
# a multi-GB CUDA build; pfl[pytorch] then accepts it (it asks for torch>=2.0.1,<3).
# Opacus is added because pfl has no example-level DP-SGD (see benchmarks/pfl_baseline.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-pfl/bin/python ]; then
  python3.11 -m venv .venv-pfl 2>/dev/null || python3 -m venv .venv-pfl
fi
.venv-pfl/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv-pfl/bin/python -m pip install -q "torch==2.13.0"
.venv-pfl/bin/python -m pip install -q "pfl[pytorch]==0.6.0" "opacus==1.6.0"
.venv-pfl/bin/python -c "import pfl, opacus, torch; print('pfl', pfl.__version__, 'opacus', opacus.__version__, 'torch', torch.__version__)"
