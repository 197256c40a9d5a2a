// The ISA-independent parts of the depthwise kernels: the activation, the convolution's
// geometry and which gradients to compute. Shared by every vector-ISA build of the kernels.
#pragma once

#include <cstdint>

namespace mobilefuse {
namespace depthwise {

enum class Act { kNone, kRelu, kRelu6, kHardSwish, kSilu };

struct Geometry {
  int64_t batch, channels, height, width, out_h, out_w;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  // NCHW padded plane: rows, column phases, and the stride of one phase row, which leaves
  // room for a full vector load past its last column (those lanes are never stored).
  int64_t padded_h() const { return height + 2 * ph; }
  int64_t phase_len() const { return (width + 2 * pw + sw - 1) / sw + 16; }
  int64_t plane_buffer() const { return padded_h() * sw * phase_len(); }
  int64_t taps() const { return kh * kw; }
};

struct GradMask {
  bool input, weight, bias;
};

}  // namespace depthwise
}  // namespace mobilefuse
