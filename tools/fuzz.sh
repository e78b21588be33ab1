#!/usr/bin/env bash
# Runs every atheris fuzz target (tests/fuzz/fuzz.py) for SECONDS each (default 20) over a copy of
# its committed seed corpus; exits non-zero on the first finding (crash-* under $OUT).
#   bash tools/fuzz.sh            # CI: 20 s per target
#   bash tools/fuzz.sh 3600       # an hour per target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
out=${FUZZ_OUT:-$(mktemp -d)}
for target in gguf tokenize detokenize chat_template; do
    work="$out/$target"
    mkdir -p "$work/corpus"
    cp tests/fuzz/corpus/$target/* "$work/corpus/"
    echo "fuzz: $target for ${seconds}s"
    python3 tests/fuzz/fuzz.py "$target" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=25 \
        -artifact_prefix="$work/" -print_final_stats=0 "$work/corpus" > "$work/log" 2>&1 || {
        echo "fuzz: $target found a problem; input and log in $work"; tail -40 "$work/log"; exit 1; }
    grep -E "^#[0-9]+ +DONE|Done [0-9]+ runs" "$work/log" | tail -1 || true
done
