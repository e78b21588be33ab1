// Picks the kernel table once, from the CPU's features (cpuid/xgetbv on x86; on ARM the hwcaps on
// Linux, sysctl hw.optional.arm.* on macOS, IsProcessorFeaturePresent on Windows).
// This file is compiled for the baseline ISA: it only asks questions, it never runs SIMD.
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/common.h"
#include "kernels/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>  // GCC and Clang (clang-cl on Windows too)
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(__aarch64__) && defined(_WIN32)
#define NOMINMAX
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#endif

namespace pyllm {

namespace {

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false, bmi2 = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false, avx512bf16 = false;
    bool neon = false, dotprod = false, i8mm = false, fp16 = false;
    std::string names;
};

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, nullptr) >= 7) {
        __cpuid(1, a, b, c, d);
        const bool osxsave = c & (1u << 27);
        const bool avx = c & (1u << 28);
        f.fma = c & (1u << 12);
        f.f16c = c & (1u << 29);
        // The OS must save the wide registers across context switches (XCR0), or using them corrupts state.
        unsigned long long xcr0 = 0;
        if (osxsave) {
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            xcr0 = ((unsigned long long)hi << 32) | lo;
        }
        const bool os_ymm = (xcr0 & 0x6) == 0x6;
        const bool os_zmm = (xcr0 & 0xe6) == 0xe6;
        __cpuid_count(7, 0, a, b, c, d);
        f.avx2 = avx && os_ymm && (b & (1u << 5));
        f.bmi2 = b & (1u << 8);
        f.fma = f.fma && os_ymm;
        f.f16c = f.f16c && os_ymm;
        f.avx512f = os_zmm && (b & (1u << 16));
        f.avx512dq = f.avx512f && (b & (1u << 17));
        f.avx512bw = f.avx512f && (b & (1u << 30));
        f.avx512vl = f.avx512f && (b & (1u << 31));
        f.avx512vnni = f.avx512f && (c & (1u << 11));
        __cpuid_count(7, 1, a, b, c, d);
        f.avx512bf16 = f.avx512f && (a & (1u << 5));
    }
    const std::pair<bool, const char*> named[] = {
        {f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"}, {f.bmi2, "bmi2"}, {f.avx512f, "avx512f"},
        {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"}, {f.avx512dq, "avx512dq"},
        {f.avx512vnni, "avx512vnni"}, {f.avx512bf16, "avx512bf16"}};
#elif defined(__aarch64__)
    f.neon = true;
#if defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
#ifdef HWCAP_ASIMDDP
    f.dotprod = hw & HWCAP_ASIMDDP;
#endif
#ifdef HWCAP_FPHP
    f.fp16 = (hw & HWCAP_FPHP) && (hw & HWCAP_ASIMDHP);
#endif
#ifdef HWCAP2_I8MM
    f.i8mm = hw2 & HWCAP2_I8MM;
#endif
    (void)hw2;
#elif defined(__APPLE__)
    // Apple Silicon reports each ARMv8 feature as a sysctl; 1 when present.
    auto sysctl_flag = [](const char* name) {
        int v = 0;
        size_t len = sizeof(v);
        return sysctlbyname(name, &v, &len, nullptr, 0) == 0 && v == 1;
    };
    f.dotprod = sysctl_flag("hw.optional.arm.FEAT_DotProd");
    f.fp16 = sysctl_flag("hw.optional.arm.FEAT_FP16");
    f.i8mm = sysctl_flag("hw.optional.arm.FEAT_I8MM");
#elif defined(_WIN32)
    // Windows reports dot product; every Windows-on-ARM CPU with it is ARMv8.2 with FP16 too.
    f.dotprod = IsProcessorFeaturePresent(43 /* PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE */);
    f.fp16 = f.dotprod;
#endif
    const std::pair<bool, const char*> named[] = {{f.neon, "neon"}, {f.dotprod, "dotprod"}, {f.i8mm, "i8mm"}, {f.fp16, "fp16"}};
#else
    const std::pair<bool, const char*> named[] = {{false, ""}};
#endif
    for (const auto& [have, name] : named) {
        if (!have) continue;
        if (!f.names.empty()) f.names += ' ';
        f.names += name;
    }
    return f;
}

const CpuFeatures& features() {
    static const CpuFeatures f = detect();
    return f;
}

struct Candidate {
    const char* name;
    bool (*runs_here)(const CpuFeatures&);
    const KernelTable* (*table)();
};

// Best first.
const Candidate kCandidates[] = {
    {"avx512", [](const CpuFeatures& f) { return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.avx2 && f.fma && f.f16c && f.bmi2; }, kernel_table_avx512},
    {"avx2",   [](const CpuFeatures& f) { return f.avx2 && f.fma && f.f16c && f.bmi2; }, kernel_table_avx2},
    {"neon",   [](const CpuFeatures& f) { return f.neon && f.dotprod && f.fp16; }, kernel_table_neon},
    {"ref",    [](const CpuFeatures&) { return true; }, kernel_table_ref},
};

const KernelTable& choose() {
    const char* forced = std::getenv("PYLLM_ISA");
    if (forced && *forced) {
        const KernelTable* t = kernel_table_by_name(forced);
        if (!t) {
            int n = 0;
            const char* const* names = available_isas(&n);
            std::string avail;
            for (int i = 0; i < n; ++i) avail += std::string(i ? ", " : "") + names[i];
            fail(ErrorKind::invalid_argument, std::string("PYLLM_ISA=") + forced +
                 " is not available on this CPU/build (available: " + avail + ")");
        }
        return *t;
    }
    for (const Candidate& c : kCandidates) {
        if (!c.runs_here(features())) continue;
        if (const KernelTable* t = c.table()) return *t;
    }
    return *kernel_table_ref();
}

} // namespace

const KernelTable& kernels() {
    static const KernelTable& t = choose();
    return t;
}

const KernelTable* kernel_table_by_name(const char* isa) {
    for (const Candidate& c : kCandidates) {
        if (std::strcmp(c.name, isa) != 0) continue;
        if (!c.runs_here(features())) return nullptr;
        return c.table();
    }
    return nullptr;
}

const char* const* available_isas(int* count) {
    static const char* names[sizeof(kCandidates) / sizeof(kCandidates[0])];
    static int n = [] {
        int k = 0;
        for (const Candidate& c : kCandidates)
            if (c.runs_here(features()) && c.table()) names[k++] = c.name;
        return k;
    }();
    *count = n;
    return names;
}

const char* cpu_features() { return features().names.c_str(); }

} // namespace pyllm
