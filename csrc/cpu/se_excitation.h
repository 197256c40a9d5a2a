// Squeeze-and-excitation's excitation on CPU, one image at a time: from the per-channel sums
// of an image to its per-channel gate, as dot products along contiguous weight rows. Shared by
// the fused depthwise + SE op (each image excited by the thread that convolved it) and the SE
// inference op (small batches, where two tiny GEMMs and their elementwise steps through torch
// cost more in call overhead than in arithmetic).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <optional>

namespace mobilefuse {
namespace se {

// w_reduce (R, C), w_expand (C, R), biases (R,) and (C,), all in x's dtype and on its device.
inline void check_se_weights(const char* op, const at::Tensor& x, const at::Tensor& w_reduce,
                             const std::optional<at::Tensor>& b_reduce,
                             const at::Tensor& w_expand,
                             const std::optional<at::Tensor>& b_expand) {
  const int64_t C = x.size(1);
  TORCH_CHECK(w_reduce.dim() == 2 && w_reduce.size(1) == C, op,
              ": w_reduce must have shape (R, C) with C=", C, ", got ", w_reduce.sizes());
  const int64_t R = w_reduce.size(0);
  TORCH_CHECK(w_expand.dim() == 2 && w_expand.size(0) == C && w_expand.size(1) == R, op,
              ": w_expand must have shape (C, R) = (", C, ", ", R, "), got ", w_expand.sizes());
  TORCH_CHECK(!b_reduce.has_value() || (b_reduce->dim() == 1 && b_reduce->size(0) == R), op,
              ": b_reduce must have shape (R,) with R=", R);
  TORCH_CHECK(!b_expand.has_value() || (b_expand->dim() == 1 && b_expand->size(0) == C), op,
              ": b_expand must have shape (C,) with C=", C);
  for (const at::Tensor* t : {&w_reduce, &w_expand, b_reduce ? &*b_reduce : nullptr,
                              b_expand ? &*b_expand : nullptr}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                ": the squeeze-and-excitation weights must match x's dtype and device");
  }
}

// activation_name: what the calling op names its SE activation argument.
inline void check_se_options(const char* op, const char* activation_name,
                             c10::string_view activation, c10::string_view gate) {
  TORCH_CHECK(activation == "relu" || activation == "silu", op, ": ", activation_name,
              " must be relu or silu, got ", activation);
  TORCH_CHECK(gate == "sigmoid" || gate == "hardsigmoid", op,
              ": gate must be sigmoid or hardsigmoid, got ", gate);
}

// The excitation of one image from its per-channel sums (mean = sum * inv_pixels); weights
// as given: w1 (R, C) and w2 (C, R), each output a dot product along a contiguous row.
template <typename T>
struct ImageExcitation {
  const T *w1, *b1, *w2, *b2;
  int64_t R, C;
  bool silu, sigmoid;
  T inv_pixels;

  // sum over i < len of a[i] * b[i].
  static T dot(const T* a, const T* b, int64_t len) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t V = Vec::size();
    Vec acc(0);
    for (int64_t i = 0; i < len; i += V) {
      const int64_t n = std::min(V, len - i);
      acc = at::vec::fmadd(Vec::loadu(a + i, n), Vec::loadu(b + i, n), acc);
    }
    return at::vec::vec_reduce_all<T>([](Vec x, Vec y) { return x + y; }, acc);
  }

  // gate[c] for c < C from the image's sums; hidden is scratch of R values.
  void gate_values(const T* sums, T* hidden, T* gate) const {
    using Vec = at::vec::Vectorized<T>;
    const Vec one(1), zero(0);
    for (int64_t r = 0; r < R; ++r) {
      hidden[r] = dot(w1 + r * C, sums, C) * inv_pixels + (b1 ? b1[r] : T(0));
    }
    // The activation and the gate over whole vectors: per-value scalar exp() costs more than
    // the excitation's dot products for wide layers (1152 channels: ~20 us an image).
    if (silu) {
      at::vec::map([&](Vec v) { return v / (one + v.neg().exp_u20()); }, hidden, hidden, R);
    } else {
      at::vec::map([&](Vec v) { return at::vec::maximum(v, zero); }, hidden, hidden, R);
    }
    for (int64_t c = 0; c < C; ++c) {
      gate[c] = dot(w2 + c * R, hidden, R) + (b2 ? b2[c] : T(0));
    }
    if (sigmoid) {
      at::vec::map([&](Vec z) { return one / (one + z.neg().exp_u20()); }, gate, gate, C);
    } else {
      const Vec three(3), six(6);
      at::vec::map([&](Vec z) { return at::vec::clamp(z + three, zero, six) / six; }, gate,
                   gate, C);
    }
  }

  // The image's gate applied in place on its output (pixels x C, NHWC) while that output is
  // still in cache.
  void operator()(T* out, int64_t pixels, const T* sums, T* hidden, T* gate) const {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t V = Vec::size();
    gate_values(sums, hidden, gate);
    for (int64_t p = 0; p < pixels; ++p) {
      T* o = out + p * C;
      for (int64_t c = 0; c < C; c += V) {
        const int64_t n = std::min(V, C - c);
        (Vec::loadu(o + c, n) * Vec::loadu(gate + c, n)).store(o + c, n);
      }
    }
  }
};

// The SE weights in the type the excitation runs in (float32, float64 for float64),
// contiguous; both routes of the excitation from them.
struct ExcitationWeights {
  at::Tensor w1, w2;
  std::optional<at::Tensor> b1, b2;

  ExcitationWeights(const at::Tensor& w_reduce, const std::optional<at::Tensor>& b_reduce,
                    const at::Tensor& w_expand, const std::optional<at::Tensor>& b_expand,
                    at::ScalarType ct)
      : w1(w_reduce.to(ct).contiguous()),
        w2(w_expand.to(ct).contiguous()),
        b1(as(b_reduce, ct)),
        b2(as(b_expand, ct)) {}

  // Image by image in C++ (scalar_t: ct); the sums of an image times inv_pixels are its means.
  template <typename T>
  ImageExcitation<T> by_image(bool silu, bool sigmoid, T inv_pixels) const {
    return {w1.const_data_ptr<T>(), b1 ? b1->const_data_ptr<T>() : nullptr,
            w2.const_data_ptr<T>(), b2 ? b2->const_data_ptr<T>() : nullptr,
            w1.size(0), w2.size(0), silu, sigmoid, inv_pixels};
  }

  // The gate (N, C) of the pooled means (N, C) through torch's GEMM: many images, or wide
  // layers, where that beats the dot products.
  at::Tensor gate_by_gemm(const at::Tensor& pooled, c10::string_view activation,
                          c10::string_view gate) const {
    at::Tensor hidden = at::linear(pooled, w1, b1);
    hidden = activation == "relu" ? hidden.relu_() : at::silu_(hidden);
    at::Tensor z = at::linear(hidden, w2, b2);
    return gate == "sigmoid" ? z.sigmoid_() : at::hardsigmoid_(z);
  }

 private:
  static std::optional<at::Tensor> as(const std::optional<at::Tensor>& t, at::ScalarType ct) {
    return t.has_value() ? std::optional<at::Tensor>(t->to(ct).contiguous()) : std::nullopt;
  }
};

}  // namespace se
}  // namespace mobilefuse
