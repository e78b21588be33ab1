"""A model file truncated or overwritten in place while loaded (issue 12, row 4): before the check
the next evaluation died of SIGBUS (truncated) or silently used other weights (overwritten). Now
every evaluation first compares the file's size, mtime and inode with the load's, and raises
ModelFileChangedError. Each case runs in a child process, so a SIGBUS would show as its exit code
instead of killing the test run."""
import shutil
import subprocess
import sys

import pytest

CHILD = r"""
import os, sys
import pyllm
path, how = sys.argv[1], sys.argv[2]
m = pyllm.Model(path, n_ctx=64, n_threads=1)
m.generate("Hello", max_tokens=2, temperature=0)
if how == "truncate":
    os.truncate(path, os.path.getsize(path) // 2)
elif how == "overwrite":
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 4096)
        f.write(b"\xff" * 4096)
        f.flush()
        os.utime(path, ns=(0, 1))   # a distinct mtime even on file systems with coarse timestamps
elif how == "replace":
    tmp = path + ".new"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    os.replace(tmp, path)           # a new file at the path: the mapping keeps the old one
for call in (lambda: m.generate("Hello", max_tokens=2, temperature=0), lambda: m.logits([1, 2, 3])):
    try:
        call()
        print("ok")
    except pyllm.ModelFileChangedError as e:
        print("changed:", e)
"""


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
def test_changed_file_raises_typed_error(smollm2_path, tmp_path, how):
    path = tmp_path / "model.gguf"
    shutil.copyfile(smollm2_path, path)
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # -7 would be SIGBUS
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("changed: the model file") for line in lines), r.stdout


def test_file_replaced_by_rename_keeps_working(smollm2_path, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copyfile(smollm2_path, path)
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), "replace"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["ok", "ok"]
