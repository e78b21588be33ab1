"""pyllm: fast quantized LLM inference on laptop CPUs, from Python."""
from pyllm import _core
from pyllm.errors import (ChatTemplateError, ContextOverflowError, GGUFError, InvalidTokenError,
                          ModelFileChangedError, ModelNotFoundError, NumericalError, PyllmError, QuantizeError,
                          UnsupportedModelError)

from pyllm.errors import DraftModelError, GrammarError, TokenizerError

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
