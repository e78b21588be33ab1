"""The user-facing model: load a GGUF file (or a known model name), tokenize, evaluate, generate.

Python owns the surface (config from metadata, tokenizer, streaming text, stop strings); C++
owns everything that runs per token. A generation step crosses into C++ once: evaluate the new
token and sample the next one there, with the GIL released.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, make_dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pyllm import _core, _validate, hub
from pyllm.errors import ContextOverflowError, GGUFError, ModelFileChangedError, UnsupportedModelError
from pyllm.gguffile import GGUFFile
from pyllm.tokenizer import StopMatcher, Tokenizer

# The architecture families pyllm runs (csrc/model/arch.cpp's registry).
SUPPORTED_ARCHITECTURES = tuple(_core.supported_architectures().split(", "))


def _config_from_metadata(cls, md: dict) -> "ModelConfig":
    """Reads the hyper-parameters of a GGUF metadata dict through the one key table
    (csrc/model/hparams.cpp): GGUFError naming a missing or bad key, UnsupportedModelError for an
    architecture pyllm does not run."""
    return cls(**_core.read_hparams(dict(md)))


# The model's hyper-parameters: one field per row of the C++ key table (names, types), so the
# table is written once. Frozen; dataclasses.asdict(config) is what the C++ side takes back.
ModelConfig = make_dataclass(
    "ModelConfig", [(name, {"int": int, "float": float, "bool": bool, "str": str}[kind])
                    for name, kind in _core.hparam_fields()],
    frozen=True, namespace={"from_metadata": classmethod(_config_from_metadata)})
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = "Hyper-parameters of a GGUF model (fields: csrc/model/hparams.h)."


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None


@dataclass
class Completion:
    """What one generation produced (filled in as it streams)."""
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None  # "stop" (end-of-generation token or stop string) or "length"
    n_prompt_tokens: int = 0
    n_reused_tokens: int = 0          # prompt tokens found already in the KV cache


def _file_identity(path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of path, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# The KV cache types (llama.cpp's -ctk/-ctv values, but iq4_nl); f16 is the default.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0", "f32", "bf16", "q4_1", "q5_0", "q5_1")


def kv_cache_type(name) -> str:
    """Checks a KV cache type name (case-insensitive); ValueError naming the choices if unknown."""
    t = str(name).lower()
    if t not in KV_CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {name!r}: choose one of {', '.join(KV_CACHE_TYPES)}")
    return t


class Model:
    """A GGUF model ready to run.

        m = pyllm.Model("smollm2-135m-instruct")      # a known name (pulled once), or a path
        m.generate("Once upon a time", max_tokens=32)
    """

    def __init__(self, path_or_name: str | os.PathLike | None = None, n_ctx: int | None = None,
                 n_threads: int | None = None, n_batch: int = 512, cache_type: str | None = None,
                 cache_type_k: str | None = None, cache_type_v: str | None = None):
        # The KV cache's types, llama.cpp's -ctk/-ctv: cache_type sets both, cache_type_k/_v one.
        self.cache_type_k = kv_cache_type(cache_type_k or cache_type or "f16")
        self.cache_type_v = kv_cache_type(cache_type_v or cache_type or "f16")
        n_threads = _validate.n_threads(n_threads)
        if n_ctx is not None:
            n_ctx = _validate.integer("n_ctx", n_ctx, 1, _validate.INT32_MAX)
        n_batch = _validate.integer("n_batch", n_batch, 1, _validate.INT32_MAX)
        self.path = hub.resolve(path_or_name if path_or_name is not None else hub.DEFAULT_MODEL)
        self._file = GGUFFile(self.path)
        self._file_identity = _file_identity(self.path)
        self.metadata = self._file.metadata
        self.config = ModelConfig.from_metadata(self.metadata)
        self._file.check_tensor_types()  # e.g. IQ2_XXS: named before any weight is touched
        cfg = asdict(self.config)
        tensors = {name: (t["type"], t["shape"], self._file.tensor_bytes(name))
                   for name, t in self._file.tensors.items()}
        # PYLLM_REPACK=0 keeps the weights in the file's layout (for A/B measurements).
        repack = os.environ.get("PYLLM_REPACK", "1") != "0"
        # The weights are checked and repacked in C++ without the GIL while this thread builds
        # the tokenizer: the two halves of a load, overlapped. Errors are reported in the order
        # a sequential load would meet them: tokenizer, vocabulary size, then the weights.
        loaded: dict = {}

        def load_weights():
            try:
                loaded["model"] = _core.Model(cfg, tensors, keep_alive=self._file, repack=repack)
            except BaseException as e:  # re-raised below, on the caller's thread
                loaded["error"] = e

        loader = threading.Thread(target=load_weights, name="pyllm-load-weights")
        loader.start()
        try:
            self.tokenizer = Tokenizer.from_metadata(self.metadata)
        finally:
            loader.join()
        if self.tokenizer.n_vocab != self.config.n_vocab:
            raise GGUFError(f"the tokenizer has {self.tokenizer.n_vocab} tokens but "
                            f"{self.config.arch}.vocab_size is {self.config.n_vocab}")
        if "error" in loaded:
            raise loaded["error"]
        self._model = loaded["model"]

        self.n_ctx = int(n_ctx) if n_ctx is not None else min(self.config.n_ctx_train, 4096)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {self.n_ctx}")
        kv_bytes = _core.Model.kv_cache_bytes(cfg, self.n_ctx, self.cache_type_k, self.cache_type_v)
        mem = _physical_memory()
        if mem is not None and kv_bytes > mem // 2:
            raise ValueError(f"n_ctx={self.n_ctx} needs {kv_bytes / 2**30:.1f} GiB of KV cache; this machine "
                             f"has {mem / 2**30:.1f} GiB of memory. Use a smaller n_ctx.")
        self.n_threads = n_threads or _core.default_threads()
        self._ctx = _core.Context(self._model, self.n_ctx, min(n_batch, self.n_ctx), self.n_threads,
                                  self.cache_type_k, self.cache_type_v)
        self.kv_cache_bytes = kv_bytes  # at n_ctx; pages are touched only as positions fill
        self._cached: list[int] = []  # the tokens whose keys/values are in the cache, in order
        self._lock = threading.RLock()  # one call at a time, whatever the caller's threads do
        self.name = str(self.metadata.get("general.name") or Path(self.path).stem)

    # --- lifecycle

    def close(self) -> None:
        """Releases the weights and cache. The model cannot be used afterwards."""
        with self._lock:
            self._ctx = None
            self._model = None
            self._file.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, arch={self.config.arch}, n_ctx={self.n_ctx}, n_threads={self.n_threads})"

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    # --- tokens

    def tokenize(self, text: str | bytes, special: bool = False, add_bos: bool | None = None) -> list[int]:
        """Text to token ids. special=True turns special-token text (e.g. <|im_start|>) into its id."""
        return self.tokenizer.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.detokenize(ids, special=special)

    # --- evaluation

    def _context(self):
        if self._ctx is None:
            raise ValueError("the model is closed")
        self._check_file()
        return self._ctx

    def _check_file(self) -> None:
        """Raises ModelFileChangedError if the mapped file was truncated or rewritten in place
        since the load (a truncated mapping raises SIGBUS on the next read of a weight). Checked
        before every evaluation (one stat, ~2 us). What remains: a file changed during an
        evaluation, between this check and the reads. A file replaced by a rename is no problem:
        the mapping keeps the old one."""
        now = _file_identity(self.path)
        if now is not None and now[:2] == self._file_identity[:2] and now != self._file_identity:
            raise ModelFileChangedError(
                f"the model file {self.path} was modified after it was loaded (size {self._file_identity[2]} -> "
                f"{now[2]} bytes); its weights can no longer be used. Load the model again.")

    def _check_ids(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.size and arr.dtype.kind not in "iu":  # 1.5 or True is a caller's bug, not a token
            raise TypeError(f"token ids must be integers, got an array of {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_vocab):
            from pyllm.errors import InvalidTokenError
            bad = int(arr[(arr < 0) | (arr >= self.n_vocab)][0])
            raise InvalidTokenError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return arr.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits, (len(ids), n_vocab) float32, evaluated from an empty cache."""
        arr = self._check_ids(ids)
        if arr.size == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        if arr.size > self.n_ctx:
            raise ContextOverflowError(f"{arr.size} tokens do not fit in the context of {self.n_ctx}")
        with self._lock:
            ctx = self._context()
            ctx.truncate(0)
            self._cached = []
            out = ctx.eval(arr, True)
            self._cached = arr.tolist()
            return out

    def _prefill(self, ids: list[int]) -> tuple[list[int], int]:
        """Reuses the longest cached prefix of ids; returns the tokens still to evaluate (at least
        one, so there are logits to sample from) and how many were reused."""
        ctx = self._context()
        common = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        ctx.truncate(common)
        del self._cached[common:]
        return ids[common:], common

    # --- generation

    def eog_ids(self) -> set[int]:
        return set(self.tokenizer.eog_ids)

    def generate_tokens(self, prompt_ids: Sequence[int], max_tokens: int | None = None,
                        sampling: SamplingParams | None = None, info: Completion | None = None,
                        constraint=None, speculative=None) -> Iterator[int]:
        """Yields generated token ids (end-of-generation tokens excluded). `info` receives the
        finish reason and counts. The KV cache keeps the conversation for prefix reuse.
        `constraint` (pyllm.constrain.Constraint): its token mask goes into the sampler each step.
        `speculative` (pyllm.speculative.Speculator): proposals verified in batched evaluations."""
        sampling = sampling or SamplingParams()
        if speculative is not None:
            from pyllm import speculative as spec
            yield from spec.generate_tokens(self, prompt_ids, max_tokens, sampling, info, constraint, speculative)
            return
        info = info if info is not None else Completion()
        ids = self._check_ids(prompt_ids).tolist()
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx} (n_ctx); "
                f"shorten the prompt or load the model with a larger n_ctx")
        info.n_prompt_tokens = len(ids)
        seed = _validate.seed(sampling.seed)
        top_k = _validate.integer("top_k", sampling.top_k, -_validate.INT32_MAX, _validate.INT32_MAX)
        penalty_last_n = _validate.integer("penalty_last_n", sampling.penalty_last_n, -1, _validate.INT32_MAX)
        sampler = _core.Sampler(self.n_vocab, temperature=sampling.temperature, top_k=top_k,
                                top_p=sampling.top_p, min_p=sampling.min_p,
                                repeat_penalty=sampling.repeat_penalty,
                                presence_penalty=sampling.presence_penalty,
                                frequency_penalty=sampling.frequency_penalty,
                                penalty_last_n=penalty_last_n, seed=seed)
        eog = self.eog_ids()
        limit = self.n_ctx - len(ids) + 1  # tokens we can sample before the cache is full
        if max_tokens is not None and max_tokens >= 0:  # -1 (any negative): until end of turn or context
            limit = min(limit, _validate.integer("max_tokens", max_tokens, 0, _validate.INT32_MAX))
        with self._lock:
            ctx = self._context()
            pending, reused = self._prefill(ids)
            info.n_reused_tokens = reused
            for token in ids[:reused]:
                sampler.accept(token)
            produced = 0
            while True:
                if produced >= limit:
                    info.finish_reason = "length"
                    return
                # On any error (Ctrl-C included) the C++ side leaves the cache as it was.
                self._check_file()
                allowed = constraint.mask() if constraint is not None else None
                token = ctx.eval_sample(np.asarray(pending, np.int32), sampler, allowed)
                self._cached.extend(pending)
                if token in eog:
                    info.finish_reason = "stop"
                    return
                produced += 1
                if constraint is not None:
                    constraint.advance(token)
                yield token
                if constraint is not None and constraint.done:
                    info.finish_reason = "stop"   # the grammar is complete: nothing may follow
                    return
                pending = [token]
                if ctx.n_past >= self.n_ctx:
                    info.finish_reason = "length"
                    return

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = None, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, stream: bool = False,
                 info: Completion | None = None, response_format=None, grammar=None,
                 speculative: str | None = None, draft_model=None, n_draft: int | None = None):
        """Continues `prompt` (text, whose special-token text is parsed as llama.cpp does, or
        token ids). Returns the text, or with stream=True an iterator of text pieces that never
        split a UTF-8 character and never show any part of a stop string.

        response_format: {"type": "json_object"} or {"type": "json_schema", "json_schema":
            {"schema": {...}}}: the output is JSON (matching the schema). grammar: a Lark grammar
            string or {"regex": ...}. A constraint that does not compile raises
            pyllm.GrammarError before any compute. If max_tokens ends the output before the
            JSON/grammar is complete, finish_reason is "length" and the text is a valid prefix only.
        speculative="ngram" (prompt-lookup proposals) or draft_model=PATH_OR_NAME_OR_MODEL
            (n_draft tokens per step): faster decode, same output (greedy: identical tokens;
            sampling: the same distribution)."""
        ids = list(prompt) if not isinstance(prompt, (str, bytes)) else self.tokenize(prompt, special=True)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, seed=seed)
        info = info if info is not None else Completion()
        constraint, spec = self.generation_hooks(response_format, grammar, speculative, draft_model, n_draft)
        pieces = self._stream_text(ids, max_tokens, params, stop, info, constraint, spec)
        if stream:
            return pieces
        return "".join(pieces)

    def generation_hooks(self, response_format=None, grammar=None, speculative=None, draft_model=None,
                         n_draft=None):
        """(constraint, speculator) for generate_tokens, compiled and checked now (before any
        compute); None for what is not asked."""
        constraint = spec = None
        if response_format is not None or grammar is not None:
            from pyllm import constrain
            constraint = constrain.compile_constraint(self.tokenizer, response_format, grammar)
        if speculative is not None or draft_model is not None:
            from pyllm import speculative as speculation
            spec = speculation.make_speculator(self, speculative, draft_model, n_draft)
        return constraint, spec

    def _stream_text(self, ids: list[int], max_tokens, params: SamplingParams, stop, info: Completion,
                     constraint=None, speculative=None) -> Iterator[str]:
        # Validate before the generator starts, so errors surface at the call, not at first next().
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx} (n_ctx); "
                f"shorten the prompt or load the model with a larger n_ctx")
        tokens = self.generate_tokens(ids, max_tokens, params, info, constraint, speculative)
        return self._pieces(tokens, stop, info)

    def _pieces(self, tokens: Iterator[int], stop, info: Completion) -> Iterator[str]:
        decoder = self.tokenizer.stream_decoder()
        matcher = StopMatcher(stop or [])
        info.token_ids = []
        text = []
        try:
            for token in tokens:
                info.token_ids.append(token)
                piece = matcher.feed(decoder.feed(token))
                if piece:
                    text.append(piece)
                    yield piece
                if matcher.stopped:
                    info.finish_reason = "stop"
                    break
            if not matcher.stopped:
                piece = matcher.feed(decoder.flush()) + matcher.flush()
                if piece:
                    text.append(piece)
                    yield piece
        finally:
            tokens.close()
            info.text = "".join(text)

    # --- OpenAI-shaped API (implemented in pyllm/completions.py)

    def create_chat_completion(self, messages, **kwargs):
        """OpenAI-shaped chat completion dict, or with stream=True an iterator of chunk dicts.
        See pyllm.completions.create_chat_completion for the arguments."""
        from pyllm import completions
        return completions.create_chat_completion(self, messages, **kwargs)

    def create_completion(self, prompt, **kwargs):
        """OpenAI-shaped text completion dict (or chunks with stream=True) for a raw prompt."""
        from pyllm import completions
        return completions.create_completion(self, prompt, **kwargs)

    def chat(self, messages, **kwargs):
        """The assistant's reply to `messages` (a list of role/content dicts, or one user string):
        a string, or with stream=True an iterator of text pieces."""
        from pyllm import completions
        return completions.chat(self, messages, **kwargs)
