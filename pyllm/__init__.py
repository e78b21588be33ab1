"""pyllm: fast quantized LLM inference on laptop CPUs, from Python."""
import signal as _signal
import sys as _sys


def _import_numpy_leaving_signals_to_the_main_thread():
    # numpy's OpenBLAS starts its worker threads as it is imported. A thread that does not block
    # SIGINT can take Ctrl-C in place of the main thread; Python's handler then only sets a flag
    # and a main thread asleep in readline never raises KeyboardInterrupt (pyllm's own C++
    # threads block every signal: core/threadpool.h). Threads inherit the mask they start with.
    if "numpy" in _sys.modules or not hasattr(_signal, "pthread_sigmask"):
        return
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT, _signal.SIGTERM})
    try:
        import numpy  # noqa: F401
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)


_import_numpy_leaving_signals_to_the_main_thread()

from pyllm import _core  # noqa: E402
from pyllm.errors import (ChatTemplateError, ContextOverflowError, DraftModelError,  # noqa: E402
                          GGUFError, GrammarError, InvalidTokenError, ModelFileChangedError, ModelNotFoundError,
                          NumericalError, PyllmError, QuantizeError, QueueFullError, TokenizerError,
                          UnsupportedModelError)

_MODEL_NAMES = ("Completion", "Model", "ModelConfig", "SamplingParams")


def __getattr__(name: str):
    # The model module (tokenizer, regex, the hub's downloader) loads on first use, so commands
    # that never build a Model (quantize, info, system) start ~0.05 s sooner.
    if name in _MODEL_NAMES:
        from pyllm import model
        return getattr(model, name)
    raise AttributeError(f"module 'pyllm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MODEL_NAMES))

__version__ = "0.1.0"


def system_info() -> dict:
    """What this build chose on this CPU: kernel ISA, CPU features, default thread count."""
    return {
        "isa": _core.isa(),
        "available_isas": _core.available_isas(),
        "cpu_features": _core.cpu_features(),
        "default_threads": _core.default_threads(),
        "version": __version__,
    }
