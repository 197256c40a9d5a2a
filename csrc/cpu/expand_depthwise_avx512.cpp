// The fused expansion + depthwise kernels compiled with AVX-512 (setup.py adds this file, with
// the AVX-512 flags, where the build machine has AVX-512); expand_depthwise.cpp calls them on
// CPUs that have it.
#include "expand_depthwise_kernels.h"

#ifndef CPU_CAPABILITY_AVX512
#error "compile with -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 (see setup.py)"
#endif

namespace mobilefuse {
namespace depthwise {
namespace AVX512 {

template void expand_forward_nhwc<float>(const float*, const Expansion<float>&, const float*,
                                         const float*, float*, const Geometry&, Act, int64_t,
                                         int64_t, float*, const std::function<void(int64_t)>&);
template void expand_forward_nhwc<double>(const double*, const Expansion<double>&,
                                          const double*, const double*, double*,
                                          const Geometry&, Act, int64_t, int64_t, double*,
                                          const std::function<void(int64_t)>&);

}  // namespace AVX512
}  // namespace depthwise
}  // namespace mobilefuse
