// Depthwise convolution (groups == C, one filter per channel) with a fused bias and
// activation, forward and backward.
//
// One convolution kernel per layout does all the sliding-window work, and its epilogue
// decides what a computed value becomes:
//   forward      out = act(z + b)                      (ForwardEpilogue)
//   backward     dz  = grad_out * act'(z + b)          (GradEpilogue; recomputes z)
//   grad_x       the same convolution of dz with the flipped filter, stride 1 only
//                (GradInputEpilogue); other strides use a gather kernel
// NCHW stages a (plane, tile) input block with its halo in shared memory, each thread
// computing kRows outputs of a column; NHWC puts threads across channels (16-byte
// vectors when C and the pointers allow) and several pixels of a row per thread.
// Filters of 3x3, 5x5 and 7x7 are compile-time sizes; with stride 1 or 2 and no dilation
// the input window also sits in registers, so each loaded value serves several outputs.
//
// grad_w and grad_b are deterministic: each block reduces a fixed chunk of the output
// into a partial sum (accumulation type, in the caller's workspace), and a second kernel
// adds the partials of each (channel, tap) in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "float_math.cuh"
#include "launch_config.cuh"
#include "launchers.h"

namespace mobilefuse::cuda {
namespace {

constexpr int kRows = 4;                  // NCHW outputs per thread (one column)
constexpr size_t kSmemLimit = 48 * 1024;  // default dynamic shared memory limit
constexpr int kWgradChunk = 8192;         // dz elements per grad_w partial (per channel)
constexpr size_t kWorkspaceAlign = 256;

// ---------------------------------------------------------------- numbers

__device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ __forceinline__ double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

template <typename A> __device__ __forceinline__ A act_forward(ConvActivation act, A z) {
  switch (act) {
    case ConvActivation::kNone: return z;
    case ConvActivation::kReLU: return z < A(0) ? A(0) : z;
    case ConvActivation::kReLU6: return clamp_nan(z, A(0), A(6));
    case ConvActivation::kHardSwish: return z * clamp_nan(z + A(3), A(0), A(6)) * A(1.0 / 6.0);
    case ConvActivation::kSiLU: return z * sigmoid(z);
  }
  return z;
}

// g * act'(z), with torch's values at the kinks.
template <typename A> __device__ __forceinline__ A act_backward(ConvActivation act, A z, A g) {
  switch (act) {
    case ConvActivation::kNone: return g;
    case ConvActivation::kReLU: return z > A(0) ? g : A(0);
    case ConvActivation::kReLU6: return (z > A(0) && z < A(6)) ? g : A(0);
    case ConvActivation::kHardSwish:
      if (z <= A(-3)) return A(0);
      if (z >= A(3)) return g;
      return g * (z * A(1.0 / 3.0) + A(0.5));
    case ConvActivation::kSiLU: {
      const A s = sigmoid(z);
      return g * s * (A(1) + z * (A(1) - s));
    }
  }
  return g;
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T, int V> __device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V> __device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

inline bool aligned_to(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// ---------------------------------------------------------------- geometry

// Device-side geometry, in int (the binding checks that every size fits). `in` is the
// tensor being convolved, `out` the one written; for grad_x by convolution they are dz
// and grad_x, with the padding (k - 1) * d - p, which may be negative.
struct Geom {
  int n, c;
  int in_h, in_w, out_h, out_w;
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

inline Geom to_geom(const DepthwiseGeometry& d) {
  return {static_cast<int>(d.n), static_cast<int>(d.c), static_cast<int>(d.h),
          static_cast<int>(d.w), static_cast<int>(d.out_h), static_cast<int>(d.out_w),
          static_cast<int>(d.kh), static_cast<int>(d.kw), static_cast<int>(d.stride_h),
          static_cast<int>(d.stride_w), static_cast<int>(d.pad_h), static_cast<int>(d.pad_w),
          static_cast<int>(d.dil_h), static_cast<int>(d.dil_w)};
}

int sm_count() {
  int device = 0;
  int sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  return std::max(sms, 1);
}

int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v && p < (1 << 30)) p <<= 1;
  return p;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- epilogues

// out = act(z + b), in x's dtype.
template <typename T_>
struct ForwardEpilogue {
  using T = T_;
  using A = accumulate_t<T>;
  T* out;
  const T* bias;
  ConvActivation act;

  bool aligned(size_t vec_elems) const { return aligned_to(out, vec_elems * sizeof(T)); }

  template <int V>
  __device__ __forceinline__ void store(int64_t idx, int c, const A (&acc)[V]) const {
    Pack<T, V> o;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const A z = acc[v] + (bias != nullptr ? widen(bias[c + v]) : A(0));
      o.v[v] = narrow<T>(act_forward(act, z));
    }
    store_pack<T, V>(out + idx, o);
  }
};

// dz = grad_out * act'(z + b), kept in the accumulation type for the backward kernels.
template <typename T_>
struct GradEpilogue {
  using T = T_;
  using A = accumulate_t<T>;
  const T* grad_out;
  A* dz;
  const T* bias;
  ConvActivation act;

  bool aligned(size_t vec_elems) const {
    return aligned_to(grad_out, vec_elems * sizeof(T)) && aligned_to(dz, vec_elems * sizeof(A));
  }

  template <int V>
  __device__ __forceinline__ void store(int64_t idx, int c, const A (&acc)[V]) const {
    const Pack<T, V> g = load_pack<T, V>(grad_out + idx);
    Pack<A, V> d;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const A z = acc[v] + (bias != nullptr ? widen(bias[c + v]) : A(0));
      d.v[v] = act_backward(act, z, widen(g.v[v]));
    }
    store_pack<A, V>(dz + idx, d);
  }
};

// grad_x = the convolution of dz with the flipped filter, no bias, no activation.
template <typename T_>
struct GradInputEpilogue {
  using T = T_;
  using A = accumulate_t<T>;
  T* grad_x;

  bool aligned(size_t vec_elems) const { return aligned_to(grad_x, vec_elems * sizeof(T)); }

  template <int V>
  __device__ __forceinline__ void store(int64_t idx, int, const A (&acc)[V]) const {
    Pack<T, V> o;
#pragma unroll
    for (int v = 0; v < V; ++v) o.v[v] = narrow<T>(acc[v]);
    store_pack<T, V>(grad_x + idx, o);
  }
};

extern __shared__ __align__(16) unsigned char dw_smem[];

// ---------------------------------------------------------------- NCHW convolution

// A block is blockDim.z (n, c) planes, each with the same blockDim.x x (blockDim.y * kRows)
// output tile; the input tile with its halo is staged in shared memory, so each input
// value is read from global memory once per tile. K > 0: a K x K filter (kh == kw == K);
// K == 0: any kh x kw. S > 0 (needs K > 0): stride S in both dimensions and no dilation;
// the filter and a thread's input column sit in registers and each value loaded from
// shared memory serves up to kRows outputs. S == 0: run-time stride and dilation, the
// filter in shared memory after the tile (registers would need run-time indices).
template <typename In, typename Epi, int K, int S>
__global__ void __launch_bounds__(256)
dw_nchw_tile_kernel(const In* __restrict__ in, const typename Epi::T* __restrict__ weight,
                    bool flip, Epi epi, Geom g, int in_th, int in_tw) {
  using A = typename Epi::A;
  static_assert(S == 0 || K > 0, "the register window needs a compile-time filter size");
  const int kh = K > 0 ? K : g.kh;
  const int kw = K > 0 ? K : g.kw;
  const int taps = kh * kw;
  const int tile_w = blockDim.x;
  const int tile_h = blockDim.y * kRows;
  const int tiles_x = (g.out_w + tile_w - 1) / tile_w;
  const int64_t tiles = int64_t{tiles_x} * ((g.out_h + tile_h - 1) / tile_h);
  const int64_t planes = int64_t{g.n} * g.c;
  const int64_t plane_groups = (planes + blockDim.z - 1) / blockDim.z;
  const int tile_elems = in_th * in_tw;
  A* tile = reinterpret_cast<A*>(dw_smem) + threadIdx.z * (tile_elems + (S == 0 ? taps : 0));
  A* wsm = tile + tile_elems;  // S == 0 only
  const int64_t in_plane = int64_t{g.in_h} * g.in_w;
  const int64_t out_plane = int64_t{g.out_h} * g.out_w;

  // A grid-stride loop over (plane group, tile) keeps any problem size within the grid.
  for (int64_t b = blockIdx.x; b < plane_groups * tiles; b += gridDim.x) {
    const int64_t group = b / tiles;
    const int64_t t = b - group * tiles;
    const int oy0 = static_cast<int>(t / tiles_x) * tile_h;
    const int ox0 = static_cast<int>(t % tiles_x) * tile_w;
    const int64_t plane = group * blockDim.z + threadIdx.z;
    const bool active = plane < planes;
    const int c = static_cast<int>(plane % g.c);
    const int iy0 = oy0 * g.sh - g.ph;
    const int ix0 = ox0 * g.sw - g.pw;

    __syncthreads();  // the previous tile is no longer read
    if (active) {
      const In* src = in + plane * in_plane;
      for (int r = threadIdx.y; r < in_th; r += blockDim.y) {
        const int y = iy0 + r;
        const bool row_ok = y >= 0 && y < g.in_h;
        for (int col = threadIdx.x; col < in_tw; col += blockDim.x) {
          const int x = ix0 + col;
          tile[r * in_tw + col] =
              (row_ok && x >= 0 && x < g.in_w) ? widen(src[int64_t{y} * g.in_w + x]) : A(0);
        }
      }
      if constexpr (S == 0) {
        for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < taps;
             i += blockDim.x * blockDim.y) {
          wsm[i] = widen(weight[int64_t{c} * taps + (flip ? taps - 1 - i : i)]);
        }
      }
    }
    __syncthreads();
    if (!active) continue;  // no barrier until the next iteration's first one

    A acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = A(0);

    if constexpr (S > 0) {
      A w[K * K];
#pragma unroll
      for (int i = 0; i < K * K; ++i) {
        w[i] = widen(weight[int64_t{c} * (K * K) + (flip ? K * K - 1 - i : i)]);
      }
      // Rows ty*kRows*S .. + NR of column tx*S + kj feed all kRows outputs.
      constexpr int NR = (kRows - 1) * S + K;
      const A* col0 = tile + threadIdx.y * kRows * S * in_tw + threadIdx.x * S;
#pragma unroll
      for (int kj = 0; kj < K; ++kj) {
        A v[NR];
#pragma unroll
        for (int i = 0; i < NR; ++i) v[i] = col0[i * in_tw + kj];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
#pragma unroll
          for (int ki = 0; ki < K; ++ki) acc[r] += w[ki * K + kj] * v[r * S + ki];
        }
      }
    } else {
      const int row_step = g.sh * in_tw;
      const A* base = tile + threadIdx.y * kRows * row_step + threadIdx.x * g.sw;
      for (int ki = 0; ki < kh; ++ki) {
        const A* row = base + ki * g.dh * in_tw;
#pragma unroll(K > 0 ? K : 1)
        for (int kj = 0; kj < kw; ++kj) {
          const A wv = wsm[ki * kw + kj];
          const A* p = row + kj * g.dw;
#pragma unroll
          for (int r = 0; r < kRows; ++r) acc[r] += wv * p[r * row_step];
        }
      }
    }

    const int ox = ox0 + threadIdx.x;
    if (ox < g.out_w) {
      const int oy_first = oy0 + threadIdx.y * kRows;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (oy_first + r < g.out_h) {
          const A one[1] = {acc[r]};
          epi.template store<1>(plane * out_plane + int64_t{oy_first + r} * g.out_w + ox, c,
                                one);
        }
      }
    }
  }
}

// NCHW fallback for tiles too large for shared memory (huge filters or dilations): one
// output per thread, taps read straight from global memory.
template <typename In, typename Epi>
__global__ void __launch_bounds__(256)
dw_nchw_direct_kernel(const In* __restrict__ in, const typename Epi::T* __restrict__ weight,
                      bool flip, Epi epi, Geom g) {
  using A = typename Epi::A;
  const int taps = g.kh * g.kw;
  const int64_t total = int64_t{g.n} * g.c * g.out_h * g.out_w;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int ox = static_cast<int>(i % g.out_w);
    const int64_t t = i / g.out_w;
    const int oy = static_cast<int>(t % g.out_h);
    const int64_t plane = t / g.out_h;
    const int c = static_cast<int>(plane % g.c);
    const In* src = in + plane * g.in_h * g.in_w;
    const auto* w = weight + int64_t{c} * taps;
    A acc = A(0);
    for (int ki = 0; ki < g.kh; ++ki) {
      const int y = oy * g.sh - g.ph + ki * g.dh;
      if (y < 0 || y >= g.in_h) continue;
      for (int kj = 0; kj < g.kw; ++kj) {
        const int x = ox * g.sw - g.pw + kj * g.dw;
        if (x < 0 || x >= g.in_w) continue;
        const int tap = ki * g.kw + kj;
        acc += widen(w[flip ? taps - 1 - tap : tap]) * widen(src[int64_t{y} * g.in_w + x]);
      }
    }
    const A one[1] = {acc};
    epi.template store<1>(i, c, one);
  }
}

// ---------------------------------------------------------------- NHWC convolution

// Threads along x own VEC adjacent channels each (one 16-byte load per pixel when VEC > 1);
// threads along y own P adjacent output pixels of a row. blockIdx.y picks the channel
// chunk, whose filters (K > 0) are staged in shared memory as [tap][channel]; K == 0
// reads them from global memory (cached). S > 0: stride S, no dilation, and the row
// window of (P - 1) * S + K pixels is loaded once for all P outputs.
template <typename In, typename Epi, int K, int S, int VEC, int P>
__global__ void __launch_bounds__(256)
dw_nhwc_kernel(const In* __restrict__ in, const typename Epi::T* __restrict__ weight,
               bool flip, Epi epi, Geom g) {
  using A = typename Epi::A;
  static_assert(S == 0 || K > 0, "the register window needs a compile-time filter size");
  const int kh = K > 0 ? K : g.kh;
  const int kw = K > 0 ? K : g.kw;
  const int taps = kh * kw;
  const int chunk = blockDim.x * VEC;  // channels per block
  const int chunks = (g.c + chunk - 1) / chunk;
  const int groups_w = (g.out_w + P - 1) / P;
  const int64_t groups = int64_t{g.n} * g.out_h * groups_w;
  A* wsm = reinterpret_cast<A*>(dw_smem);

  for (int cb = blockIdx.y; cb < chunks; cb += gridDim.y) {
    const int c0 = cb * chunk;
    if constexpr (K > 0) {
      __syncthreads();  // the previous chunk's filters are no longer read
      for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < taps * chunk;
           i += blockDim.x * blockDim.y) {
        const int tap = i / chunk;
        const int ch = c0 + (i - tap * chunk);
        wsm[i] = ch < g.c ? widen(weight[int64_t{ch} * taps + (flip ? taps - 1 - tap : tap)])
                          : A(0);
      }
      __syncthreads();
    }
    const int c = c0 + threadIdx.x * VEC;
    if (c >= g.c) continue;  // VEC divides C, so a vector is all in or all out
    const A* wcol = wsm + threadIdx.x * VEC;

    for (int64_t grp = int64_t{blockIdx.x} * blockDim.y + threadIdx.y; grp < groups;
         grp += int64_t{gridDim.x} * blockDim.y) {
      const int ox0 = static_cast<int>(grp % groups_w) * P;
      const int64_t row = grp / groups_w;  // n * out_h + oy
      const int oy = static_cast<int>(row % g.out_h);
      const int64_t n = row / g.out_h;
      const In* img = in + n * g.in_h * g.in_w * g.c + c;

      A acc[P][VEC];
#pragma unroll
      for (int p = 0; p < P; ++p) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[p][v] = A(0);
      }

      if constexpr (S > 0) {
        constexpr int NW = (P - 1) * S + K;
        const int ix0 = ox0 * S - g.pw;
#pragma unroll
        for (int ki = 0; ki < K; ++ki) {
          const int y = oy * S - g.ph + ki;
          if (y < 0 || y >= g.in_h) continue;
          const In* src = img + int64_t{y} * g.in_w * g.c;
          A win[NW][VEC];
#pragma unroll
          for (int i = 0; i < NW; ++i) {
            const int x = ix0 + i;
            if (x >= 0 && x < g.in_w) {
              const Pack<In, VEC> pk = load_pack<In, VEC>(src + int64_t{x} * g.c);
#pragma unroll
              for (int v = 0; v < VEC; ++v) win[i][v] = widen(pk.v[v]);
            } else {
#pragma unroll
              for (int v = 0; v < VEC; ++v) win[i][v] = A(0);
            }
          }
#pragma unroll
          for (int kj = 0; kj < K; ++kj) {
            A wv[VEC];
#pragma unroll
            for (int v = 0; v < VEC; ++v) wv[v] = wcol[(ki * K + kj) * chunk + v];
#pragma unroll
            for (int p = 0; p < P; ++p) {
#pragma unroll
              for (int v = 0; v < VEC; ++v) acc[p][v] += wv[v] * win[p * S + kj][v];
            }
          }
        }
      } else {
#pragma unroll(K > 0 ? K : 1)
        for (int ki = 0; ki < kh; ++ki) {
          const int y = oy * g.sh - g.ph + ki * g.dh;
          if (y < 0 || y >= g.in_h) continue;
          const In* src = img + int64_t{y} * g.in_w * g.c;
#pragma unroll(K > 0 ? K : 1)
          for (int kj = 0; kj < kw; ++kj) {
            const int tap = ki * kw + kj;
            A wv[VEC];
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
              if constexpr (K > 0) {
                wv[v] = wcol[tap * chunk + v];
              } else {
                wv[v] = widen(weight[int64_t{c + v} * taps + (flip ? taps - 1 - tap : tap)]);
              }
            }
#pragma unroll
            for (int p = 0; p < P; ++p) {
              const int x = (ox0 + p) * g.sw - g.pw + kj * g.dw;
              if (x < 0 || x >= g.in_w) continue;
              const Pack<In, VEC> pk = load_pack<In, VEC>(src + int64_t{x} * g.c);
#pragma unroll
              for (int v = 0; v < VEC; ++v) acc[p][v] += wv[v] * widen(pk.v[v]);
            }
          }
        }
      }

      const int64_t out_base = (row * g.out_w + ox0) * g.c + c;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        if (ox0 + p < g.out_w) epi.template store<VEC>(out_base + int64_t{p} * g.c, c, acc[p]);
      }
    }
  }
}

// ---------------------------------------------------------------- grad_x gather (stride > 1)

// grad_x[iy, ix] = sum over taps of w[ki, kj] * dz[oy, ox] with oy * sh - ph + ki * dh == iy:
// each input element gathers the outputs that read it, so no atomics. g is the forward
// geometry. NHWC (CL) threads own VEC channels of one pixel.
template <typename G, typename T, int VEC, bool CL>
__global__ void __launch_bounds__(256)
dw_grad_input_gather_kernel(const G* __restrict__ dz, const T* __restrict__ weight,
                            T* __restrict__ grad_x, Geom g) {
  using A = accumulate_t<T>;
  const int taps = g.kh * g.kw;
  const int cvecs = g.c / VEC;
  const int64_t total = int64_t{g.n} * g.in_h * g.in_w * cvecs;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    int ix, iy, c;
    int64_t n, dz_base, dz_row, dz_col;  // dz offset = dz_base + oy * dz_row + ox * dz_col
    if constexpr (CL) {
      c = static_cast<int>(i % cvecs) * VEC;
      const int64_t pix = i / cvecs;
      ix = static_cast<int>(pix % g.in_w);
      iy = static_cast<int>((pix / g.in_w) % g.in_h);
      n = pix / (int64_t{g.in_w} * g.in_h);
      dz_base = n * g.out_h * g.out_w * g.c + c;
      dz_row = int64_t{g.out_w} * g.c;
      dz_col = g.c;
    } else {
      ix = static_cast<int>(i % g.in_w);
      const int64_t t = i / g.in_w;
      iy = static_cast<int>(t % g.in_h);
      const int64_t plane = t / g.in_h;
      c = static_cast<int>(plane % g.c);
      n = plane / g.c;
      dz_base = plane * g.out_h * g.out_w;
      dz_row = g.out_w;
      dz_col = 1;
    }
    A acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = A(0);
    for (int ki = 0; ki < g.kh; ++ki) {
      const int ty = iy + g.ph - ki * g.dh;
      if (ty < 0) break;  // only decreases with ki
      if (ty % g.sh != 0) continue;
      const int oy = ty / g.sh;
      if (oy >= g.out_h) continue;
      for (int kj = 0; kj < g.kw; ++kj) {
        const int tx = ix + g.pw - kj * g.dw;
        if (tx < 0) break;
        if (tx % g.sw != 0) continue;
        const int ox = tx / g.sw;
        if (ox >= g.out_w) continue;
        const Pack<G, VEC> d = load_pack<G, VEC>(dz + dz_base + oy * dz_row + ox * dz_col);
        const int tap = ki * g.kw + kj;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          acc[v] += widen(weight[int64_t{c + v} * taps + tap]) * widen(d.v[v]);
        }
      }
    }
    Pack<T, VEC> o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) o.v[v] = narrow<T>(acc[v]);
    store_pack<T, VEC>(grad_x + i * VEC, o);
  }
}

// ---------------------------------------------------------------- grad_w / grad_b

// Partial sums land in partial[(c * (taps + 1) + tap) * chunks + chunk], the bias sum at
// tap == taps: the reduce kernel's lanes then read consecutive chunks. A pass covers TP taps with TP accumulators in registers: all of a K x K
// filter, or 16 at a time of any other.
template <int K> struct TapsPerPass { static constexpr int value = K > 0 ? K * K : 16; };

// NCHW: block = (channel, chunk of rows (n, oy)), threads over the chunk's outputs.
template <typename G, typename T, int K>
__global__ void __launch_bounds__(256)
dw_nchw_wgrad_partial_kernel(const G* __restrict__ dz, const T* __restrict__ x, Geom g,
                             int rows_per_chunk, int chunks, bool need_w,
                             accumulate_t<T>* __restrict__ partial) {
  using A = accumulate_t<T>;
  constexpr int TP = TapsPerPass<K>::value;
  constexpr int kWarps = 256 / 32;
  __shared__ A red[TP + 1][kWarps];
  const int kw = K > 0 ? K : g.kw;
  const int taps = K > 0 ? K * K : g.kh * g.kw;
  const int passes = need_w ? (taps + TP - 1) / TP : 1;
  const int64_t rows = int64_t{g.n} * g.out_h;
  const int64_t jobs = int64_t{g.c} * chunks;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;

  for (int64_t job = blockIdx.x; job < jobs; job += gridDim.x) {
    const int c = static_cast<int>(job / chunks);
    const int chunk = static_cast<int>(job % chunks);
    const int64_t r0 = int64_t{chunk} * rows_per_chunk;
    const int chunk_rows = static_cast<int>(rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk);
    const int count = chunk_rows * g.out_w;
    // Rows are (n, oy); the chunk starts at (n0, oy0) and spans rows_per_chunk of them, so
    // the per-element index math stays in 32 bits.
    const int64_t n0 = r0 / g.out_h;
    const int oy0 = static_cast<int>(r0 - n0 * g.out_h);
    A* out = partial + int64_t{c} * (taps + 1) * chunks + chunk;  // out[t * chunks]
    for (int pass = 0; pass < passes; ++pass) {
      const int t0 = pass * TP;
      A acc[TP];
#pragma unroll
      for (int j = 0; j < TP; ++j) acc[j] = A(0);
      A acc_b = A(0);
      for (int e = threadIdx.x; e < count; e += blockDim.x) {
        const int local_row = e / g.out_w;
        const int ox = e - local_row * g.out_w;
        const int oy_run = oy0 + local_row;
        const int n_step = oy_run / g.out_h;
        const int oy = oy_run - n_step * g.out_h;
        const int64_t plane = (n0 + n_step) * g.c + c;
        const A d = widen(dz[(plane * g.out_h + oy) * g.out_w + ox]);
        acc_b += d;
        if (!need_w) continue;
        const T* src = x + plane * g.in_h * g.in_w;
#pragma unroll
        for (int j = 0; j < TP; ++j) {
          const int t = t0 + j;
          if (K == 0 && t >= taps) break;
          const int ki = t / kw;
          const int kj = t - ki * kw;
          const int y = oy * g.sh - g.ph + ki * g.dh;
          const int xx = ox * g.sw - g.pw + kj * g.dw;
          if (y >= 0 && y < g.in_h && xx >= 0 && xx < g.in_w) {
            acc[j] += d * widen(src[int64_t{y} * g.in_w + xx]);
          }
        }
      }
      // Fixed-order reduction: butterfly within each warp, then warps in index order.
#pragma unroll
      for (int j = 0; j < TP; ++j) {
        const A s = warp_sum(acc[j]);
        if (lane == 0) red[j][warp] = s;
      }
      const A sb = warp_sum(acc_b);
      if (lane == 0) red[TP][warp] = sb;
      __syncthreads();
      if (threadIdx.x <= TP) {
        const int j = threadIdx.x;
        const int t = j < TP ? t0 + j : taps;
        const bool write = j < TP ? (need_w && t < taps) : pass == 0;
        if (write) {
          A s = A(0);
          for (int w = 0; w < kWarps; ++w) s += red[j][w];
          out[int64_t{t} * chunks] = s;
        }
      }
      __syncthreads();  // red is reused by the next pass or job
    }
  }
}

// NHWC: block = (chunk of pixels, blockDim.x channels), threads along y split the pixels.
template <typename G, typename T, int K>
__global__ void __launch_bounds__(256)
dw_nhwc_wgrad_partial_kernel(const G* __restrict__ dz, const T* __restrict__ x, Geom g,
                             int pixels_per_chunk, int chunks, bool need_w,
                             accumulate_t<T>* __restrict__ partial) {
  using A = accumulate_t<T>;
  constexpr int TP = TapsPerPass<K>::value;
  __shared__ A red[256];
  const int kw = K > 0 ? K : g.kw;
  const int taps = K > 0 ? K * K : g.kh * g.kw;
  const int passes = need_w ? (taps + TP - 1) / TP : 1;
  const int64_t pixels = int64_t{g.n} * g.out_h * g.out_w;
  const int cgroups = (g.c + blockDim.x - 1) / blockDim.x;
  const int64_t jobs = int64_t{cgroups} * chunks;
  const int slot = threadIdx.y * blockDim.x + threadIdx.x;

  for (int64_t job = blockIdx.x; job < jobs; job += gridDim.x) {
    const int chunk = static_cast<int>(job / cgroups);
    const int c = static_cast<int>(job % cgroups) * blockDim.x + threadIdx.x;
    const bool active = c < g.c;
    const int64_t p0 = int64_t{chunk} * pixels_per_chunk;
    const int count = static_cast<int>(pixels - p0 < pixels_per_chunk ? pixels - p0 : pixels_per_chunk);
    // Decompose the chunk's first pixel once; the rest of the index math is 32-bit.
    const int64_t row0 = p0 / g.out_w;
    const int ox0 = static_cast<int>(p0 - row0 * g.out_w);
    const int64_t n0 = row0 / g.out_h;
    const int oy0 = static_cast<int>(row0 - n0 * g.out_h);
    A* out = partial + int64_t{c} * (taps + 1) * chunks + chunk;  // out[t * chunks]
    for (int pass = 0; pass < passes; ++pass) {
      const int t0 = pass * TP;
      A acc[TP];
#pragma unroll
      for (int j = 0; j < TP; ++j) acc[j] = A(0);
      A acc_b = A(0);
      if (active) {
        for (int lp = threadIdx.y; lp < count; lp += blockDim.y) {
          const int ox_run = ox0 + lp;
          const int row_step = ox_run / g.out_w;
          const int ox = ox_run - row_step * g.out_w;
          const int oy_run = oy0 + row_step;
          const int n_step = oy_run / g.out_h;
          const int oy = oy_run - n_step * g.out_h;
          const int64_t n = n0 + n_step;
          const A d = widen(dz[(p0 + lp) * g.c + c]);
          acc_b += d;
          if (!need_w) continue;
          const T* img = x + n * g.in_h * g.in_w * g.c + c;
#pragma unroll
          for (int j = 0; j < TP; ++j) {
            const int t = t0 + j;
            if (K == 0 && t >= taps) break;
            const int ki = t / kw;
            const int kj = t - ki * kw;
            const int y = oy * g.sh - g.ph + ki * g.dh;
            const int xx = ox * g.sw - g.pw + kj * g.dw;
            if (y >= 0 && y < g.in_h && xx >= 0 && xx < g.in_w) {
              acc[j] += d * widen(img[(int64_t{y} * g.in_w + xx) * g.c]);
            }
          }
        }
      }
      // Fixed-order reduction over threadIdx.y, one value (tap) at a time.
#pragma unroll
      for (int j = 0; j <= TP; ++j) {
        red[slot] = j < TP ? acc[j] : acc_b;
        __syncthreads();
        const int t = j < TP ? t0 + j : taps;
        const bool write = j < TP ? (need_w && t < taps) : pass == 0;
        if (threadIdx.y == 0 && active && write) {
          A s = A(0);
          for (int y = 0; y < static_cast<int>(blockDim.y); ++y) s += red[y * blockDim.x + threadIdx.x];
          out[int64_t{t} * chunks] = s;
        }
        __syncthreads();
      }
    }
  }
}

// One warp per (channel, tap): lanes stride over the chunks, then a butterfly; the order
// depends only on the shapes, so repeated runs give identical bits.
template <typename T>
__global__ void __launch_bounds__(256)
dw_wgrad_reduce_kernel(const accumulate_t<T>* __restrict__ partial, int channels, int taps, int chunks,
                       T* __restrict__ grad_w, T* __restrict__ grad_b) {
  using A = accumulate_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t items = int64_t{channels} * (taps + 1);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t item = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32; item < items;
       item += warps) {
    const int c = static_cast<int>(item / (taps + 1));
    const int t = static_cast<int>(item % (taps + 1));
    T* dst = t < taps ? grad_w : grad_b;
    if (dst == nullptr) continue;  // uniform across the warp
    A s = A(0);
    const A* src = partial + item * chunks;  // item == c * (taps + 1) + t
    for (int k = lane; k < chunks; k += 32) s += src[k];
    s = warp_sum(s);
    if (lane == 0) dst[t < taps ? int64_t{c} * taps + t : c] = narrow<T>(s);
  }
}

// ---------------------------------------------------------------- host: convolution

template <int V> using IntC = std::integral_constant<int, V>;

// Calls f(IntC<K>, IntC<S>) with the compile-time filter size and register-window stride
// that fit g (0 = run time).
template <typename F> cudaError_t with_filter(const Geom& g, F&& f) {
  const bool plain = g.dh == 1 && g.dw == 1 && g.sh == g.sw;
  const int s = plain && (g.sh == 1 || g.sh == 2) ? g.sh : 0;
  if (g.kh == g.kw) {
    switch (g.kh) {
      case 3: return s == 1 ? f(IntC<3>{}, IntC<1>{}) : s == 2 ? f(IntC<3>{}, IntC<2>{})
                                                               : f(IntC<3>{}, IntC<0>{});
      case 5: return s == 1 ? f(IntC<5>{}, IntC<1>{}) : s == 2 ? f(IntC<5>{}, IntC<2>{})
                                                               : f(IntC<5>{}, IntC<0>{});
      case 7: return s == 1 ? f(IntC<7>{}, IntC<1>{}) : s == 2 ? f(IntC<7>{}, IntC<2>{})
                                                               : f(IntC<7>{}, IntC<0>{});
      default: break;
    }
  }
  return f(IntC<0>{}, IntC<0>{});
}

template <typename In, typename Epi>
cudaError_t conv_nchw(const Geom& g, const In* in, const typename Epi::T* w, bool flip,
                      const Epi& epi, cudaStream_t stream) {
  using A = typename Epi::A;
  const int64_t planes = int64_t{g.n} * g.c;
  const size_t extra = size_t(g.kh) * g.kw;  // the filter, for the S == 0 variants

  // Tile: up to 32 columns, enough rows for the output, several planes per block when a
  // plane is small, shrunk until the staged input fits in shared memory.
  int bx = std::min(32, pow2_at_least(g.out_w));
  int by = std::min(256 / bx, pow2_at_least(ceil_div(g.out_h, kRows)));
  auto tile_h_of = [&](int rows) { return int64_t{rows - 1} * g.sh + int64_t{g.kh - 1} * g.dh + 1; };
  auto tile_w_of = [&](int cols) { return int64_t{cols - 1} * g.sw + int64_t{g.kw - 1} * g.dw + 1; };
  auto slice_bytes = [&]() {
    return (size_t(tile_h_of(by * kRows)) * size_t(tile_w_of(bx)) + extra) * sizeof(A);
  };
  while (slice_bytes() > kSmemLimit && by > 1) by /= 2;
  while (slice_bytes() > kSmemLimit && bx > 1) bx /= 2;
  if (slice_bytes() > kSmemLimit) {
    const int64_t total = planes * g.out_h * g.out_w;
    dw_nchw_direct_kernel<In, Epi><<<grid_for(total), kThreads, 0, stream>>>(in, w, flip, epi, g);
    return cudaGetLastError();
  }
  int bz = std::min<int64_t>({64, 256 / (bx * by), pow2_at_least(planes)});
  while (bz > 1 && bz * slice_bytes() > kSmemLimit) bz /= 2;

  const int in_th = static_cast<int>(tile_h_of(by * kRows));
  const int in_tw = static_cast<int>(tile_w_of(bx));
  const int64_t tiles = ceil_div(g.out_w, bx) * ceil_div(g.out_h, int64_t{by} * kRows);
  const int64_t blocks = ceil_div(planes, bz) * tiles;
  const dim3 block(bx, by, bz);
  const int grid = grid_for(blocks * kThreads);  // min(blocks, SMs * 8)
  const size_t smem = bz * slice_bytes();
  return with_filter(g, [&](auto k, auto s) {
    constexpr int K = decltype(k)::value;
    constexpr int S = decltype(s)::value;
    dw_nchw_tile_kernel<In, Epi, K, S><<<grid, block, smem, stream>>>(in, w, flip, epi, g,
                                                                      in_th, in_tw);
    return cudaGetLastError();
  });
}

template <typename In, typename Epi, int VEC>
cudaError_t conv_nhwc_vec(const Geom& g, const In* in, const typename Epi::T* w, bool flip,
                          const Epi& epi, cudaStream_t stream) {
  using A = typename Epi::A;
  // Two pixels per thread for 8-wide vectors keeps the register window small.
  constexpr int P = VEC >= 8 ? 2 : 4;
  const int64_t cvecs = g.c / VEC;
  return with_filter(g, [&](auto k, auto s) {
    constexpr int K = decltype(k)::value;
    constexpr int S = decltype(s)::value;
    int tx = std::min(32, pow2_at_least(cvecs));
    size_t smem = 0;
    if constexpr (K > 0) {
      while (tx > 1 && size_t(K * K) * tx * VEC * sizeof(A) > kSmemLimit) tx /= 2;
      smem = size_t(K * K) * tx * VEC * sizeof(A);
    }
    const int ty = kThreads / tx;
    const int64_t chunks = ceil_div(cvecs, tx);
    const int64_t groups = int64_t{g.n} * g.out_h * ceil_div(g.out_w, P);
    const int grid_y = static_cast<int>(std::min<int64_t>(chunks, 65535));
    const int64_t target = int64_t{sm_count()} * 8;
    const int grid_x = static_cast<int>(std::max<int64_t>(
        1, std::min<int64_t>(ceil_div(groups, ty), std::max<int64_t>(1, target / grid_y))));
    dw_nhwc_kernel<In, Epi, K, S, VEC, P>
        <<<dim3(grid_x, grid_y), dim3(tx, ty), smem, stream>>>(in, w, flip, epi, g);
    return cudaGetLastError();
  });
}

template <typename In, typename Epi>
cudaError_t conv_nhwc(const Geom& g, const In* in, const typename Epi::T* w, bool flip,
                      const Epi& epi, cudaStream_t stream) {
  using T = typename Epi::T;
  constexpr int VEC = 16 / sizeof(T);
  if (g.c % VEC == 0 && aligned_to(in, VEC * sizeof(In)) && epi.aligned(VEC)) {
    return conv_nhwc_vec<In, Epi, VEC>(g, in, w, flip, epi, stream);
  }
  return conv_nhwc_vec<In, Epi, 1>(g, in, w, flip, epi, stream);
}

template <typename In, typename Epi>
cudaError_t conv(const Geom& g, bool channels_last, const In* in, const typename Epi::T* w,
                 bool flip, const Epi& epi, cudaStream_t stream) {
  if (int64_t{g.n} * g.c * g.out_h * g.out_w == 0) return cudaSuccess;
  return channels_last ? conv_nhwc(g, in, w, flip, epi, stream)
                       : conv_nchw(g, in, w, flip, epi, stream);
}

// ---------------------------------------------------------------- host: backward

struct WgradPlan {
  int per_chunk;  // rows (n, oy) for NCHW, pixels for NHWC
  int chunks;
  int block_x;    // NHWC: channels per block
};

// Depends on the shapes only, so the summation order (and the result) is reproducible.
WgradPlan plan_wgrad(const DepthwiseGeometry& d) {
  WgradPlan p{};
  if (d.channels_last) {
    p.block_x = std::min(32, pow2_at_least(d.c));
    p.per_chunk = std::max(1, kWgradChunk * 4 / p.block_x);
    p.chunks = static_cast<int>(ceil_div(d.n * d.out_h * d.out_w, p.per_chunk));
  } else {
    p.block_x = kThreads;
    p.per_chunk = static_cast<int>(std::max<int64_t>(1, kWgradChunk / d.out_w));
    p.chunks = static_cast<int>(ceil_div(d.n * d.out_h, p.per_chunk));
  }
  return p;
}

size_t align_up(size_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

struct WorkspaceLayout {
  size_t dz_bytes;
  size_t partial_bytes;
  size_t total() const { return dz_bytes + partial_bytes; }
};

// acc_size: bytes of the accumulation type (double for float64, else float).
WorkspaceLayout workspace_layout(size_t acc_size, ConvActivation act, const DepthwiseGeometry& d,
                                 bool need_x, bool need_w, bool need_b) {
  WorkspaceLayout w{0, 0};
  if (!(need_x || need_w || need_b)) return w;
  if (act != ConvActivation::kNone) {
    w.dz_bytes = align_up(size_t(d.n * d.c * d.out_h * d.out_w) * acc_size);
  }
  if (need_w || need_b) {
    const WgradPlan p = plan_wgrad(d);
    w.partial_bytes = align_up(size_t(d.c) * p.chunks * size_t(d.kh * d.kw + 1) * acc_size);
  }
  return w;
}

// Backward once dz (type G: grad_out itself, or grad_out * act'(z) in the accumulation type)
// is in memory, in the output's layout.
template <typename T, typename G>
cudaError_t backward_from_dz(const DepthwiseGeometry& d, const G* dz, const T* x, const T* w,
                             T* grad_x, T* grad_w, T* grad_b, accumulate_t<T>* partial,
                             cudaStream_t stream) {
  using A = accumulate_t<T>;
  const Geom g = to_geom(d);
  const bool cl = d.channels_last;
  cudaError_t err = cudaSuccess;

  if (grad_x != nullptr && d.n * d.c * d.h * d.w > 0) {
    if (g.sh == 1 && g.sw == 1) {
      // Stride 1: grad_x is dz convolved with the flipped filter, padding (k - 1) * d - p.
      Geom t = g;
      t.in_h = g.out_h;
      t.in_w = g.out_w;
      t.out_h = g.in_h;
      t.out_w = g.in_w;
      t.ph = (g.kh - 1) * g.dh - g.ph;
      t.pw = (g.kw - 1) * g.dw - g.pw;
      err = conv(t, cl, dz, w, /*flip=*/true, GradInputEpilogue<T>{grad_x}, stream);
    } else {
      const int64_t elems = d.n * d.c * d.h * d.w;
      constexpr int VEC = 16 / sizeof(T);
      if (cl && g.c % VEC == 0 && aligned_to(dz, VEC * sizeof(G)) &&
          aligned_to(grad_x, VEC * sizeof(T))) {
        dw_grad_input_gather_kernel<G, T, VEC, true>
            <<<grid_for(elems / VEC), kThreads, 0, stream>>>(dz, w, grad_x, g);
      } else if (cl) {
        dw_grad_input_gather_kernel<G, T, 1, true>
            <<<grid_for(elems), kThreads, 0, stream>>>(dz, w, grad_x, g);
      } else {
        dw_grad_input_gather_kernel<G, T, 1, false>
            <<<grid_for(elems), kThreads, 0, stream>>>(dz, w, grad_x, g);
      }
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return err;
  }

  if (grad_w == nullptr && grad_b == nullptr) return cudaSuccess;
  const WgradPlan p = plan_wgrad(d);
  const int taps = g.kh * g.kw;
  const bool need_w = grad_w != nullptr;
  if (p.chunks > 0) {
    err = with_filter(g, [&](auto k, auto) {
      constexpr int K = decltype(k)::value;
      if (cl) {
        const dim3 block(p.block_x, kThreads / p.block_x);
        const int64_t jobs = ceil_div(g.c, p.block_x) * int64_t{p.chunks};
        dw_nhwc_wgrad_partial_kernel<G, T, K><<<grid_for(jobs * kThreads), block, 0, stream>>>(
            dz, x, g, p.per_chunk, p.chunks, need_w, partial);
      } else {
        const int64_t jobs = int64_t{g.c} * p.chunks;
        dw_nchw_wgrad_partial_kernel<G, T, K><<<grid_for(jobs * kThreads), kThreads, 0, stream>>>(
            dz, x, g, p.per_chunk, p.chunks, need_w, partial);
      }
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return err;
  }
  const int64_t items = int64_t{g.c} * (taps + 1);
  dw_wgrad_reduce_kernel<T><<<grid_for(items * 32), kThreads, 0, stream>>>(
      partial, g.c, taps, p.chunks, grad_w, grad_b);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_typed(ConvActivation act, const DepthwiseGeometry& d, const void* x,
                          const void* weight, const void* bias, void* out, cudaStream_t stream) {
  const ForwardEpilogue<T> epi{static_cast<T*>(out), static_cast<const T*>(bias), act};
  return conv(to_geom(d), d.channels_last, static_cast<const T*>(x),
              static_cast<const T*>(weight), /*flip=*/false, epi, stream);
}

template <typename T>
cudaError_t backward_typed(ConvActivation act, const DepthwiseGeometry& d, const void* grad_out,
                           const void* x_, const void* weight, const void* bias_, void* grad_x,
                           void* grad_w, void* grad_b, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream) {
  using A = accumulate_t<T>;
  const auto* x = static_cast<const T*>(x_);
  const auto* w = static_cast<const T*>(weight);
  const auto* bias = static_cast<const T*>(bias_);
  const WorkspaceLayout ws = workspace_layout(sizeof(A), act, d, grad_x != nullptr,
                                              grad_w != nullptr, grad_b != nullptr);
  if (workspace_bytes < ws.total() || (ws.total() > 0 && !aligned_to(workspace, kWorkspaceAlign))) {
    return cudaErrorInvalidValue;
  }
  auto* base = static_cast<unsigned char*>(workspace);
  auto* partial = reinterpret_cast<A*>(base + ws.dz_bytes);
  T* gx = static_cast<T*>(grad_x);
  T* gw = static_cast<T*>(grad_w);
  T* gb = static_cast<T*>(grad_b);

  if (act == ConvActivation::kNone) {
    return backward_from_dz<T, T>(d, static_cast<const T*>(grad_out), x, w, gx, gw, gb, partial,
                                  stream);
  }
  // Recompute z = conv(x) + b and keep dz = grad_out * act'(z) in the accumulation type.
  A* dz = reinterpret_cast<A*>(base);
  const GradEpilogue<T> epi{static_cast<const T*>(grad_out), dz, bias, act};
  const cudaError_t err = conv(to_geom(d), d.channels_last, x, w, /*flip=*/false, epi, stream);
  if (err != cudaSuccess) return err;
  return backward_from_dz<T, A>(d, dz, x, w, gx, gw, gb, partial, stream);
}

}  // namespace

size_t depthwise_conv2d_backward_workspace(FloatType type, ConvActivation act,
                                           const DepthwiseGeometry& geometry, bool need_grad_x,
                                           bool need_grad_w, bool need_grad_b) {
  const size_t acc_size = type == FloatType::kFloat64 ? sizeof(double) : sizeof(float);
  return workspace_layout(acc_size, act, geometry, need_grad_x, need_grad_w, need_grad_b).total();
}

cudaError_t depthwise_conv2d_forward(FloatType type, ConvActivation act,
                                     const DepthwiseGeometry& geometry, const void* x,
                                     const void* weight, const void* bias, void* out,
                                     cudaStream_t stream) {
  switch (type) {
    case FloatType::kFloat32:
      return forward_typed<float>(act, geometry, x, weight, bias, out, stream);
    case FloatType::kFloat64:
      return forward_typed<double>(act, geometry, x, weight, bias, out, stream);
    case FloatType::kFloat16:
      return forward_typed<__half>(act, geometry, x, weight, bias, out, stream);
    case FloatType::kBFloat16:
      return forward_typed<__nv_bfloat16>(act, geometry, x, weight, bias, out, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t depthwise_conv2d_backward(FloatType type, ConvActivation act,
                                      const DepthwiseGeometry& geometry, const void* grad_out,
                                      const void* x, const void* weight, const void* bias,
                                      void* grad_x, void* grad_w, void* grad_b, void* workspace,
                                      size_t workspace_bytes, cudaStream_t stream) {
  switch (type) {
    case FloatType::kFloat32:
      return backward_typed<float>(act, geometry, grad_out, x, weight, bias, grad_x, grad_w,
                                   grad_b, workspace, workspace_bytes, stream);
    case FloatType::kFloat64:
      return backward_typed<double>(act, geometry, grad_out, x, weight, bias, grad_x, grad_w,
                                    grad_b, workspace, workspace_bytes, stream);
    case FloatType::kFloat16:
      return backward_typed<__half>(act, geometry, grad_out, x, weight, bias, grad_x, grad_w,
                                    grad_b, workspace, workspace_bytes, stream);
    case FloatType::kBFloat16:
      return backward_typed<__nv_bfloat16>(act, geometry, grad_out, x, weight, bias, grad_x,
                                           grad_w, grad_b, workspace, workspace_bytes, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mobilefuse::cuda
