#!/usr/bin/env bash
# Builds tests/native/kernel_test.cpp with the kernel sources (no Python) and runs it.
#   tools/test_neon.sh             cross-compile for aarch64 (NEON + dotprod + fp16), run under qemu
#   tools/test_neon.sh --native    this machine's compiler and CPU (x86: AVX2/AVX-512 tables)
#   tools/test_neon.sh --native --sanitize   the same with address/undefined sanitizers
# Needs (Debian): g++-aarch64-linux-gnu qemu-user. Objects go to build/kernel_test/<target>/.
# Per-file flags mirror CMakeLists.txt: reference code without FMA contraction, each ISA file its own.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64 sanitize=""
for arg in "$@"; do
    case "$arg" in
        --native) target=native ;;
        # (GCC 12's AVX-512 headers trip -Wmaybe-uninitialized under the sanitizers: their
        # deliberate "__Y = __Y" undefined vectors.)
        --sanitize) sanitize="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -Wno-maybe-uninitialized" ;;
        *) echo "usage: $0 [--native] [--sanitize]" >&2; exit 2 ;;
    esac
done

if [[ $target == aarch64 ]]; then
    CXX=${CXX:-aarch64-linux-gnu-g++}
    run=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
    arch_flags() { case "$1" in csrc/kernels/arm/*) echo "-march=armv8.2-a+dotprod+fp16" ;; esac; }
else
    CXX=${CXX:-g++}
    run=()
    arch_flags() {
        case "$(uname -m):$1" in
            x86_64:*avx512*) echo "-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -mbmi2" ;;
            x86_64:*avx2*) echo "-mavx2 -mfma -mf16c -mbmi2" ;;
            aarch64:csrc/kernels/arm/*) echo "-march=armv8.2-a+dotprod+fp16" ;;
        esac
    }
fi

out=build/kernel_test/$target${sanitize:+-san}
mkdir -p "$out"
srcs=(csrc/kernels/dispatch.cpp csrc/kernels/ref/*.cpp csrc/kernels/x86/*.cpp csrc/kernels/arm/*.cpp
      csrc/quant/*.cpp csrc/core/threadpool.cpp tests/native/kernel_test.cpp)
objs=()
for src in "${srcs[@]}"; do
    obj=$out/$(echo "$src" | tr / _).o
    flags="-O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -fno-math-errno -Icsrc $sanitize $(arch_flags "$src")"
    case "$src" in csrc/quant/*|csrc/kernels/ref/*) flags+=" -ffp-contract=off" ;; esac
    if [[ ! -f $obj || $src -nt $obj || -n $(find csrc -name '*.h' -newer "$obj" -print -quit) ]]; then
        echo "  CXX $src"
        $CXX $flags -c "$src" -o "$obj"
    fi
    objs+=("$obj")
done
$CXX $sanitize "${objs[@]}" -o "$out/kernel_test" -lpthread
"${run[@]}" "$out/kernel_test"
