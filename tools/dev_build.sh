#!/usr/bin/env bash
# Developer build without pip: compiles pyllm/_core*.so in place (build dir: build/dev), so
# `PYTHONPATH=. pytest` runs against the working tree. Each git worktree builds independently.
set -euo pipefail
cd "$(dirname "$0")/.."
pyb=$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')
# ccache, where installed, shares objects between worktrees (paths relative to the tree).
launcher=""
if command -v ccache >/dev/null; then
    launcher="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
    export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
fi
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -Dpybind11_DIR="$pyb" \
      -DPython_EXECUTABLE="$(command -v python3)" $launcher ${CMAKE_ARGS:-} >/dev/null
cmake --build build/dev
cp build/dev/_core*.so pyllm/
