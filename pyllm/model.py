"""The user-facing model: load a GGUF file (or a known model name), tokenize, evaluate, generate.

Python owns the surface (config from metadata, tokenizer, streaming text, stop strings); C++
owns everything that runs per token. Every evaluation runs on the model's generation engine
(pyllm/generate/engine.py: one scheduler thread, several sequences), so a Model may be used from any
number of threads and its streams consumed anywhere. A generation step crosses into C++ once:
evaluate the new token and sample the next one there, with the GIL released.
"""
from __future__ import annotations

import functools
import os
import signal
import threading
import warnings
import weakref
from dataclasses import asdict, make_dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pyllm import _core, _validate, hub
from pyllm.chat import completions
from pyllm.generate.engine import DEFAULT_SAMPLING as _D
from pyllm.generate.engine import Completion, Engine, SamplingParams, Slot, TokenStream  # noqa: F401 (re-exported)
from pyllm.errors import ContextOverflowError, GGUFError, ModelFileChangedError, UnsupportedModelError
from pyllm.gguf import GGUFFile
from pyllm.tokenizer import Tokenizer

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


def _file_identity(path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of path, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_file_identity(path, identity) -> None:
    """Raises ModelFileChangedError if the mapped file was truncated or rewritten in place
    since the load (a truncated mapping raises SIGBUS on the next read of a weight). One stat,
    ~2 us. What remains: a file changed during an evaluation, between this check and the reads.
    A file replaced by a rename is no problem: the mapping keeps the old one."""
    now = _file_identity(path)
    if now is not None and now[:2] == identity[:2] and now != identity:
        raise ModelFileChangedError(
            f"the model file {path} was modified after it was loaded (size {identity[2]} -> "
            f"{now[2]} bytes); its weights can no longer be used. Load the model again.")


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
                 cache_type_k: str | None = None, cache_type_v: str | None = None, n_parallel: int = 1,
                 max_queue: int | None = None):
        """n_ctx: positions of each sequence's KV cache. n_parallel: sequences generated at once
        (slots, each with its own KV cache of n_ctx positions, allocated when first used); more
        requests wait in a queue, of at most max_queue (None: unbounded; beyond it
        pyllm.QueueFullError)."""
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
            if hasattr(signal, "pthread_sigmask"):  # Ctrl-C belongs to the main thread (engine.py)
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                loaded["model"] = _core.Model(cfg, tensors, keep_alive=self._file, repack=repack)
            except BaseException as e:  # re-raised below, on the caller's thread
                loaded["error"] = e

        loader = threading.Thread(target=load_weights, name="pyllm-load-weights")
        loader.start()
        try:
            self.tokenizer = Tokenizer.from_metadata(self.metadata)
            nonfinite = self._file.nonfinite_sample()  # NaN/inf weights: warned about below
        finally:
            loader.join()
        if self.tokenizer.n_vocab != self.config.n_vocab:
            raise GGUFError(f"the tokenizer has {self.tokenizer.n_vocab} tokens but "
                            f"{self.config.arch}.vocab_size is {self.config.n_vocab}")
        if "error" in loaded:
            raise loaded["error"]
        self._model = loaded["model"]
        if nonfinite:
            names = ", ".join(f"{name} ({n})" for name, n in nonfinite[:5]) + (" ..." if len(nonfinite) > 5 else "")
            warnings.warn(f"{self.path}: NaN or infinite weights in {len(nonfinite)} tensor(s): {names}; "
                          f"the model's output will be NaN (the file is damaged or badly converted)",
                          RuntimeWarning, stacklevel=2)

        self.n_ctx = int(n_ctx) if n_ctx is not None else min(self.config.n_ctx_train, 4096)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {self.n_ctx}")
        kv_bytes = _core.Model.kv_cache_bytes(cfg, self.n_ctx, self.cache_type_k, self.cache_type_v)
        mem = _physical_memory()
        if mem is not None and kv_bytes > mem // 2:
            raise ValueError(f"n_ctx={self.n_ctx} needs {kv_bytes / 2**30:.1f} GiB of KV cache; this machine "
                             f"has {mem / 2**30:.1f} GiB of memory. Use a smaller n_ctx.")
        self.n_threads = n_threads or _core.default_threads()
        self.n_batch = min(n_batch, self.n_ctx)
        self.kv_cache_bytes = kv_bytes  # per sequence, at n_ctx; pages are touched only as positions fill
        self.name = str(self.metadata.get("general.name") or Path(self.path).stem)
        # The engine owns every evaluation: its scheduler thread runs the forward passes of all
        # requests (from any thread) in slots of their own. Its closures hold the weights, never
        # this Model, so dropping the Model stops the engine.
        self._engine = Engine(
            functools.partial(_core.Context, self._model, self.n_ctx, self.n_batch, self.n_threads,
                              self.cache_type_k, self.cache_type_v),
            n_slots=n_parallel, n_ctx=self.n_ctx, n_vocab=self.config.n_vocab, eog_ids=set(self.tokenizer.eog_ids),
            check=functools.partial(_check_file_identity, self.path, self._file_identity), max_queue=max_queue,
            n_batch=self.n_batch, batched=os.environ.get("PYLLM_BATCHED_DECODE", "1") != "0")
        self._finalizer = weakref.finalize(self, self._engine.close)

    # --- lifecycle

    def close(self) -> None:
        """Releases the weights and cache. The model cannot be used afterwards; generations in
        flight end with ValueError."""
        self._engine.close()
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

    @property
    def n_parallel(self) -> int:
        return self._engine.n_slots

    @property
    def engine(self) -> Engine:
        """The generation engine (its queue, slots and counters: engine.snapshot(), engine.stats)."""
        return self._engine

    @property
    def gguf(self) -> GGUFFile:
        """The model's GGUF file, open while the model is: metadata, metadata_types, tensors."""
        return self._file

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights the forward pass reads (mapped from the file, or repacked at load)."""
        return self._model.weight_bytes

    @property
    def repacked_bytes(self) -> int:
        """Of weight_bytes, those held in copies made at load (x8 layouts, float matrices)."""
        return self._model.repacked_bytes

    def context(self):
        """Slot 0's C++ Context (eval(ids, all_logits), truncate(n), n_past), after the model-file
        check, for tools that drive the forward pass directly (pyllm bench, tests). Not safe while
        the engine is generating; reset() afterwards, so no request reuses what it left cached."""
        if self._model is None:
            raise ValueError("the model is closed")
        self.check_file()
        return self._engine.slot0().ctx

    def reset(self) -> None:
        """Empties slot 0's KV cache: the next evaluation reuses no cached prefix."""
        self._engine.slot0().truncate(0)

    # Slot 0's Context and cached tokens without the file check (tests).
    @property
    def _ctx(self):
        return self._engine.slot0().ctx

    @property
    def _cached(self) -> list[int]:
        return self._engine.slot0().cached

    @_cached.setter
    def _cached(self, tokens: list[int]) -> None:
        self._engine.slot0().cached = list(tokens)

    # --- tokens

    def tokenize(self, text: str | bytes, special: bool = False, add_bos: bool | None = None) -> list[int]:
        """Text to token ids. special=True turns special-token text (e.g. <|im_start|>) into its id."""
        return self.tokenizer.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        return self.tokenizer.detokenize(ids, special=special)

    # --- evaluation

    def check_file(self) -> None:
        """ModelFileChangedError if the file was modified in place since the load (the engine
        checks before every evaluation step)."""
        _check_file_identity(self.path, self._file_identity)

    def check_ids(self, ids: Sequence[int]) -> np.ndarray:
        """ids as an int32 array; TypeError for non-integers, InvalidTokenError outside the vocabulary."""
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
        arr = self.check_ids(ids)
        if arr.size == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        if arr.size > self.n_ctx:
            raise ContextOverflowError(f"{arr.size} tokens do not fit in the context of {self.n_ctx}")
        if self._model is None:
            raise ValueError("the model is closed")
        n_batch, n_vocab = self.n_batch, self.n_vocab

        def task(slot: Slot, request):
            # On the scheduler thread, n_batch tokens per step, so other streams keep flowing
            # and a cancelled call (Ctrl-C) stops after the current batch. (It holds no reference
            # to the Model: the engine never keeps a Model alive.)
            slot.truncate(0)
            out = np.empty((arr.size, n_vocab), np.float32)
            for i in range(0, arr.size, n_batch):
                part = arr[i:i + n_batch]
                out[i:i + part.size] = slot.ctx.eval(part, True)
                slot.cached.extend(part.tolist())
                if i + n_batch < arr.size:
                    yield None
            return out

        return self._engine.run_task(task)

    # --- generation

    def eog_ids(self) -> set[int]:
        return set(self.tokenizer.eog_ids)

    def generate_tokens(self, prompt_ids: Sequence[int], max_tokens: int | None = None,
                        sampling: SamplingParams | None = None, info: Completion | None = None,
                        constraint=None, speculative=None, logprobs: int | None = None) -> TokenStream:
        """Yields generated token ids (end-of-generation tokens excluded). `info` receives the
        finish reason and counts. The request runs on the engine's scheduler thread: the stream
        may be read from any thread, interleaved with others, or dropped (closing or dropping it
        cancels the request). Slots keep their cache for prefix reuse.
        `constraint` (pyllm.generate.constrain.Constraint): its token mask goes into the sampler each step.
        `speculative` (pyllm.generate.speculative.Speculator): proposals verified in batched evaluations.
        `logprobs`: None, or k >= 0: info.logprobs gets each token's log-probability and the k
        most likely alternatives."""
        sampling = sampling or SamplingParams()
        ids = self.check_ids(prompt_ids).tolist()
        if self._model is None:
            raise ValueError("the model is closed")
        task = None
        if speculative is not None:
            from pyllm.generate import speculative as spec
            task = spec.make_task(self, sampling, constraint, speculative)
        return self._engine.generate(ids, max_tokens, sampling, info, constraint, logprobs, task)

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = None,
                 temperature: float = _D.temperature, top_k: int = _D.top_k, top_p: float = _D.top_p,
                 min_p: float = _D.min_p, repeat_penalty: float = _D.repeat_penalty,
                 presence_penalty: float = _D.presence_penalty, frequency_penalty: float = _D.frequency_penalty,
                 seed: int | None = None, stop: str | Sequence[str] | None = None, stream: bool = False,
                 info: Completion | None = None, response_format=None, grammar=None,
                 speculative: str | None = None, draft_model=None, n_draft: int | None = None,
                 logprobs: int | None = None):
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
            sampling: the same distribution).
        logprobs: k >= 0 fills info.logprobs (see generate_tokens)."""
        ids = list(prompt) if not isinstance(prompt, (str, bytes)) else self.tokenize(prompt, special=True)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, seed=seed)
        info = info if info is not None else Completion()
        hooks = self.generation_hooks(response_format, grammar, speculative, draft_model, n_draft)
        pieces = completions.stream_text(self, ids, max_tokens, params, stop, info, hooks=hooks, logprobs=logprobs)
        if stream:
            return pieces
        return "".join(pieces)

    def generation_hooks(self, response_format=None, grammar=None, speculative=None, draft_model=None,
                         n_draft=None):
        """(constraint, speculator) for generate_tokens, compiled and checked now (before any
        compute); None for what is not asked."""
        constraint = spec = None
        if response_format is not None or grammar is not None:
            from pyllm.generate import constrain
            constraint = constrain.compile_constraint(self.tokenizer, response_format, grammar)
        if speculative is not None or draft_model is not None:
            from pyllm.generate import speculative as speculation
            spec = speculation.make_speculator(self, speculative, draft_model, n_draft)
        return constraint, spec

    # --- OpenAI-shaped API (implemented in pyllm/chat/completions.py)

    def create_chat_completion(self, messages, **kwargs):
        """OpenAI-shaped chat completion dict, or with stream=True an iterator of chunk dicts.
        See pyllm.chat.completions.create_chat_completion for the arguments."""
        return completions.create_chat_completion(self, messages, **kwargs)

    def create_completion(self, prompt, **kwargs):
        """OpenAI-shaped text completion dict (or chunks with stream=True) for a raw prompt."""
        return completions.create_completion(self, prompt, **kwargs)

    def chat(self, messages, **kwargs):
        """The assistant's reply to `messages` (a list of role/content dicts, or one user string):
        a string, or with stream=True an iterator of text pieces."""
        return completions.chat(self, messages, **kwargs)



def _show_completion_signatures() -> None:
    """The OpenAI-shaped methods forward **kwargs to pyllm/chat/completions.py; help() and IDEs should
    show the real keywords (one list, kept there), with `self` in place of `model`."""
    import inspect
    for method, impl in ((Model.create_chat_completion, completions.create_chat_completion),
                         (Model.create_completion, completions.create_completion)):
        sig = inspect.signature(impl)
        params = list(sig.parameters.values())
        method.__signature__ = sig.replace(
            parameters=[params[0].replace(name="self", annotation=inspect.Parameter.empty)] + params[1:])
        method.__doc__ = impl.__doc__


_show_completion_signatures()
