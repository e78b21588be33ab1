// AVX-512 K-quant kernels (Q2_K..Q6_K against Q8_K, and the Q8_K activation quantizer).
#include "kernels/kernels.h"

namespace pyllm {
void register_kquant_avx512_kernels(KernelTable&) {}
} // namespace pyllm
