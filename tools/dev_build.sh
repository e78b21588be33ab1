#!/usr/bin/env bash
# Developer build without pip: compiles pyllm/_core*.so in place (build dir: build/dev), so
# `PYTHONPATH=. pytest` runs against the working tree. Each git worktree builds independently.
set -euo pipefail
cd "$(dirname "$0")/.."
pyb=$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -Dpybind11_DIR="$pyb" \
      -DPython_EXECUTABLE="$(command -v python3)" ${CMAKE_ARGS:-} >/dev/null
cmake --build build/dev
cp build/dev/_core*.so pyllm/
