#!/usr/bin/env bash
# Create .venv (once) and install Privet with its test tools into it.
# torch is installed first, alone, so that pip takes the CPU build instead of
# resolving a multi-GB CUDA build through opacus or flwr.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
