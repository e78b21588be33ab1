"""GGUF files: `reader.GGUFFile`, a view over the C++ reader (metadata, tensor views, checks), and
`writer.write_gguf` / `write_atomically` (typed metadata, streamed tensors, no partial files).
The format's constants come from the C++ reader's tables through `_core`; the `gguf` package is
used only by the tests, as an independent reader and writer.
"""
from pyllm.gguf.reader import WEIGHT_TYPES, GGUFFile, unsupported_type_message
from pyllm.gguf.writer import OutTensor, write_atomically, write_gguf

__all__ = ["WEIGHT_TYPES", "GGUFFile", "OutTensor", "unsupported_type_message", "write_atomically", "write_gguf"]
