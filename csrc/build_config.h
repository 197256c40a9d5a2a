// Build settings passed by setup.py as -D flags, turned into strings here.
#pragma once

#if defined(MOBILEFUSE_ISA_AVX2)
#define MOBILEFUSE_VECTOR_ISA "avx2"
#else
#define MOBILEFUSE_VECTOR_ISA "default"
#endif

// AVX-512 copies of the channels_last depthwise kernels, used on CPUs that have AVX-512.
#if defined(MOBILEFUSE_AVX512_KERNELS)
#define MOBILEFUSE_HAS_AVX512_KERNELS true
#else
#define MOBILEFUSE_HAS_AVX512_KERNELS false
#endif
