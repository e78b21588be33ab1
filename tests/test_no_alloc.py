"""A decode step makes no heap allocation: everything is sized when the context is created.
Runs decode steps in a subprocess whose C allocator is wrapped by a counting LD_PRELOAD shim."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHIM = Path(__file__).parent / "native" / "malloc_count.c"

CHILD = r"""
import ctypes, sys, numpy as np, pyllm
shim = ctypes.CDLL(None)
m = pyllm.Model(sys.argv[1], n_ctx=256, n_threads=2)
ctx = m.context()
ctx.eval(np.array([1, 2, 3], np.int32), False)
ctx.decode_steps(5, 8)                       # warm up: first-use paths, thread pool start
shim.malloc_count_start()
out = ctx.decode_steps(17, 64)
n = shim.malloc_count_stop()
# The control: the same counter sees the C++ side's allocations (a sampler sizes its buffers).
shim.malloc_count_start(); pyllm._core.Sampler(m.n_vocab); control = shim.malloc_count_stop()
print(n, control, len(out))
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the counting shim")
def test_decode_steps_allocate_nothing(tmp_path, smollm2_path):
    lib = tmp_path / "malloc_count.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(SHIM), "-ldl"], check=True)
    r = subprocess.run([sys.executable, "-c", CHILD, str(smollm2_path)], capture_output=True, text=True,
                       env={**__import__("os").environ, "LD_PRELOAD": str(lib)}, timeout=300)
    assert r.returncode == 0, r.stderr
    allocations, control, steps = map(int, r.stdout.split())
    assert steps == 64
    assert control > 0           # the shim counts
    # 64 decode steps; the one allocation is the returned list's vector, made before the loop.
    assert allocations <= 1, f"{allocations} allocations during 64 decode steps"
