// RDA with granularity ("block", rows, cols) on CPU (ALGORITHMS.md section 3), for penalized 2-D weights.
// Per tensor: the tile RMS of w; with reweighting the exact max of this step's A (unless given; the
// rda_block_max_A op runs that pass alone); then tile by tile (in parallel over tiles) the element update, the
// tile's ||T||, the group prox and the tile's occupancy bit: a 64x64 tile's six fp32 arrays are ~100 KB, so the
// prox loop re-reads T from L2, not from memory.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../check_args.h"
#include "../flat.h"
#include "../rda_math.h"
#include "step_cpu.h"

namespace sparse_rda {
namespace {

// The tiles of a rows x cols matrix in br x bc blocks, the last row / column of tiles ragged.
struct Tiling {
  int64_t rows, cols, br, bc, tile_rows, tile_cols;
  Tiling(int64_t rows_, int64_t cols_, int64_t br_, int64_t bc_)
      : rows(rows_), cols(cols_), br(br_), bc(bc_), tile_rows((rows_ + br_ - 1) / br_),
        tile_cols((cols_ + bc_ - 1) / bc_) {}
  int64_t tiles() const { return tile_rows * tile_cols; }
  int64_t row_begin(int64_t tile) const { return tile / tile_cols * br; }
  int64_t row_end(int64_t tile) const { return std::min(row_begin(tile) + br, rows); }
  int64_t col_begin(int64_t tile) const { return tile % tile_cols * bc; }
  int64_t col_end(int64_t tile) const { return std::min(col_begin(tile) + bc, cols); }
  int64_t count(int64_t tile) const { return (row_end(tile) - row_begin(tile)) * (col_end(tile) - col_begin(tile)); }
};

// The loops below run over one row of one tile (contiguous, at most bc elements) with restrict pointers and
// OpenMP simd reductions, so that they vectorize; sums over a row are float, over a tile's rows double.

template <typename param_t>
SPARSE_RDA_CPU_CLONES float row_sum_squares(const param_t* __restrict__ w, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(w[i]);
    sum += x * x;
  }
  return sum;
}

// The element update of one tile row: the tile's new A and B stored on each element (the state keeps the
// weight's shape), T and v updated; returns the row's sum of the new T squared.
template <typename param_t, typename grad_t>
SPARSE_RDA_CPU_CLONES float row_update(const param_t* __restrict__ w, const grad_t* __restrict__ g,
                                       float* __restrict__ T, float* __restrict__ B, float* __restrict__ A,
                                       float* __restrict__ v, int64_t n, float tile_A, float tile_B,
                                       const RdaScalars s) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    A[i] = tile_A;
    B[i] = tile_B;
    float Ti = T[i], vi = v[i];
    dual_average(static_cast<float>(w[i]), static_cast<float>(g[i]), Ti, vi, s);
    T[i] = Ti;
    v[i] = vi;
    sum += Ti * Ti;
  }
  return sum;
}

// The group prox of one tile row: w = T * shrink; returns the row's nonzero count.
template <typename param_t>
SPARSE_RDA_CPU_CLONES int64_t row_prox(param_t* __restrict__ w, const float* __restrict__ T, int64_t n, float shrink) {
  int64_t count = 0;
#pragma omp simd reduction(+ : count)
  for (int64_t i = 0; i < n; ++i) {
    const param_t stored = static_cast<param_t>(T[i] * shrink);
    w[i] = stored;
    count += static_cast<float>(stored) != 0.0f;
  }
  return count;
}

// a per tile: the RMS of its weights.
template <typename param_t>
std::vector<float> tile_rms(const param_t* w, const Tiling& t) {
  std::vector<float> rms(t.tiles());
  at::parallel_for(0, t.tiles(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t c0 = t.col_begin(tile), n = t.col_end(tile) - c0;
      double sum = 0.0;
      for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) sum += row_sum_squares(w + r * t.cols + c0, n);
      rms[tile] = static_cast<float>(std::sqrt(sum / static_cast<double>(t.count(tile))));
    }
  });
  return rms;
}

// The index of a tile's first element: a tile's A and B are that element's (every element of the tile holds
// the same values after a step; a state loaded with others elsewhere in the tile reads the same).
int64_t first_element(const Tiling& t, int64_t tile) { return t.row_begin(tile) * t.cols + t.col_begin(tile); }

// The max over tiles of this step's (finite) tile A.
float max_new_A(const float* A, const std::vector<float>& rms, const Tiling& t, const RdaScalars& s) {
  return at::parallel_reduce(
      0, t.tiles(), 1, 0.0f,
      [&](int64_t begin, int64_t end, float running) {
        for (int64_t tile = begin; tile < end; ++tile) {
          running = std::max(running, finite_or_zero(new_A(A[first_element(t, tile)], rms[tile], s)));
        }
        return running;
      },
      [](float x, float y) { return std::max(x, y); });
}

// One tile: the element update, then the group prox of the updated T while the tile is in cache. Returns the
// tile's nonzero count and sets its occupancy bit.
template <typename param_t, typename grad_t>
int64_t block_tile(int64_t tile, param_t* w, const grad_t* g, float* T, float* B, float* A, float* v, bool* live,
                   const Tiling& t, float rms, float max_A, bool reweight, const RdaScalars& s) {
  const int64_t c0 = t.col_begin(tile), n = t.col_end(tile) - c0;
  const int64_t first = first_element(t, tile);
  const float tile_A = new_A(A[first], rms, s);
  const float om = reweight ? reweight_factor(tile_A, max_A, s.max_factor) : 1.0f;
  const float tile_B = new_B(B[first], om, s);
  double sum_T2 = 0.0;
  for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
    const int64_t i = r * t.cols + c0;
    sum_T2 += row_update(w + i, g + i, T + i, B + i, A + i, v + i, n, tile_A, tile_B, s);
  }
  const float shrink = group_shrink(static_cast<float>(std::sqrt(sum_T2)), s.lam * tile_B,
                                    std::sqrt(static_cast<float>(t.count(tile))));
  live[tile] = shrink > 0.0f;
  int64_t count = 0;
  for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
    count += row_prox(w + r * t.cols + c0, T + r * t.cols + c0, n, shrink);
  }
  return count;
}

// The max pass alone (the rda_block_max_A op): the tile RMS, then the max of the tiles' new A.
template <typename param_t>
float block_max_A(const param_t* w, const float* A, const Tiling& t, const RdaScalars& s) {
  return max_new_A(A, tile_rms(w, t), t, s);
}

// given_max_A: the max of A given for this tensor, or null to take it here.
template <typename param_t, typename grad_t>
int64_t block_tensor(param_t* w, const grad_t* g, float* T, float* B, float* A, float* v, bool* live,
                     const Tiling& t, bool reweight, const float* given_max_A, const RdaScalars& s) {
  const std::vector<float> rms = tile_rms(w, t);
  const float max_A = !reweight ? 0.0f : given_max_A != nullptr ? *given_max_A : max_new_A(A, rms, t, s);
  return at::parallel_reduce(
      0, t.tiles(), 1, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t count) {
        for (int64_t tile = begin; tile < end; ++tile) {
          count += block_tile(tile, w, g, T, B, A, v, live, t, rms[tile], max_A, reweight, s);
        }
        return count;
      },
      std::plus<int64_t>());
}

}  // namespace

at::Tensor rda_block_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                              at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                              at::ArrayRef<double> hyper, bool reweight, bool maximize,
                              const std::optional<at::Tensor>& inv_scale,
                              const std::optional<at::Tensor>& device_hyper,
                              const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& max_A) {
  check_block_step_args("rda_block_step_", params, grads, T, B, A, v, occupancy, block, hyper, inv_scale,
                        device_hyper, found_inf);
  check_max_A("rda_block_step_", max_A, params);
  if (found_inf_set(found_inf)) return count_nonzeros(params);  // nothing written, the maps neither
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto nnz = at::empty({n_tensors}, at::TensorOptions().dtype(at::kLong));
  auto* counts = nnz.data_ptr<int64_t>();
  const RdaScalars s =
      with_device_form(make_rda_scalars(hyper.data(), host_inv_scale(inv_scale), maximize), device_hyper);
  const at::Tensor given = given_max_A(max_A);
  for (int64_t k = 0; k < n_tensors; ++k) {
    Flat w(params[k]), Ts(T[k]), Bs(B[k]), As(A[k]), vs(v[k]), live(occupancy[k]);
    const at::Tensor g = grad_for(params[k], grads[k]);
    const Tiling tiling(params[k].size(0), params[k].size(1), block[0], block[1]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.flat.scalar_type(), "rda_block_step_cpu", [&] {
      auto run = [&](auto* grad) {
        return block_tensor(w.flat.data_ptr<scalar_t>(), grad, Ts.flat.data_ptr<float>(), Bs.flat.data_ptr<float>(),
                            As.flat.data_ptr<float>(), vs.flat.data_ptr<float>(), live.flat.data_ptr<bool>(), tiling,
                            reweight, given.defined() ? given.data_ptr<float>() + k : nullptr, s);
      };
      counts[k] = g.scalar_type() == w.flat.scalar_type() ? run(g.data_ptr<scalar_t>()) : run(g.data_ptr<float>());
    });
    for (Flat* f : {&w, &Ts, &Bs, &As, &vs, &live}) f->finish();
  }
  return nnz;
}

// The step's max pass alone; writes nothing. A skipped step (found_inf set) gives zeros, as the CUDA max kernel.
at::Tensor rda_block_max_A_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                               at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                               at::ArrayRef<double> hyper, bool /*reweight*/, bool maximize,
                               const std::optional<at::Tensor>& inv_scale,
                               const std::optional<at::Tensor>& device_hyper,
                               const std::optional<at::Tensor>& found_inf) {
  check_block_step_args("rda_block_max_A", params, grads, T, B, A, v, occupancy, block, hyper, inv_scale,
                        device_hyper, found_inf);
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto out = at::zeros({n_tensors}, at::TensorOptions().dtype(at::kFloat));
  if (found_inf_set(found_inf)) return out;
  auto* maxes = out.data_ptr<float>();
  const RdaScalars s = with_device_form(make_rda_scalars(hyper.data(), 1.0f, maximize), device_hyper);
  for (int64_t k = 0; k < n_tensors; ++k) {
    const at::Tensor w = params[k].contiguous(), As = A[k].contiguous();
    const Tiling tiling(params[k].size(0), params[k].size(1), block[0], block[1]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "rda_block_max_A_cpu", [&] {
      maxes[k] = block_max_A(w.data_ptr<scalar_t>(), As.data_ptr<float>(), tiling, s);
    });
  }
  return out;
}

}  // namespace sparse_rda
