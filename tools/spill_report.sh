#!/usr/bin/env bash
# Register spills in the SIMD kernels: compiles an x86 ISA file as the build does (-O3, its ISA
# flags) and counts, per function, the instructions that move a ymm/zmm register to or from the
# stack. A micro-kernel whose inner loop shows up here runs at a fraction of its speed: GCC 12
# reassociated the x8 tiles' chains of integer adds into trees that computed every product first
# and spilled them (the Q4 tile at 4 tokens: ~100 stack moves per block column, 125 -> 155 GFLOP/s
# per core once the sums were pinned with avx2_helpers.h's pinned()). Prologues and tail code
# legitimately save a few registers; read the inner loop with objdump before concluding.
#
#   tools/spill_report.sh [FILE ...]      (default: every csrc/kernels/x86/*.cpp)
set -euo pipefail
cd "$(dirname "$0")/.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(csrc/kernels/x86/*.cpp)
obj=$(mktemp --suffix=.o)
trap 'rm -f "$obj"' EXIT
for f in "${files[@]}"; do
    flags="-mavx2 -mfma -mf16c -mbmi2"
    case $f in *avx512*) flags="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni $flags" ;; esac
    ${CXX:-g++} -O3 -DNDEBUG -std=c++17 -fPIC $flags -fno-math-errno -Icsrc -c "$f" -o "$obj"
    echo "== $f"
    objdump -d --no-show-raw-insn -C "$obj" | awk '
        /^[0-9a-f]+ </ { name = $0; sub(/^[0-9a-f]+ </, "", name); sub(/\((long|int|unsigned|float|pyllm).*/, "", name)
                         sub(/^void pyllm::\(anonymous namespace\)::/, "", name) }
        /[yz]mm.*rsp|rsp.*[yz]mm/ { count[name]++ }
        END { for (n in count) if (count[n] > 4) printf "%6d  %s\n", count[n], n }' | sort -rn
done
