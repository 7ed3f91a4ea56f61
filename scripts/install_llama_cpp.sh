#!/usr/bin/env bash
# Build llama-cpp-python once per machine into a wheel cache, then install that wheel into a venv.
#
# Usage: scripts/install_llama_cpp.sh [VENV_DIR]
#   VENV_DIR         venv to install into (default: the python on PATH, i.e. the active venv)
#   COMPRESSOR_CACHE cache root (default: $HOME/.cache/compressor); wheels live in $COMPRESSOR_CACHE/wheels/<key>/
#
# The wheel is compiled for this CPU (llama.cpp enables AVX2/AVX-512 etc. at build time), so the cache key
# includes a hash of the CPU flags and of the build options below; never copy the wheel to another machine.
# A second run only reinstalls the cached wheel (seconds), and does nothing if the venv already holds the
# wheel of this very key (a llama-cpp-python of the right version but another build is replaced).
#
# Build options, and why (issue 13, item 0):
# - GGML_NATIVE=ON, explicitly: ggml-cpu is compiled with -march=native, so it uses every SIMD extension
#   of this CPU, including the ones ggml has no GGML_* switch for (AVX512-FP16, AVX-VNNI-INT8, GFNI). The
#   explicit ON matters: llama.cpp turns native off by itself when SOURCE_DATE_EPOCH is set, which would
#   silently give a baseline x86-64 (SSE2) build.
# - AMX compiled out with -mno-amx-tile -mno-amx-int8 -mno-amx-bf16: on Intel Sapphire Rapids class CPUs the
#   native build has AMX_INT8 = 1 and llama.cpp puts Q4_0/Q4_1/Q8_0/K-quant weights in its AMX buffer type;
#   there it segfaulted on the first quantized evaluation (Q8_0, and Q4_1, which no other extra buffer type
#   takes on x86) while F16/F32 ran, and loading with use_extra_bufts=false fixed it. Upstream has open
#   reports of the same crash in ggml_backend_amx_mul_mat (llama.cpp #20824; per-thread XTILEDATA permission
#   and tile-config fixes in llama.cpp PR #26954), and Ollama dropped its AMX build for Sapphire Rapids as
#   slower (ollama PR #9203). -DGGML_AMX_*=OFF alone does nothing under GGML_NATIVE: ggml then takes its
#   features from the compiler's -march=native macros (__AMX_INT8__), so the compiler must be told; an
#   explicit -mno-* wins over -march=native whatever the order (GCC and clang). Everything else is the same
#   code as the plain native build, which ran correctly on that machine with the extra buffer types off.
# - GGML_CPU_REPACK stays ON (llama.cpp's default): the repacked Q4_0/Q4_K/IQ4_NL kernels are llama.cpp's
#   fast x86 path (bench/llama_cpp_build.py measures what turning them off costs).
# On CPUs without AMX (all AMD ones, older Intel) the compiler flags change nothing. The runtime
# (exporters/compressor_exporters/gguf/runtime.py) still checks llama.cpp's system info and loads with the
# extra buffer types off if some other build reports AMX_INT8 = 1.
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

# --- build configuration (every part of it goes into the cache key) ---
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CC_BIN=${CC:-cc}
CXX_BIN=${CXX:-c++}
# A compiler too old to know the AMX flags (GCC < 11, clang < 12) cannot emit AMX for -march=native either.
amx_flags=""
if printf 'int main(void){return 0;}\n' | "$CC_BIN" $NO_AMX -x c -c -o /dev/null - >/dev/null 2>&1 \
   && printf 'int main(){return 0;}\n' | "$CXX_BIN" $NO_AMX -x c++ -c -o /dev/null - >/dev/null 2>&1; then
  amx_flags="$NO_AMX"
fi
BUILD_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CPU_REPACK=ON"
BUILD_CFLAGS="${CFLAGS:-} $amx_flags"
BUILD_CXXFLAGS="${CXXFLAGS:-} $amx_flags"
BUILD_ALL_CMAKE_ARGS="$BUILD_CMAKE_ARGS ${CMAKE_ARGS:-}"  # the caller's own CMAKE_ARGS come last and win
buildhash=$(printf '%s|%s|%s|%s' "$BUILD_ALL_CMAKE_ARGS" "$BUILD_CFLAGS" "$BUILD_CXXFLAGS" \
            "$("$CXX_BIN" --version 2>/dev/null | head -n1)" | sha256sum | cut -c1-8)

pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cpuflags=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | tr ' ' '\n' | sort | tr '\n' ' ')
cpuhash=$(printf '%s' "$(uname -m) $cpuflags" | sha256sum | cut -c1-12)
key="llama_cpp_python-$VERSION-$pytag-$(uname -s)-$(uname -m)-$cpuhash-native-noamx-$buildhash"
cache="${COMPRESSOR_CACHE:-$HOME/.cache/compressor}/wheels/$key"

# Already installed from a wheel of this key? pip records the wheel's path in direct_url.json (PEP 610), so
# a llama-cpp-python of the same version built otherwise (an old AMX-enabled native wheel) is not kept.
installed_key=$("$PY" - "$VERSION" <<'PY' 2>/dev/null || true
import importlib.metadata as m, json, sys
try:
    dist = m.distribution("llama_cpp_python")
except m.PackageNotFoundError:
    sys.exit(0)
if dist.version == sys.argv[1]:
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    print(url.rstrip("/").split("/")[-2] if url.count("/") >= 2 else "")
PY
)
if [ "$installed_key" = "$key" ] && "$PY" -c "import llama_cpp" >/dev/null 2>&1; then
  log "llama-cpp-python $VERSION ($key) already installed in $("$PY" -c 'import sys; print(sys.prefix)')"
  exit 0
fi

mkdir -p "$cache" || die "cannot create cache directory $cache; set COMPRESSOR_CACHE to a writable folder"
wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  command -v "$CC_BIN" >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 \
    || die "no C compiler found; install a toolchain (e.g. apt-get install build-essential) and rerun"
  command -v "$CXX_BIN" >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
    || die "no C++ compiler found; install a toolchain (e.g. apt-get install build-essential) and rerun"
  log "building llama-cpp-python $VERSION for this CPU (takes ~4-5 minutes) into $cache"
  log "  CMAKE_ARGS=$BUILD_ALL_CMAKE_ARGS CFLAGS=$BUILD_CFLAGS CXXFLAGS=$BUILD_CXXFLAGS"
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # Build into a temp folder and move the wheel in at the end, so an interrupted build leaves no half wheel.
  if ! CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} CMAKE_ARGS="$BUILD_ALL_CMAKE_ARGS" \
      CFLAGS="$BUILD_CFLAGS" CXXFLAGS="$BUILD_CXXFLAGS" \
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
info=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())") \
  || die "llama_cpp does not import after installing $wheel; delete $cache to force a rebuild"
log "llama_cpp $info"
case "$info" in
  *"AMX_INT8 = 1"*) die "the wheel in $cache reports AMX_INT8 = 1 although it was built with '$amx_flags'; delete $cache and rebuild (set CC/CXX to a compiler that knows -mno-amx-int8)" ;;
esac
log "llama_cpp $VERSION OK"
