// Calibration runs for quantization: one transformer layer evaluated over a stored residual stream
// (n_seq sequences of seq_len tokens), its matmul inputs sent to a CaptureSink and its outputs
// written back. Quantizing layer by layer this way costs one pass per layer instead of a full
// forward pass per layer.
//
// How: a one-layer Model whose "embedding table" is the stored stream itself, evaluated with
// token ids = row indices. The Context then runs exactly the inference code (same kernels, rope,
// attention, activation quantization), so what is captured is what inference will see.
#pragma once
#include <string>
#include <unordered_map>

#include "model/model.h"

namespace pyllm {

// layer: the layer's tensors named as in layer 0 ("blk.0.attn_q.weight", ...), any types the
// model accepts. hidden_in, hidden_out: (n_seq * seq_len, n_embd) float32 (may not alias).
// The sink sees layer index 0 and every LinearInput (layer_output included).
// The stream is taken as it is (no embedding scale), and attention is global: a calibration
// sequence no longer than the sliding window (every known window is >= 512) sees the same.
void run_layer(const HParams& cfg, const std::unordered_map<std::string, TensorView>& layer,
               const float* hidden_in, float* hidden_out, int64_t n_seq, int seq_len, int n_threads,
               CaptureSink* sink, const StopCheck& stop);

} // namespace pyllm
