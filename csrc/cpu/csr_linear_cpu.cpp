// sparse_rda::csr_linear on CPU: y = x W^T + b for inference, from W's nonzeros by output row (CSR: crow int64
// [out + 1], col int16 read as unsigned or int32 [nnz], values [nnz] in x's dtype), fp32 accumulation.
//
// Batch 1: each output row is a gathered dot product over its nonzeros: with AVX-512, 16 nonzeros a step
// (vgatherdps of x, values converted in registers); elsewhere 16 explicit lanes of partial sums (a float sum may
// not be reordered by the compiler). Batch M > 1: x is packed once to fp32 tiles of W batch rows (16, 32 or 64)
// laid out [in][W], so each nonzero does W / 16 contiguous 16-wide FMAs into register accumulators and its index
// and value are read once per W batch rows. A layer is split over threads only past a measured amount of work.
// Every index is checked as it is read: an out-of-range one reads x[0] instead and the call then fails naming it,
// so no argument can make the kernel read outside its tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../check_args.h"
#include "step_cpu.h"

namespace sparse_rda {
namespace {

constexpr int64_t kLanes = 16;  // partial sums (batch 1) / batch rows per pass (batch > 1): one fp32 AVX-512 vector

template <typename index_t>
inline uint32_t column(index_t c) {
  return static_cast<uint32_t>(static_cast<std::make_unsigned_t<index_t>>(c));
}

// Rows [r0, r1) for one input row x (fp32 [in]); out gets them in out_t. Returns false if an index was bad.
template <typename scalar_t, typename index_t, typename out_t>
SPARSE_RDA_CPU_CLONES bool rows_times_vector(const int64_t* __restrict__ crow, const index_t* __restrict__ col,
                                             const scalar_t* __restrict__ val, const float* __restrict__ x,
                                             const scalar_t* bias, uint32_t in, int64_t r0, int64_t r1,
                                             out_t* __restrict__ out) {
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    float lanes[kLanes] = {};
    int64_t j = crow[r];
    const int64_t end = crow[r + 1];
    for (; j + kLanes <= end; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        uint32_t c = column(col[j + l]);
        ok &= c < in;
        c = c < in ? c : 0;
        lanes[l] += static_cast<float>(val[j + l]) * x[c];
      }
    }
    float sum = bias ? static_cast<float>(bias[r]) : 0.0f;
    for (; j < end; ++j) {
      uint32_t c = column(col[j]);
      ok &= c < in;
      sum += static_cast<float>(val[j]) * x[c < in ? c : 0];
    }
    for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
    out[r] = static_cast<out_t>(sum);
  }
  return ok;
}

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's AVX-512 headers trip its own -Wmaybe-uninitialized (_mm512_undefined_*: GCC bug 105593)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Batch 1 with AVX-512: 16 nonzeros a step, their columns widened and range-checked by one compare, x gathered
// (vgatherdps) and the values converted in registers. The compiler leaves the portable loop above scalar (the
// objdump of its x86-64-v4 clone: one vfmadd132ss per nonzero), and batch 1 is bound by the weight's bytes only
// when the gather keeps up. Takes the rows the portable loop does, for fp32 / bf16 / fp16 values.
#define SPARSE_RDA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// values[j .. j + 16) * x[col[j .. j + 16)], lanes with a bad column counted in `good` and reading x[0]
template <typename scalar_t, typename index_t>
SPARSE_RDA_AVX512 inline __m512 products16(const index_t* col, const scalar_t* val, const float* x, __m512i limit,
                                           int64_t j, bool& ok) {
  __m512i c;
  if constexpr (sizeof(index_t) == 2) {
    c = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + j)));
  } else {
    c = _mm512_loadu_si512(col + j);
  }
  const __mmask16 good = _mm512_cmplt_epu32_mask(c, limit);
  ok &= good == 0xFFFF;
  c = _mm512_maskz_mov_epi32(good, c);  // a bad index reads x[0]; the call then fails naming it
  __m512 v;
  if constexpr (std::is_same_v<scalar_t, float>) {
    v = _mm512_loadu_ps(val + j);
  } else {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(val + j));
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    } else {
      v = _mm512_cvtph_ps(raw);
    }
  }
  return _mm512_mul_ps(v, _mm512_i32gather_ps(c, x, 4));
}

template <typename scalar_t, typename index_t>
SPARSE_RDA_AVX512 bool rows_times_vector_avx512(const int64_t* __restrict__ crow, const index_t* __restrict__ col,
                                                const scalar_t* __restrict__ val, const float* __restrict__ x,
                                                const scalar_t* bias, uint32_t in, int64_t r0, int64_t r1,
                                                scalar_t* __restrict__ out) {
  const __m512i limit = _mm512_set1_epi32(static_cast<int>(in));
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();  // two chains: a gather's latency is long
    int64_t j = crow[r];
    const int64_t end = crow[r + 1];
    for (; j + 32 <= end; j += 32) {
      acc0 = _mm512_add_ps(acc0, products16(col, val, x, limit, j, ok));
      acc1 = _mm512_add_ps(acc1, products16(col, val, x, limit, j + 16, ok));
    }
    if (j + 16 <= end) {
      acc0 = _mm512_add_ps(acc0, products16(col, val, x, limit, j, ok));
      j += 16;
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + (bias ? static_cast<float>(bias[r]) : 0.0f);
    for (; j < end; ++j) {
      const uint32_t c = column(col[j]);
      ok &= c < in;
      sum += static_cast<float>(val[j]) * x[c < in ? c : 0];
    }
    out[r] = static_cast<scalar_t>(sum);
  }
  return ok;
}
#pragma GCC diagnostic pop

// The AVX-512 loop where the CPU has it, unless SPARSE_RDA_CSR_PORTABLE is set (the tests run both).
bool use_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && std::getenv("SPARSE_RDA_CSR_PORTABLE") == nullptr;
  return yes;
}
#endif

// Batch 1: the AVX-512 loop for the types it takes, else the portable one.
template <typename scalar_t, typename index_t>
bool rows_times_x(const int64_t* crow, const index_t* col, const scalar_t* val, const float* x, const scalar_t* bias,
                  uint32_t in, int64_t r0, int64_t r1, scalar_t* out) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16> ||
                std::is_same_v<scalar_t, c10::Half>) {
    if (use_avx512()) return rows_times_vector_avx512(crow, col, val, x, bias, in, r0, r1, out);
  }
#endif
  return rows_times_vector(crow, col, val, x, bias, in, r0, r1, out);
}

// 16 fp32 lanes as one value (GCC / Clang vector extensions, lowered per clone: one zmm on x86-64-v4, two ymm on
// v3), so the batch path's accumulators are registers, not a float array the vectorizer may leave on the stack.
using vec16 = float __attribute__((vector_size(64)));

// Output rows [r0, r1) of one batch tile: `tile` is x's rows m0 .. m0 + mb as fp32 [in][W] (zero past mb), out is
// [m, n] row-major. A nonzero (c, v) does acc += v * tile[c], W / 16 vectors; below 64 rows the nonzeros alternate
// over S sets of accumulators so that >= 4 FMA chains are in flight (an FMA's latency is ~4 cycles).
template <int W, typename scalar_t, typename index_t, typename out_t>
SPARSE_RDA_CPU_CLONES bool rows_times_tile(const int64_t* __restrict__ crow, const index_t* __restrict__ col,
                                           const scalar_t* __restrict__ val, const float* __restrict__ tile,
                                           const scalar_t* bias, uint32_t in, int64_t m0, int64_t mb, int64_t n,
                                           int64_t r0, int64_t r1, out_t* __restrict__ out) {
  constexpr int V = W / 16;
  constexpr int S = V >= 4 ? 1 : 4 / V;
  bool ok = true;
  // 16 rows' sums are kept here and written 16 contiguous outputs per batch row: one row's W outputs alone are a
  // column of out, W stores n * sizeof(out_t) apart (a page apart at n = 1024 fp32)
  float sums[16][W];
  for (int64_t rb = r0; rb < r1; rb += 16) {
    const int64_t rows = std::min<int64_t>(16, r1 - rb);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = rb + i;
      vec16 acc[S][V] = {};
      auto add = [&](vec16(&a)[V], int64_t k) {
        uint32_t c = column(col[k]);
        ok &= c < in;
        const float v = static_cast<float>(val[k]);
        const float* xc = tile + static_cast<int64_t>(c < in ? c : 0) * W;
        for (int q = 0; q < V; ++q) {
          vec16 xq;
          std::memcpy(&xq, xc + 16 * q, sizeof xq);  // an unaligned vector load
          a[q] += v * xq;
        }
      };
      int64_t j = crow[r];
      const int64_t end = crow[r + 1];
      for (; j + S <= end; j += S) {
        for (int s = 0; s < S; ++s) add(acc[s], j + s);
      }
      for (; j < end; ++j) add(acc[0], j);
      for (int s = 1; s < S; ++s) {
        for (int q = 0; q < V; ++q) acc[0][q] += acc[s][q];
      }
      if (bias) {
        const float b = static_cast<float>(bias[r]);
        for (int q = 0; q < V; ++q) acc[0][q] += b;
      }
      std::memcpy(sums[i], acc[0], sizeof sums[i]);
    }
    for (int64_t l = 0; l < mb; ++l) {
      out_t* o = out + (m0 + l) * n + rb;
      for (int64_t i = 0; i < rows; ++i) o[i] = static_cast<out_t>(sums[i][l]);
    }
  }
  return ok;
}

// x [m, in] -> fp32 tiles [ceil(m / W)][in][W] for tiles [t0, t1), zero past row m. Blocks of 16 columns keep the
// 16 destination rows being written in L1.
template <int W, typename scalar_t>
void pack_tiles(const scalar_t* __restrict__ x, int64_t m, int64_t in, int64_t t0, int64_t t1,
                float* __restrict__ tiles) {
  for (int64_t t = t0; t < t1; ++t) {
    float* __restrict__ dst = tiles + t * in * W;
    for (int64_t c0 = 0; c0 < in; c0 += 16) {
      const int64_t cb = std::min<int64_t>(16, in - c0);
      for (int64_t l = 0; l < W; ++l) {
        const int64_t row = t * W + l;
        if (row < m) {
          const scalar_t* src = x + row * in + c0;
          for (int64_t c = 0; c < cb; ++c) dst[(c0 + c) * W + l] = static_cast<float>(src[c]);
        } else {
          for (int64_t c = 0; c < cb; ++c) dst[(c0 + c) * W + l] = 0.0f;
        }
      }
    }
  }
}

// The tile width for m batch rows and in inputs: as wide as the batch needs, at most 64, and narrower when a tile
// would not stay in half of a 1 MB L2 next to the weight's rows.
int tile_width(int64_t m, int64_t in) {
  int w = m <= 16 ? 16 : m <= 32 ? 32 : 64;
  while (w > 16 && in * w * static_cast<int64_t>(sizeof(float)) > (int64_t{512} << 10)) w /= 2;
  return w;
}

void check_csr_args(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                    const std::optional<at::Tensor>& bias, int64_t in_features) {
  const char* op = "csr_linear";
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"x", &x}, {"crow", &crow},
                                {"col", &col}, {"values", &values}}) {
    TORCH_CHECK(t->defined(), op, ": ", name, " is undefined");
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " is on ", t->device(), "; this kernel runs on CPU tensors");
  }
  TORCH_CHECK(in_features >= 0 && in_features <= (int64_t{1} << 31), op, ": in_features must be in [0, 2^31], got ",
              in_features);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, op, ": x's last dimension must be in_features ",
              in_features, "; got x of shape ", x.sizes());
  TORCH_CHECK(values.scalar_type() == x.scalar_type(), op, ": values has dtype ", values.scalar_type(),
              ", x has ", x.scalar_type());
  TORCH_CHECK(is_param_dtype(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(crow.scalar_type() == at::kLong, op, ": crow must be int64, got ", crow.scalar_type());
  TORCH_CHECK(col.scalar_type() == at::kShort || col.scalar_type() == at::kInt, op,
              ": col must be int16 (read as unsigned) or int32, got ", col.scalar_type());
  TORCH_CHECK(col.scalar_type() == at::kInt || in_features <= 65536, op, ": int16 col indices address at most ",
              "65536 in_features, got ", in_features);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"crow", &crow}, {"col", &col},
                                {"values", &values}}) {
    TORCH_CHECK(t->dim() == 1 && t->is_contiguous(), op, ": ", name, " must be a contiguous 1-D tensor, got shape ",
                t->sizes(), " and strides ", t->strides());
  }
  TORCH_CHECK(crow.numel() >= 1, op, ": crow must have out_features + 1 entries, got none");
  TORCH_CHECK(col.numel() == values.numel(), op, ": col has ", col.numel(), " entries, values ", values.numel());
  const int64_t n = crow.numel() - 1;
  const int64_t* p = crow.data_ptr<int64_t>();
  TORCH_CHECK(p[0] == 0, op, ": crow[0] must be 0, got ", p[0]);
  for (int64_t r = 0; r < n; ++r) {
    TORCH_CHECK(p[r + 1] >= p[r], op, ": crow must not decrease; crow[", r + 1, "] = ", p[r + 1], " < crow[", r,
                "] = ", p[r]);
  }
  TORCH_CHECK(p[n] == values.numel(), op, ": crow[", n, "] = ", p[n], " must equal the number of values ",
              values.numel());
  // with no inputs there is no x[0] to read in place of a bad index: every index is bad
  TORCH_CHECK(in_features > 0 || values.numel() == 0, op, ": in_features is 0 but there are ", values.numel(),
              " values");
  if (bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == x.scalar_type() && bias->dim() == 1 &&
                    bias->numel() == n && bias->is_contiguous(),
                op, ": bias must be a contiguous CPU tensor of shape [", n, "] and dtype ", x.scalar_type(),
                "; got shape ", bias->sizes(), ", dtype ", bias->scalar_type(), " on ", bias->device());
  }
}

template <typename index_t>
int64_t first_bad_index(const at::Tensor& col, int64_t in) {
  const index_t* c = col.data_ptr<index_t>();
  for (int64_t j = 0; j < col.numel(); ++j) {
    if (column(c[j]) >= static_cast<uint64_t>(in)) return j;
  }
  return -1;
}

}  // namespace

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t in_features) {
  check_csr_args(x, crow, col, values, bias, in_features);
  const int64_t n = crow.numel() - 1;
  const at::Tensor x2d = x.reshape({-1, in_features}).contiguous();
  const int64_t m = x2d.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  out_shape.push_back(n);
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return out.view(out_shape);
  const int64_t* p = crow.data_ptr<int64_t>();
  // Multiply-adds per task before a layer is split over threads, measured one thread against two in interleaved
  // calls (2-vCPU EPYC; bench/results/csr_batch_tiles-cpu-amd-epyc.md): a split batch call of 0.12M multiply-adds
  // ran 0.73x (14.5 -> 19.8 us), of 0.37M 1.17x; batch 1 (~10x slower per multiply-add) gained 1.47x at 23K.
  constexpr int64_t kVectorTaskWork = int64_t{1} << 13, kBatchTaskWork = int64_t{1} << 17;
  const int64_t per_row = std::max<int64_t>(1, values.numel() / n);
  auto grain = [](int64_t task_work, int64_t work_per_item) {
    return std::max<int64_t>(1, task_work / std::max<int64_t>(1, work_per_item));
  };
  std::atomic<bool> ok{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "csr_linear", [&] {
    using value_t = scalar_t;
    const value_t* val = values.data_ptr<value_t>();
    const value_t* b = bias ? bias->data_ptr<value_t>() : nullptr;
    value_t* o = out.data_ptr<value_t>();
    const uint32_t in = static_cast<uint32_t>(std::min<int64_t>(in_features, UINT32_MAX));
    auto run = [&](auto* cols) {
      if (m == 1) {
        const at::Tensor xf = x2d.to(at::kFloat).contiguous();
        const float* xp = xf.data_ptr<float>();
        at::parallel_for(0, n, grain(kVectorTaskWork, per_row), [&](int64_t r0, int64_t r1) {
          if (!rows_times_x(p, cols, val, xp, b, in, r0, r1, o)) ok = false;
        });
        return;
      }
      auto tiled = [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int64_t tiles = (m + W - 1) / W;
        const int64_t tile_size = in_features * W;
        at::Tensor packed = at::empty({tiles * tile_size}, x.options().dtype(at::kFloat));
        float* tp = packed.data_ptr<float>();
        const value_t* xp = x2d.data_ptr<value_t>();
        at::parallel_for(0, tiles, grain(kBatchTaskWork, tile_size), [&](int64_t t0, int64_t t1) {
          pack_tiles<W>(xp, m, in_features, t0, t1, tp);
        });
        // work items are (tile, output row) pairs, tile-major: a task's rows share one tile
        at::parallel_for(0, tiles * n, grain(kBatchTaskWork, per_row * W), [&](int64_t i0, int64_t i1) {
          bool good = true;
          for (int64_t i = i0; i < i1;) {
            const int64_t t = i / n, r0 = i % n, r1 = std::min(n, r0 + (i1 - i));
            good &= rows_times_tile<W>(p, cols, val, tp + t * tile_size, b, in, t * W, std::min<int64_t>(W, m - t * W),
                                       n, r0, r1, o);
            i += r1 - r0;
          }
          if (!good) ok = false;
        });
      };
      switch (tile_width(m, in_features)) {
        case 16: tiled(std::integral_constant<int, 16>{}); break;
        case 32: tiled(std::integral_constant<int, 32>{}); break;
        default: tiled(std::integral_constant<int, 64>{}); break;
      }
    };
    if (col.scalar_type() == at::kShort) {
      run(col.data_ptr<int16_t>());
    } else {
      run(col.data_ptr<int32_t>());
    }
  });
  if (!ok) {
    const bool narrow = col.scalar_type() == at::kShort;
    const int64_t j = narrow ? first_bad_index<int16_t>(col, in_features) : first_bad_index<int32_t>(col, in_features);
    const int64_t c = narrow ? int64_t{column(col.data_ptr<int16_t>()[j])} : int64_t{col.data_ptr<int32_t>()[j]};
    TORCH_CHECK(false, "csr_linear: col[", j, "] = ", c, " is out of range for in_features ", in_features);
  }
  return out.view(out_shape);
}

}  // namespace sparse_rda
