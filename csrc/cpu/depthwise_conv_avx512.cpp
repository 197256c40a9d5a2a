// The depthwise kernels for channels_last (and NCHW through channel blocks) compiled with
// AVX-512 (setup.py adds this file, with the AVX-512 flags, where the build machine has
// AVX-512). depthwise_conv.cpp calls them on CPUs that have it.
#include "depthwise_channel_blocks.h"

#ifndef CPU_CAPABILITY_AVX512
#error "compile with -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 (see setup.py)"
#endif

namespace mobilefuse {
namespace depthwise {
namespace AVX512 {

template void forward_nhwc<float>(const float*, const float*, const float*, float*,
                                  const Geometry&, Act, float*);
template void forward_nhwc<double>(const double*, const double*, const double*, double*,
                                   const Geometry&, Act, double*);
template void forward_nhwc_by_image<float>(const float*, const float*, const float*, float*,
                                           const Geometry&, Act,
                                           const std::function<void(int64_t, const float*)>&);
template void forward_nhwc_by_image<double>(const double*, const double*, const double*,
                                            double*, const Geometry&, Act,
                                            const std::function<void(int64_t, const double*)>&);
template void backward_nhwc<float>(const float*, const float*, const float*, const float*,
                                   float*, float*, float*, const Geometry&, Act, GradMask);
template void backward_nhwc<double>(const double*, const double*, const double*,
                                    const double*, double*, double*, double*, const Geometry&,
                                    Act, GradMask);
template void forward_nchw_blocked<float>(const float*, const float*, const float*, float*,
                                          const Geometry&, Act);
template void forward_nchw_blocked<double>(const double*, const double*, const double*,
                                           double*, const Geometry&, Act);
template void backward_nchw_blocked<float>(const float*, const float*, const float*,
                                           const float*, float*, float*, float*,
                                           const Geometry&, Act, GradMask);
template void backward_nchw_blocked<double>(const double*, const double*, const double*,
                                            const double*, double*, double*, double*,
                                            const Geometry&, Act, GradMask);

}  // namespace AVX512
}  // namespace depthwise
}  // namespace mobilefuse
