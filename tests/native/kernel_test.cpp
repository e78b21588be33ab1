// Standalone kernel test (no Python): every kernel table this CPU runs against the reference
// table. Built by tools/test_neon.sh, cross-compiled for aarch64 and run under qemu, or natively
// (x86: AVX2/AVX-512, optionally with sanitizers). The same checks as tests/test_kernels.py:
//   gemm          within 1e-6 of the sum of |products| (float accumulation order only)
//   quantize_act  byte-identical      to_float, f32_to_f16  bit-identical
//   pv_f16, swiglu within float rounding
//   xtx_tile      within 1e-6 of the sum of |products| of the exact (double) XᵀX, every table
// Prints "kernel_test: N passed, M failed" and exits non-zero on any failure.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "core/threadpool.h"
#include "kernels/kernels.h"
#include "quant/blocks.h"
#include "quant/types.h"

using namespace pyllm;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
    if (ok) { ++g_passed; return; }
    ++g_failed;
    if (g_failed <= 40) std::printf("FAIL %s\n", what.c_str());
}

// --- test data ------------------------------------------------------------------------------------

struct Range { int lo, hi; };
// Per weight type: offsets of f16 scale fields (kept finite and ordinary), byte ranges of quants
// (randomized; zeroed to expose the offset part of a type with mins), and sub-block scale bytes
// (randomized too).
struct Layout { std::vector<int> halves; std::vector<Range> quants, scales; bool has_min; };

const Layout* layout_of(Type t) {
    static const Layout q4_0{{0}, {{2, 18}}, {}, false}, q4_1{{0, 2}, {{4, 20}}, {}, true},
        q5_0{{0}, {{2, 22}}, {}, false}, q5_1{{0, 2}, {{4, 24}}, {}, true}, q8_0{{0}, {{2, 34}}, {}, false},
        q2_K{{80, 82}, {{16, 80}}, {{0, 16}}, true}, q3_K{{108}, {{0, 96}}, {{96, 108}}, false},
        q4_K{{0, 2}, {{16, 144}}, {{4, 16}}, true}, q5_K{{0, 2}, {{16, 176}}, {{4, 16}}, true},
        q6_K{{208}, {{0, 192}}, {{192, 208}}, false}, iq4_nl{{0}, {{2, 18}}, {}, false},
        iq4_xs{{0}, {{8, 136}}, {{2, 8}}, false};
    switch (t) {
        case TYPE_Q4_0: return &q4_0; case TYPE_Q4_1: return &q4_1; case TYPE_Q5_0: return &q5_0;
        case TYPE_Q5_1: return &q5_1; case TYPE_Q8_0: return &q8_0; case TYPE_Q2_K: return &q2_K;
        case TYPE_Q3_K: return &q3_K; case TYPE_Q4_K: return &q4_K; case TYPE_Q5_K: return &q5_K;
        case TYPE_Q6_K: return &q6_K; case TYPE_IQ4_NL: return &iq4_nl; case TYPE_IQ4_XS: return &iq4_xs;
        default: return nullptr;
    }
}

std::mt19937 g_rng(12345);

std::vector<float> normal(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(g_rng);
    return v;
}

// rows x k weights of type t, every bit pattern of quants and sub-block scales.
std::vector<uint8_t> random_weights(Type t, int rows, int64_t k) {
    const TypeTraits& tt = type_traits(t);
    const size_t rs = row_size(t, k);
    std::vector<uint8_t> w(rs * rows);
    const std::vector<float> x = normal((size_t)rows * k);
    for (int r = 0; r < rows; ++r) tt.from_float(x.data() + (size_t)r * k, w.data() + r * rs, k);
    if (const Layout* L = layout_of(t)) {
        std::uniform_int_distribution<int> byte(0, 255);
        std::normal_distribution<float> nd(0.0f, 0.05f);
        for (size_t b = 0; b < w.size(); b += tt.type_size) {
            for (const auto* ranges : {&L->quants, &L->scales})
                for (const Range& rg : *ranges)
                    for (int j = rg.lo; j < rg.hi; ++j) w[b + j] = (uint8_t)byte(g_rng);
            for (int off : L->halves) {
                const uint16_t h = f32_to_fp16(nd(g_rng));
                std::memcpy(&w[b + off], &h, 2);
            }
        }
    }
    return w;
}

std::vector<float> dequant(const KernelTable& ref, Type t, const uint8_t* q, int rows, int64_t k) {
    std::vector<float> out((size_t)rows * k);
    const size_t rs = row_size(t, k);
    for (int r = 0; r < rows; ++r) ref.to_float[t](q + r * rs, out.data() + (size_t)r * k, k);
    return out;
}

// --- checks ---------------------------------------------------------------------------------------

void test_gemm(const KernelTable& kt, const KernelTable& ref, Type t, int64_t k, bool x8 = false) {
    const TypeTraits& tt = type_traits(t);
    const Type at = tt.vec_dot_type;
    const int max_rows = 17, max_tok = 5;
    const std::vector<uint8_t> w = random_weights(t, max_rows, k);
    const std::vector<float> x = normal((size_t)max_tok * k);
    const size_t w_rs = row_size(t, k), a_rs = row_size(at, k);
    std::vector<uint8_t> act(a_rs * max_tok);
    for (int i = 0; i < max_tok; ++i) ref.quantize_act[at](x.data() + (size_t)i * k, act.data() + i * a_rs, k);

    // |w_j * a_j| summed, with w = d*q + m split into |d*q| + |m| for types with mins.
    const std::vector<float> wf = dequant(ref, t, w.data(), max_rows, k);
    const std::vector<float> af = at == TYPE_F32 ? x : dequant(ref, at, act.data(), max_tok, k);
    std::vector<float> offset(wf.size(), 0.0f);
    if (const Layout* L = layout_of(t); L && L->has_min) {
        std::vector<uint8_t> zeroed = w;
        for (size_t b = 0; b < zeroed.size(); b += tt.type_size)
            for (const Range& rg : L->quants) std::memset(&zeroed[b + rg.lo], 0, rg.hi - rg.lo);
        offset = dequant(ref, t, zeroed.data(), max_rows, k);
    }

    // The x8 layout (where the table repacks t): whole groups through gemm_x8, the tail plain.
    std::vector<uint8_t> packed;
    if (x8) {
        packed.resize(w.size());
        kt.repack_x8[t](w.data(), w_rs, max_rows, k, packed.data());
    }
    for (int rows : {1, 3, 8, 17}) {
        if (x8 && rows != 8 && rows != max_rows) continue;  // x8 rows come whole from the matrix start
        for (int n_tok : {1, 2, 3, 5}) {
            std::vector<float> got((size_t)rows * n_tok), want((size_t)rows * n_tok);
            if (x8) {
                const int full = rows / kX8Rows * kX8Rows;
                kt.gemm_x8[t](k, packed.data(), w_rs, full, act.data(), a_rs, n_tok, got.data(), rows);
                if (rows > full)
                    kt.gemm[t](k, packed.data() + full * w_rs, w_rs, rows - full, act.data(), a_rs, n_tok, got.data() + full, rows);
            } else {
                kt.gemm[t](k, w.data(), w_rs, rows, act.data(), a_rs, n_tok, got.data(), rows);
            }
            ref.gemm[t](k, w.data(), w_rs, rows, act.data(), a_rs, n_tok, want.data(), rows);
            double worst = 0.0;
            for (int tk = 0; tk < n_tok; ++tk)
                for (int r = 0; r < rows; ++r) {
                    double mag = 0.0;
                    for (int64_t j = 0; j < k; ++j) {
                        const double o = offset[(size_t)r * k + j];
                        mag += (std::fabs(wf[(size_t)r * k + j] - o) + std::fabs(o)) * std::fabs(af[(size_t)tk * k + j]);
                    }
                    const double err = std::fabs((double)got[tk * rows + r] - want[tk * rows + r]) / (mag + 1e-30);
                    if (!(err <= worst)) worst = err;  // NaN counts as worst
                }
            check(worst <= 1e-6 && (!x8 || kt.isa != ref.isa || worst == 0.0),
                  std::string(kt.isa) + (x8 ? " gemm_x8 " : " gemm ") + tt.name + " k=" + std::to_string(k) + " rows=" +
                  std::to_string(rows) + " n_tok=" + std::to_string(n_tok) + " rel err " + std::to_string(worst));
        }
    }
}

void test_quantize_act(const KernelTable& kt, const KernelTable& ref, Type at) {
    const int64_t k = at == TYPE_Q8_K ? 4352 : 4128;
    std::vector<std::vector<float>> rows;
    for (float s : {1.0f, 1e-3f, 1e3f, 1e-8f, 3e6f}) rows.push_back(normal(k, s));
    rows.push_back(std::vector<float>(k, 0.0f));
    const float halves[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 3.49999f};
    const float tiny[] = {0.0f, -0.0f, 1e-35f, -3e-36f};
    std::vector<float> h(k), ty(k), ties(k);
    for (int64_t j = 0; j < k; ++j) { h[j] = halves[j % 10]; ty[j] = tiny[j % 4]; ties[j] = (j % 7 == 3) ? -5.0f : ((j % 7 == 5) ? 5.0f : 0.25f); }
    rows.push_back(h);
    rows.push_back(ty);
    rows.push_back(ties);  // +-amax ties: the first one's sign wins (Q8_K)
    const size_t rs = row_size(at, k);
    for (size_t i = 0; i < rows.size(); ++i) {
        std::vector<uint8_t> got(rs), want(rs);
        kt.quantize_act[at](rows[i].data(), got.data(), k);
        ref.quantize_act[at](rows[i].data(), want.data(), k);
        check(got == want, std::string(kt.isa) + " quantize_act " + type_traits(at).name + " row " + std::to_string(i));
    }
}

void test_to_float(const KernelTable& kt, const KernelTable& ref, Type t) {
    const int64_t k = type_traits(t).block_size == QK_K ? 4352 : (type_traits(t).block_size == 1 ? 4131 : 4128);
    std::vector<uint8_t> q;
    if (t == TYPE_Q8_1) {
        const std::vector<float> x = normal(3 * k);
        q.resize(row_size(t, k) * 3);
        for (int r = 0; r < 3; ++r) ref.quantize_act[t](x.data() + r * k, q.data() + r * row_size(t, k), k);
    } else {
        q = random_weights(t, 3, k);
    }
    const std::vector<float> got = dequant(kt, t, q.data(), 3, k), want = dequant(ref, t, q.data(), 3, k);
    check(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0,
          std::string(kt.isa) + " to_float " + type_traits(t).name);
}

void test_f16_helpers(const KernelTable& kt, const KernelTable& ref) {
    for (int n : {1, 7, 8, 31, 64, 129, 1001}) {
        std::vector<float> x = normal(n);
        x.push_back(65520.0f); x.push_back(65519.99f); x.push_back(std::ldexp(1.0f, -25)); x.push_back(3 * std::ldexp(1.0f, -26));
        std::vector<uint16_t> got(x.size()), want(x.size());
        kt.f32_to_f16(x.data(), got.data(), (int64_t)x.size());
        ref.f32_to_f16(x.data(), want.data(), (int64_t)x.size());
        check(got == want, std::string(kt.isa) + " f32_to_f16 n=" + std::to_string(n));

        // swiglu against the reference (its exp is libm's): within a few float roundings.
        std::vector<float> g1(n), g2(n), up = normal(n);
        for (int i = 0; i < n; ++i) g1[i] = g2[i] = 4 * x[i];
        if (n > 2) { g1[0] = g2[0] = -100.0f; g1[1] = g2[1] = 100.0f; }
        kt.swiglu(g1.data(), up.data(), n);
        ref.swiglu(g2.data(), up.data(), n);
        bool ok = true;
        for (int i = 0; i < n; ++i) ok &= std::fabs(g1[i] - g2[i]) <= 1e-6f * std::fabs(g2[i]) + 1e-30f;
        check(ok, std::string(kt.isa) + " swiglu n=" + std::to_string(n));

        // exp_sum (softmax): arguments <= 0 down to underflow, against libm's exp.
        std::vector<float> e1(n), e2(n);
        for (int i = 0; i < n; ++i) e1[i] = e2[i] = -std::fabs(8 * x[i]);
        if (n > 2) { e1[0] = e2[0] = -200.0f; e1[1] = e2[1] = 0.0f; }
        const float s1 = kt.exp_sum(e1.data(), n, 0.5f), s2 = ref.exp_sum(e2.data(), n, 0.5f);
        // The sum's order differs (4 or 8 lanes vs one): bound by float summation's worst case,
        // n * 2^-24 * sum, on top of each term's 1e-6 (n=1001 under qemu failed a flat 1e-6).
        ok = std::fabs(s1 - s2) <= (1e-6f + (float)n * 6e-8f) * s2 + 1e-30f;
        for (int i = 0; i < n; ++i) ok &= std::fabs(e1[i] - e2[i]) <= 1e-6f * e2[i] + 1e-37f;
        check(ok, std::string(kt.isa) + " exp_sum n=" + std::to_string(n));
    }
    // pv_f16: rows x nb probabilities times nb x d f16 values, added to the accumulators.
    for (int rows : {1, 3, 5}) for (int nb : {1, 7, 32}) for (int d : {1, 33, 64, 130}) {
        std::vector<float> p = normal(rows * nb), acc = normal(rows * d), vf = normal(nb * d);
        for (float& v : p) v = std::fabs(v);
        std::vector<uint16_t> v(nb * d);
        ref.f32_to_f16(vf.data(), v.data(), nb * d);
        std::vector<float> a1 = acc, a2 = acc;
        kt.pv_f16(rows, nb, d, p.data(), nb, v.data(), d, a1.data());
        ref.pv_f16(rows, nb, d, p.data(), nb, v.data(), d, a2.data());
        bool ok = true;
        for (int r = 0; r < rows; ++r)
            for (int i = 0; i < d; ++i) {
                double mag = std::fabs(acc[r * d + i]);
                for (int j = 0; j < nb; ++j) mag += std::fabs(p[r * nb + j] * fp16_to_f32(v[j * d + i]));
                ok &= std::fabs(a1[r * d + i] - a2[r * d + i]) <= 1e-6 * mag + 1e-30;
            }
        check(ok, std::string(kt.isa) + " pv_f16 rows=" + std::to_string(rows) + " nb=" + std::to_string(nb) + " d=" + std::to_string(d));
        // pv_f32: the same with V in f32 (a dequantized block of a quantized V cache), V rows
        // d + 3 apart (a strided block).
        std::vector<float> vs((size_t)nb * (d + 3), 7.0f);
        for (int j = 0; j < nb; ++j) std::memcpy(&vs[(size_t)j * (d + 3)], &vf[(size_t)j * d], d * sizeof(float));
        std::vector<float> b1 = acc, b2 = acc;
        kt.pv_f32(rows, nb, d, p.data(), nb, vs.data(), d + 3, b1.data());
        ref.pv_f32(rows, nb, d, p.data(), nb, vs.data(), d + 3, b2.data());
        ok = true;
        for (int r = 0; r < rows; ++r)
            for (int i = 0; i < d; ++i) {
                double mag = std::fabs(acc[r * d + i]);
                for (int j = 0; j < nb; ++j) mag += std::fabs(p[r * nb + j] * vf[j * d + i]);
                ok &= std::fabs(b1[r * d + i] - b2[r * d + i]) <= 1e-6 * mag + 1e-30;
            }
        check(ok, std::string(kt.isa) + " pv_f32 rows=" + std::to_string(rows) + " nb=" + std::to_string(nb) + " d=" + std::to_string(d));
    }
}

// The pool under stress: many small jobs (as decode issues them), more threads than cores, every
// task run exactly once, by a thread index in range, and done when parallel_for returns.
// GPTQ's XᵀX tile: every entry of a few tiles (odd offsets, tails of n) against the double sum.
void test_xtx_tile(const KernelTable& kt) {
    for (int64_t n : {8, 24, 264}) {
        const int64_t k_pad = 72, n_pad = n;
        std::vector<float> xt = normal((size_t)k_pad * n_pad);
        for (int64_t i = 0; i < k_pad; ++i) xt[(size_t)i * n_pad + n_pad - 1] = 0.0f;  // zero padding
        const struct { int64_t i0, ni, j0, nj; } tiles[] = {{0, 64, 0, 64}, {64, 8, 8, 64}, {4, 4, 70, 2}, {68, 4, 60, 12}};
        for (const auto& tl : tiles) {
            const int64_t ld = 64;
            std::vector<float> out((size_t)tl.ni * ld, -1.0f);
            kt.xtx_tile(xt.data(), n_pad, tl.i0, tl.ni, tl.j0, tl.nj, out.data(), ld);
            double worst = 0;
            for (int64_t p = 0; p < tl.ni; ++p)
                for (int64_t q = 0; q < tl.nj; ++q) {
                    const float* a = xt.data() + (tl.i0 + p) * n_pad;
                    const float* b = xt.data() + (tl.j0 + q) * n_pad;
                    double exact = 0, mag = 0;
                    for (int64_t t = 0; t < n_pad; ++t) {
                        exact += (double)a[t] * b[t];
                        mag += std::fabs((double)a[t] * b[t]);
                    }
                    worst = std::max(worst, std::fabs(out[p * ld + q] - exact) / std::max(mag, 1e-30));
                }
            check(worst <= 1e-6, std::string(kt.isa) + " xtx_tile n=" + std::to_string(n) + " i0=" + std::to_string(tl.i0) +
                                     " j0=" + std::to_string(tl.j0) + ": relative error " + std::to_string(worst));
        }
    }
}

void test_thread_pool() {
    for (int n_threads : {2, 3, 5}) {
        ThreadPool pool(n_threads);
        std::vector<std::atomic<int>> hits(64);
        std::uniform_int_distribution<int> count(1, 64);
        bool ok = true;
        for (int job = 0; job < 20000 && ok; ++job) {
            const int n = count(g_rng);
            for (int i = 0; i < n; ++i) hits[i].store(0, std::memory_order_relaxed);
            pool.parallel_for(n, [&](int64_t task, int thread) {
                if (thread < 0 || thread >= n_threads) ok = false;
                hits[task].fetch_add(1, std::memory_order_relaxed);
            });
            for (int i = 0; i < n; ++i) ok = ok && hits[i].load(std::memory_order_relaxed) == 1;
        }
        check(ok, "thread pool with " + std::to_string(n_threads) + " threads: every task exactly once");
    }
}

} // namespace

int main() {
    const KernelTable& ref = *kernel_table_ref();
    int n_isa = 0;
    const char* const* isas = available_isas(&n_isa);
    std::printf("kernel_test: cpu features '%s', tables:", cpu_features());
    for (int i = 0; i < n_isa; ++i) std::printf(" %s", isas[i]);
    std::printf("\n");
    int tested = 0;
    for (int i = 0; i < n_isa; ++i) {
        if (std::strcmp(isas[i], "ref") == 0) continue;
        const KernelTable& kt = *kernel_table_by_name(isas[i]);
        ++tested;
        for (int id = 0; id < TYPE_COUNT; ++id) {
            if (!type_is_known(id)) continue;
            const Type t = (Type)id;
            const TypeTraits& tt = type_traits(t);
            if (kt.gemm[t] && ref.gemm[t]) {
                std::vector<int64_t> ks;
                if (tt.block_size == 1) ks = {1, 31, 33, 257, 4128};
                else if (tt.block_size == QK_K) ks = {256, 768, 4352};
                else ks = {32, 64, 96, 256, 4128};
                for (int64_t k : ks) test_gemm(kt, ref, t, k);
                if (kt.gemm_x8[t]) {
                    if (tt.block_size == QK_K)
                        for (int64_t k : {256, 512, 4352}) test_gemm(kt, ref, t, k, /*x8=*/true);
                    else
                        for (int64_t k : {32, 64, 576, 4128}) test_gemm(kt, ref, t, k, /*x8=*/true);
                }
            }
            if (kt.to_float[t] && t != TYPE_Q8_K && t != TYPE_F32) test_to_float(kt, ref, t);
        }
        for (Type at : {TYPE_Q8_0, TYPE_Q8_1, TYPE_Q8_K}) test_quantize_act(kt, ref, at);
        test_f16_helpers(kt, ref);
        test_xtx_tile(kt);
    }
    test_xtx_tile(ref);
    // The reference x8 gemm is bit-identical to the plain one; x8 rows read back bit-identically.
    for (Type t : {TYPE_Q4_0, TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q8_0, TYPE_IQ4_NL, TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K}) {
        const bool kq = type_traits(t).block_size == QK_K;
        for (int64_t k : {kq ? 256 : 32, kq ? 768 : 576}) test_gemm(ref, ref, t, k, /*x8=*/true);
        const int rows = 19;
        const int64_t k = kq ? 512 : 96;
        const std::vector<uint8_t> w = random_weights(t, rows, k);
        std::vector<uint8_t> packed(w.size());
        ref.repack_x8[t](w.data(), row_size(t, k), rows, k, packed.data());
        const std::vector<float> want = dequant(ref, t, w.data(), rows, k);
        std::vector<float> got((size_t)rows * k);
        for (int r = 0; r < rows; ++r) x8_row_to_float(t, packed.data(), row_size(t, k), rows, r, k, got.data() + (size_t)r * k);
        check(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0, std::string("x8_row_to_float ") + type_traits(t).name);
    }
    test_thread_pool();
    if (tested == 0) check(false, "no SIMD table runs on this CPU/build");
    std::printf("kernel_test: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
