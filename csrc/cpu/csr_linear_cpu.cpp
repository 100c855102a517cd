// sparse_rda::csr_linear on CPU: y = x W^T + b for inference, from W's nonzeros by output row (CSR: crow int64
// [out + 1], col int16 read as unsigned or int32 [nnz], values [nnz] in x's dtype), fp32 accumulation.
//
// Batch 1: each output row is a gathered dot product over its nonzeros, 16 lanes of partial sums (a float sum
// may not be reordered by the compiler, so the lanes are explicit). Batch M > 1: x is transposed once to fp32
// [in, M], so each nonzero does one contiguous FMA over 16 batch rows (one AVX-512 vector), in 4 independent
// chains. Rows go to threads in
// chunks sized by their nonzeros. Every index is checked as it is read: an out-of-range one reads x[0] instead
// and the call then fails naming it, so no argument can make the kernel read outside its tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <type_traits>

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

// Rows [r0, r1) for batch rows [m0, m0 + mb) of xt (fp32 [in, m], x transposed); out is [m, n] row-major.
// Each nonzero is one FMA over 16 batch rows; kChains accumulators over alternating nonzeros keep that many FMAs
// in flight (one chain would wait the FMA's latency, ~4 cycles, per nonzero).
constexpr int64_t kChains = 8;

template <typename scalar_t, typename index_t, typename out_t>
SPARSE_RDA_CPU_CLONES bool rows_times_batch(const int64_t* __restrict__ crow, const index_t* __restrict__ col,
                                            const scalar_t* __restrict__ val, const float* __restrict__ xt,
                                            const scalar_t* bias, uint32_t in, int64_t m, int64_t n, int64_t r0,
                                            int64_t r1, out_t* __restrict__ out) {
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    const float b = bias ? static_cast<float>(bias[r]) : 0.0f;
    for (int64_t m0 = 0; m0 < m; m0 += kLanes) {
      const int64_t mb = std::min(kLanes, m - m0);
      float acc[kChains][kLanes] = {};
      auto add = [&](float* a, int64_t j) {
        uint32_t c = column(col[j]);
        ok &= c < in;
        const float v = static_cast<float>(val[j]);
        const float* xrow = xt + static_cast<int64_t>(c < in ? c : 0) * m + m0;
        if (mb == kLanes) {
          for (int64_t l = 0; l < kLanes; ++l) a[l] += v * xrow[l];
        } else {
          for (int64_t l = 0; l < mb; ++l) a[l] += v * xrow[l];
        }
      };
      int64_t j = crow[r];
      const int64_t end = crow[r + 1];
      for (; j + kChains <= end; j += kChains) {
        for (int64_t k = 0; k < kChains; ++k) add(acc[k], j + k);
      }
      for (; j < end; ++j) add(acc[0], j);
      for (int64_t l = 0; l < mb; ++l) {
        float sum = 0.0f;
        for (int64_t k = 0; k < kChains; ++k) sum += acc[k][l];
        out[(m0 + l) * n + r] = static_cast<out_t>(b + sum);
      }
    }
  }
  return ok;
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
  // fp32 x: [in] for batch 1, transposed [in, m] otherwise (one pass, then every nonzero reads contiguous rows)
  const at::Tensor xf = m == 1 ? x2d.to(at::kFloat).contiguous() : x2d.to(at::kFloat).t().contiguous();
  const int64_t* p = crow.data_ptr<int64_t>();
  const int64_t nnz = values.numel();
  // about 64K multiply-adds per task; small layers stay on one thread
  const int64_t per_row = std::max<int64_t>(1, nnz / n) * m;
  const int64_t grain = std::max<int64_t>(1, 65536 / per_row);
  std::atomic<bool> ok{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "csr_linear", [&] {
    using value_t = scalar_t;
    const value_t* val = values.data_ptr<value_t>();
    const value_t* b = bias ? bias->data_ptr<value_t>() : nullptr;
    value_t* o = out.data_ptr<value_t>();
    const float* xp = xf.data_ptr<float>();
    const uint32_t in = static_cast<uint32_t>(std::min<int64_t>(in_features, UINT32_MAX));
    auto run = [&](auto* cols) {
      at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
        const bool good = m == 1 ? rows_times_vector(p, cols, val, xp, b, in, r0, r1, o)
                                 : rows_times_batch(p, cols, val, xp, b, in, m, n, r0, r1, o);
        if (!good) ok = false;
      });
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
