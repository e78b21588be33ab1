"""Exception types. Every error pyllm raises on bad input is one of these (or a built-in
ValueError/OSError/KeyboardInterrupt), with a message that names the problem."""


class PyllmError(Exception):
    """Base class of pyllm's own errors."""


class GGUFError(PyllmError, ValueError):
    """A GGUF file is malformed, truncated or hostile. The message names the field and byte offset."""


class TokenizerError(GGUFError):
    """The tokenizer metadata of a model is malformed (wrong element types, lengths that disagree
    with the vocabulary, special-token ids outside it, bad byte tokens). Names the key and value."""


class UnsupportedModelError(PyllmError):
    """A well-formed model that pyllm cannot run (architecture, tensor type)."""


class ContextOverflowError(PyllmError, ValueError):
    """More tokens than the context holds."""


class InvalidTokenError(PyllmError, ValueError):
    """A token id outside the vocabulary."""


class ChatTemplateError(PyllmError):
    """A chat template is missing, broken, or tried to escape its sandbox."""


class QuantizeError(PyllmError):
    """The quantizer could not produce the requested output."""


class ModelNotFoundError(PyllmError, FileNotFoundError):
    """A model name or path that resolves to nothing."""


class ModelFileChangedError(PyllmError, OSError):
    """The model's GGUF file was truncated or rewritten in place after it was loaded: its mapped
    weights can no longer be trusted (and reading a truncated mapping would crash the process).
    Load the model again."""


class NumericalError(PyllmError, ValueError):
    """The model produced no usable numbers (all logits NaN or infinite): NaN/Inf weights in the
    file, or an overflow in the forward pass."""


class GrammarError(PyllmError, ValueError):
    """A response_format, JSON schema, regex or grammar that cannot be compiled (raised before any
    model evaluation)."""


class DraftModelError(PyllmError, ValueError):
    """A speculative-decoding setup that cannot work: a draft model whose vocabulary differs from
    the target's, an unknown `speculative` mode."""


class QueueFullError(PyllmError):
    """A model's generation engine already has max_queue requests waiting for a slot (pyllm
    serve answers 429); try again later."""
