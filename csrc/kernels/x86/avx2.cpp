// avx2 kernel table. PLACEHOLDER until the SIMD work lands: reports "not compiled".
#include "kernels/kernels.h"
namespace pyllm {
const KernelTable* kernel_table_avx2() { return nullptr; }
} // namespace pyllm
