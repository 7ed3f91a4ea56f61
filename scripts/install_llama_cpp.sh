#!/usr/bin/env bash
# Build llama-cpp-python once per machine into a wheel cache, then install that wheel into a venv.
#
# Usage: scripts/install_llama_cpp.sh [VENV_DIR]
#   VENV_DIR         venv to install into (default: the python on PATH, i.e. the active venv)
#   COMPRESSOR_CACHE cache root (default: $HOME/.cache/compressor); wheels live in $COMPRESSOR_CACHE/wheels/<key>/
#
# The wheel is compiled for this CPU (llama.cpp enables AVX2/AVX-512 etc. at build time), so the cache key
# includes a hash of the CPU flags; never copy the wheel to another machine. A second run only reinstalls
# the cached wheel (seconds) and does nothing if the right version is already installed.
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
die() { echo "install_llama_cpp: error: $*" >&2; exit 1; }
log() { echo "install_llama_cpp: $*"; }

if [ $# -ge 1 ] && [ -n "$1" ]; then
  PY="$1/bin/python"
  [ -x "$PY" ] || die "no python at $PY; pass the path of a virtual environment (e.g. .venv)"
else
  PY=$(command -v python3 || command -v python || true)
  [ -n "$PY" ] || die "no python found; pass the path of a virtual environment as the first argument"
fi

installed=$("$PY" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("llama_cpp_python"))
except m.PackageNotFoundError:
    pass
PY
)
if [ "$installed" = "$VERSION" ] && "$PY" -c "import llama_cpp" >/dev/null 2>&1; then
  log "llama-cpp-python $VERSION already installed in $("$PY" -c 'import sys; print(sys.prefix)')"
  exit 0
fi

pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cpuflags=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | tr ' ' '\n' | sort | tr '\n' ' ')
cpuhash=$(printf '%s' "$(uname -m) $cpuflags" | sha256sum | cut -c1-12)
key="llama_cpp_python-$VERSION-$pytag-$(uname -s)-$(uname -m)-$cpuhash"
cache="${COMPRESSOR_CACHE:-$HOME/.cache/compressor}/wheels/$key"
mkdir -p "$cache" || die "cannot create cache directory $cache; set COMPRESSOR_CACHE to a writable folder"

wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 \
    || die "no C compiler found; install a toolchain (e.g. apt-get install build-essential) and rerun"
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
    || die "no C++ compiler found; install a toolchain (e.g. apt-get install build-essential) and rerun"
  log "building llama-cpp-python $VERSION for this CPU (takes ~4-5 minutes) into $cache"
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # Build into a temp folder and move the wheel in at the end, so an interrupted build leaves no half wheel.
  if ! CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
      "$PY" -m pip wheel --disable-pip-version-check --no-deps --no-cache-dir \
      -w "$tmp" "llama-cpp-python==$VERSION"; then
    die "building llama-cpp-python $VERSION failed (see the output above); it needs a C/C++ toolchain and network access to PyPI for the sources and build requirements"
  fi
  built=$(ls "$tmp"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
  [ -n "$built" ] || die "pip wheel finished but produced no llama_cpp_python wheel in $tmp"
  mv "$built" "$cache/"
  wheel="$cache/$(basename "$built")"
  log "cached $wheel"
else
  log "reusing cached wheel $wheel"
fi

# Runtime deps: numpy, typing-extensions and jinja2 come with the stack; diskcache is small and pure Python.
# --no-deps everywhere so nothing else (and never another numpy or torch) is pulled in.
"$PY" -c "import diskcache" >/dev/null 2>&1 \
  || "$PY" -m pip install --disable-pip-version-check -q --no-deps "diskcache>=5.6.1" \
  || die "could not install diskcache (a pure-Python runtime dependency of llama-cpp-python)"
"$PY" -m pip install --disable-pip-version-check -q --no-deps --force-reinstall "$wheel" \
  || die "installing $wheel failed; delete $cache to force a rebuild"
"$PY" -c "import llama_cpp; print('install_llama_cpp: llama_cpp', llama_cpp.__version__, 'OK')" \
  || die "llama_cpp does not import after installing $wheel; delete $cache to force a rebuild"
