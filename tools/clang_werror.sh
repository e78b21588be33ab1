#!/usr/bin/env bash
# Compiles every C++ source with clang++ and -Werror (plus the GCC build's warning flags and each
# ISA file's own flags, as CMakeLists.txt sets them), so code that builds with GCC on Linux also
# builds warning-free with Clang, the compiler of macOS and (clang-cl) Windows. Objects only: no
# link, no Python module. Objects go to build/clang-werror/.
#   tools/clang_werror.sh            this machine's architecture
#   tools/clang_werror.sh --aarch64  cross-compile for aarch64 (needs the aarch64 sysroot headers)
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-clang++}
target=native
[[ ${1:-} == --aarch64 ]] && target=aarch64
arch=$(uname -m)
target_flags=()
if [[ $target == aarch64 ]]; then
    arch=aarch64
    target_flags=(--target=aarch64-linux-gnu)
fi
py_inc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
pb_inc=$(python3 -c 'import pybind11; print(pybind11.get_include())')
out=build/clang-werror/$target
mkdir -p "$out"
fail=0
for src in $(git ls-files 'csrc/*.cpp') $(git ls-files --others --exclude-standard 'csrc/*.cpp'); do
    flags=(-std=c++17 -O2 -fPIC -Wall -Wextra -Wno-unused-parameter -fno-math-errno -Werror -Icsrc -isystem "$py_inc" -isystem "$pb_inc")
    case "$src" in csrc/quant/*|csrc/kernels/ref/*) flags+=(-ffp-contract=off) ;; esac
    case "$arch:$src" in
        x86_64:*avx512*) flags+=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -mbmi2) ;;
        x86_64:*avx2*) flags+=(-mavx2 -mfma -mf16c -mbmi2) ;;
        aarch64:csrc/kernels/arm/*) flags+=(-march=armv8.2-a+dotprod+fp16) ;;
    esac
    obj=$out/$(echo "$src" | tr / _).o
    if ! "$CXX" "${target_flags[@]}" "${flags[@]}" -c "$src" -o "$obj"; then
        echo "FAILED: $src" >&2
        fail=1
    fi
done
[[ $fail == 0 ]] && echo "clang_werror: every source compiles warning-free with $($CXX --version | head -1) ($target)"
exit $fail
