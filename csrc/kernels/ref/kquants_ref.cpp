// K-quant . Q8_K reference dot products. PLACEHOLDER until the quant work lands: registers nothing.
#include "kernels/ref/ref.h"
namespace pyllm {
void register_kquant_ref_kernels(KernelTable&) {}
} // namespace pyllm
