// Which vector ISA the CPU kernels run with: the AVX-512 copies (compiled from the *_avx512.cpp
// files where the build machine has AVX-512) only on CPUs where ATen picks AVX-512 too, so
// ATEN_CPU_CAPABILITY=avx2 turns them off as well.
#pragma once

#include <ATen/Version.h>

namespace mobilefuse {

#ifdef MOBILEFUSE_AVX512_KERNELS
inline bool use_avx512() {
  static const bool has = at::get_cpu_capability() == "AVX512";
  return has;
}
#endif

}  // namespace mobilefuse
