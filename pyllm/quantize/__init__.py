"""`pyllm quantize`: convert a GGUF model to another tensor type, round-to-nearest (bit-exact with
llama.cpp's llama-quantize, including its per-tensor mixes such as Q4_K_M), importance-weighted
(`--method imatrix`), or with GPTQ (`--method gptq`) calibrated through pyllm's own forward pass.

  types.py        what TYPE means (llama_ftype) and which tensor gets which type (the mix rules)
  pipeline.py     quantize_file: checks, conversion on worker threads, the atomic write
  calibration.py  imatrix / GPTQ statistics, layer by layer through the forward pass
  cli.py          the command line

Not here: the quantizers themselves (C++: csrc/quant), the GGUF writer (pyllm.gguf.writer), the
measurement of quality (pyllm.perplexity).
"""
from pyllm.quantize.calibration import calibration_tokens
from pyllm.quantize.cli import add_arguments, main, options_from_args, run
from pyllm.quantize.pipeline import QuantizeOptions, QuantizeReport, quantize_file
from pyllm.quantize.types import (ALIASES, FILE_TYPES, GPTQ_TYPES, METHODS, WEIGHTED_TYPES, FileType, TypeOptions,
                                  bits_per_weight, choose_types, file_type, tensor_type, type_id, type_name,
                                  valid_type_names)

__all__ = ["ALIASES", "FILE_TYPES", "GPTQ_TYPES", "METHODS", "WEIGHTED_TYPES", "FileType", "QuantizeOptions",
           "QuantizeReport", "TypeOptions", "add_arguments", "bits_per_weight", "calibration_tokens",
           "choose_types", "file_type", "main", "options_from_args", "quantize_file", "run", "tensor_type",
           "type_id", "type_name", "valid_type_names"]
