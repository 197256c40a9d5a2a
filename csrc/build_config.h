// Build settings passed by setup.py as -D flags, turned into strings here.
#pragma once

#if defined(MOBILEFUSE_ISA_AVX512)
#define MOBILEFUSE_VECTOR_ISA "avx512"
#elif defined(MOBILEFUSE_ISA_AVX2)
#define MOBILEFUSE_VECTOR_ISA "avx2"
#else
#define MOBILEFUSE_VECTOR_ISA "default"
#endif
