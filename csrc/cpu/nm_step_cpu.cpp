// RDA with granularity ("nm", N, M) on CPU (ALGORITHMS.md section 3d), for penalized weights of 2+ dims viewed as
// [rows, K], K = prod(shape[1:]): the element step's update of every element (A, om, B, T, v: rda_math.h, factor
// 1), then in each group of M consecutive weights of a row (a row's last group shorter when M does not divide K)
// only the N largest |S(T)| kept, ties to the lower index, the rest +0. Per tensor: with reweighting the element
// step's max pass (unless given); then in parallel over groups, span by span of whole groups: the element update
// of a span into a scratch array (one vectorizable loop, as the element step's), then each group's top N from it.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../check_args.h"
#include "../flat.h"
#include "../rda_math.h"
#include "step_cpu.h"

namespace sparse_rda {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task, as the element step's
constexpr int64_t kSpan = 1024;      // elements per scratch span: whole groups, at least 32 of them

// The groups of M along rows of K elements, walked in order from one group: its first element and length.
struct GroupWalk {
  int64_t K, M, per_row, row, col;  // col: the group's index in its row
  GroupWalk(int64_t K_, int64_t M_, int64_t group)
      : K(K_), M(M_), per_row((K_ + M_ - 1) / M_), row(group / per_row), col(group % per_row) {}
  int64_t first() const { return row * K + col * M; }
  int length() const { return static_cast<int>(std::min(M, K - col * M)); }
  int64_t end() const { return first() + length(); }
  void advance() {
    if (++col == per_row) {
      col = 0;
      ++row;
    }
  }
};

// A tensor's arrays, contiguous.
template <typename param_t, typename grad_t>
struct Arrays {
  param_t* w;
  const grad_t* g;
  float *T, *B, *A, *v;
};

// The element step's update of n consecutive elements (rda_math.h, factor 1): A, B, T and v stored, the
// soft-thresholded weights into out (w is written after the selection).
template <bool REWEIGHT, typename param_t, typename grad_t>
SPARSE_RDA_CPU_CLONES void update_span(const param_t* __restrict__ w, const grad_t* __restrict__ g,
                                       float* __restrict__ T, float* __restrict__ B, float* __restrict__ A,
                                       float* __restrict__ v, float* __restrict__ out, int64_t n, const RdaScalars s,
                                       float max_A) {
  for (int64_t i = 0; i < n; ++i) {
    const float wi = static_cast<float>(w[i]);
    const float A_next = new_A(A[i], std::fabs(wi), s);
    A[i] = A_next;
    const float om_factor = REWEIGHT ? reweight_factor(A_next, max_A, s.max_factor) : 1.0f;
    float Bi = B[i], Ti = T[i], vi = v[i];
    out[i] = rda_element(wi, static_cast<float>(g[i]), om_factor, Bi, Ti, vi, s);
    B[i] = Bi;
    T[i] = Ti;
    v[i] = vi;
  }
}

// One group's weights from its soft-thresholded values ws[0, len), len <= C: slot i kept iff fewer than `keep`
// slots rank above it (rda_math.h's nm_ranks_above, as nm_keep_mask), the rest +0; returns the group's nonzero
// count as stored. The counts are summed over j for all i at once, the loop order that vectorizes: 2-4x faster
// than nm_keep_mask's one i at a time (measured at C = 4 and 32). Always inlined, into select_span's clones: GCC
// kept it out of line at C = 32, compiled for baseline x86-64 only (3x slower).
template <int C, typename param_t>
[[gnu::always_inline]] inline int64_t select_group(param_t* __restrict__ w, const float* __restrict__ ws, int len,
                                                   int keep) {
  float key[C];
  for (int k = 0; k < C; ++k) key[k] = k < len ? nm_key(ws[k]) : kNmAbsent;
  int above[C] = {};
  for (int j = 0; j < C; ++j) {
    for (int i = 0; i < C; ++i) above[i] += nm_ranks_above(key[j], j, key[i], i);
  }
  int64_t count = 0;
  for (int k = 0; k < len; ++k) {
    const param_t stored = static_cast<param_t>(above[k] < keep ? ws[k] : 0.0f);
    w[k] = stored;
    count += static_cast<float>(stored) != 0.0f;
  }
  return count;
}

// `groups` consecutive groups from the walk's, whose values ws holds from the first one's first element on.
template <int C, typename param_t>
SPARSE_RDA_CPU_CLONES int64_t select_span(param_t* w, const float* ws, GroupWalk walk, int64_t groups, int keep) {
  const int64_t first = walk.first();
  int64_t count = 0;
  for (int64_t k = 0; k < groups; ++k, walk.advance()) {
    count += select_group<C>(w + walk.first(), ws + (walk.first() - first), walk.length(), keep);
  }
  return count;
}

// Groups [begin, end) of a tensor, span by span; returns their nonzero count.
template <int C, bool REWEIGHT, typename param_t, typename grad_t>
int64_t nm_range(const Arrays<param_t, grad_t>& x, int64_t K, int64_t M, int keep, int64_t begin, int64_t end,
                 const RdaScalars& s, float max_A) {
  float scratch[kSpan];
  const int64_t span_groups = kSpan / M;
  int64_t count = 0;
  for (int64_t group = begin; group < end; group += span_groups) {
    const int64_t groups = std::min(span_groups, end - group);
    const GroupWalk walk(K, M, group);
    // the span's groups are consecutive in memory: rows follow each other
    const int64_t first = walk.first(), n = GroupWalk(K, M, group + groups - 1).end() - first;
    update_span<REWEIGHT>(x.w + first, x.g + first, x.T + first, x.B + first, x.A + first, x.v + first, scratch, n,
                          s, max_A);
    count += select_span<C>(x.w, scratch, walk, groups, keep);
  }
  return count;
}

// Calls f with the group capacity for M as an integral constant: the smallest of 4, 8, 16, 32 holding M.
template <typename F>
int64_t with_capacity(int64_t M, F&& f) {
  if (M <= 4) return f(std::integral_constant<int, 4>{});
  if (M <= 8) return f(std::integral_constant<int, 8>{});
  if (M <= 16) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, kMaxNmGroup>{});
}

// One tensor of `rows` rows of K: the step in parallel over its groups; returns its nonzero count.
template <typename param_t, typename grad_t>
int64_t nm_tensor(const Arrays<param_t, grad_t>& x, int64_t rows, int64_t K, int keep, int64_t M, bool reweight,
                  float max_A, const RdaScalars& s) {
  if (rows == 0 || K == 0) return 0;
  const int64_t groups = rows * ((K + M - 1) / M);
  return with_capacity(M, [&](auto capacity) {
    constexpr int C = decltype(capacity)::value;
    return at::parallel_reduce(
        0, groups, std::max<int64_t>(1, kGrain / M), int64_t(0),
        [&](int64_t begin, int64_t end, int64_t count) {
          return count + (reweight ? nm_range<C, true>(x, K, M, keep, begin, end, s, max_A)
                                   : nm_range<C, false>(x, K, M, keep, begin, end, s, max_A));
        },
        std::plus<int64_t>());
  });
}

// prod(shape[1:]): a weight's row length.
int64_t row_length(const at::Tensor& t) {
  int64_t K = 1;
  for (int64_t d = 1; d < t.dim(); ++d) K *= t.size(d);
  return K;
}

}  // namespace

at::Tensor rda_nm_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                           at::TensorList A, at::TensorList v, at::IntArrayRef nm, at::ArrayRef<double> hyper,
                           bool reweight, bool maximize, const std::optional<at::Tensor>& inv_scale,
                           const std::optional<at::Tensor>& device_hyper, const std::optional<at::Tensor>& found_inf,
                           const std::optional<at::Tensor>& max_A) {
  check_nm_step_args("rda_nm_step_", params, grads, T, B, A, v, nm, hyper, inv_scale, device_hyper, found_inf);
  check_max_A("rda_nm_step_", max_A, params);
  if (found_inf_set(found_inf)) return count_nonzeros(params);
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto nnz = at::empty({n_tensors}, at::TensorOptions().dtype(at::kLong));
  auto* counts = nnz.data_ptr<int64_t>();
  const RdaScalars s =
      with_device_form(make_rda_scalars(hyper.data(), host_inv_scale(inv_scale), maximize), device_hyper);
  const at::Tensor given = given_max_A(max_A);
  const int keep = static_cast<int>(nm[0]);
  for (int64_t t = 0; t < n_tensors; ++t) {
    Flat w(params[t]), Ts(T[t]), Bs(B[t]), As(A[t]), vs(v[t]);
    const at::Tensor g = grad_for(params[t], grads[t]);
    float max_A_t = 0.0f;
    if (reweight) max_A_t = given.defined() ? given.data_ptr<float>()[t] : element_max_A(w.flat, As.flat, s);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.flat.scalar_type(), "rda_nm_step_cpu", [&] {
      auto run = [&](auto* grad) {
        using grad_t = std::remove_cv_t<std::remove_pointer_t<decltype(grad)>>;
        const Arrays<scalar_t, grad_t> x{w.flat.data_ptr<scalar_t>(), grad, Ts.flat.data_ptr<float>(),
                                         Bs.flat.data_ptr<float>(), As.flat.data_ptr<float>(),
                                         vs.flat.data_ptr<float>()};
        return nm_tensor(x, params[t].size(0), row_length(params[t]), keep, nm[1], reweight, max_A_t, s);
      };
      counts[t] = g.scalar_type() == w.flat.scalar_type() ? run(g.data_ptr<scalar_t>()) : run(g.data_ptr<float>());
    });
    for (Flat* f : {&w, &Ts, &Bs, &As, &vs}) f->finish();
  }
  return nnz;
}

}  // namespace sparse_rda
