"""pyllm: fast quantized LLM inference on laptop CPUs, from Python."""
from pyllm import _core
from pyllm.errors import (ChatTemplateError, ContextOverflowError, GGUFError, InvalidTokenError,
                          ModelNotFoundError, PyllmError, QuantizeError, UnsupportedModelError)

from pyllm.model import Completion, Model, ModelConfig, SamplingParams
from pyllm.errors import TokenizerError

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
