// The BatchNorm + activation passes compiled with AVX-512 (setup.py adds this file, with the
// AVX-512 flags, where the build machine has AVX-512). batch_norm_activation.cpp calls them on
// CPUs that have it.
#include "batch_norm_activation_kernels.h"

#ifndef CPU_CAPABILITY_AVX512
#error "compile with -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 (see setup.py)"
#endif

namespace mobilefuse {
namespace batch_norm {
namespace AVX512 {

template void forward<float>(const float*, const float*, const float*, float*, const Shape&,
                             Act, ImageAffine<float>);
template void forward<double>(const double*, const double*, const double*, double*,
                              const Shape&, Act, ImageAffine<double>);
template void gradient_sums<float>(const float*, const float*, const float*, const float*,
                                   const float*, double*, double*, const Shape&, Act,
                                   ImageAffine<float>);
template void gradient_sums<double>(const double*, const double*, const double*, const double*,
                                    const double*, double*, double*, const Shape&, Act,
                                    ImageAffine<double>);
template void input_gradient<float>(const float*, const float*, const float*, const float*,
                                    const float*, const float*, const float*, const float*,
                                    float*, const Shape&, Act, ImageAffine<float>);
template void input_gradient<double>(const double*, const double*, const double*,
                                     const double*, const double*, const double*, const double*,
                                     const double*, double*, const Shape&, Act,
                                     ImageAffine<double>);

template void statistics<float>(const float*, double*, double*, const Shape&);
template void statistics<double>(const double*, double*, double*, const Shape&);

}  // namespace AVX512
}  // namespace batch_norm
}  // namespace mobilefuse
