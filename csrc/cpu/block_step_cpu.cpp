// RDA with granularity ("block", rows, cols) on CPU (ALGORITHMS.md section 3), for penalized 2-D weights.
// Per tensor: the tile RMS of w; with reweighting the exact max of this step's A; then tile by tile (in
// parallel over tiles) the element update, the tile's ||T||, the group prox and the tile's occupancy bit: a
// 64x64 tile's six fp32 arrays are ~100 KB, so the prox loop re-reads T from L2, not from memory.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

// a per tile: the RMS of its weights (double sums: a 64x64 tile adds 4096 squares).
template <typename param_t>
std::vector<float> tile_rms(const param_t* w, const Tiling& t) {
  std::vector<float> rms(t.tiles());
  at::parallel_for(0, t.tiles(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      double sum = 0.0;
      for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
        for (int64_t c = t.col_begin(tile); c < t.col_end(tile); ++c) {
          const float x = static_cast<float>(w[r * t.cols + c]);
          sum += static_cast<double>(x) * x;
        }
      }
      rms[tile] = static_cast<float>(std::sqrt(sum / static_cast<double>(t.count(tile))));
    }
  });
  return rms;
}

float max_new_A(const float* A, const std::vector<float>& rms, const Tiling& t, const RdaScalars& s) {
  return at::parallel_reduce(
      0, t.tiles(), 1, 0.0f,
      [&](int64_t begin, int64_t end, float running) {
        for (int64_t tile = begin; tile < end; ++tile) {
          for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
            for (int64_t c = t.col_begin(tile); c < t.col_end(tile); ++c) {
              running = std::max(running, new_A(A[r * t.cols + c], rms[tile], s));
            }
          }
        }
        return running;
      },
      [](float x, float y) { return std::max(x, y); });
}

// One tile: the element update (om from the tile's A), then the group prox of the updated T. Returns the
// tile's nonzero count and sets its occupancy bit.
template <typename param_t, typename grad_t>
int64_t block_tile(int64_t tile, param_t* w, const grad_t* g, float* T, float* B, float* A, float* v, bool* live,
                   const Tiling& t, float rms, float max_A, bool reweight, const RdaScalars& s) {
  double sum_T2 = 0.0;
  for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
    for (int64_t i = r * t.cols + t.col_begin(tile); i < r * t.cols + t.col_end(tile); ++i) {
      const float A_next = new_A(A[i], rms, s);
      A[i] = A_next;
      const float om = reweight ? reweight_factor(A_next, max_A, s.max_factor) : 1.0f;
      // rda_element's prox result is the elementwise one: block mode replaces it with the group prox below
      (void)rda_element(static_cast<float>(w[i]), static_cast<float>(g[i]), om, B[i], T[i], v[i], s);
      sum_T2 += static_cast<double>(T[i]) * T[i];
    }
  }
  const int64_t first = t.row_begin(tile) * t.cols + t.col_begin(tile);
  const float shrink = group_shrink(static_cast<float>(std::sqrt(sum_T2)), s.lam * B[first],
                                    std::sqrt(static_cast<float>(t.count(tile))));
  live[tile] = shrink > 0.0f;
  int64_t count = 0;
  for (int64_t r = t.row_begin(tile); r < t.row_end(tile); ++r) {
    for (int64_t i = r * t.cols + t.col_begin(tile); i < r * t.cols + t.col_end(tile); ++i) {
      const param_t stored = static_cast<param_t>(T[i] * shrink);
      w[i] = stored;
      count += static_cast<float>(stored) != 0.0f;
    }
  }
  return count;
}

template <typename param_t, typename grad_t>
int64_t block_tensor(param_t* w, const grad_t* g, float* T, float* B, float* A, float* v, bool* live,
                     const Tiling& t, bool reweight, const RdaScalars& s) {
  const std::vector<float> rms = tile_rms(w, t);
  const float max_A = reweight ? max_new_A(A, rms, t, s) : 0.0f;
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
                              double lr, double lam, double beta, double beta_b, double alpha, double weight_decay,
                              double max_factor, bool reweight, bool maximize,
                              const std::optional<at::Tensor>& grad_scale) {
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto nnz = at::empty({n_tensors}, at::TensorOptions().dtype(at::kLong));
  auto* counts = nnz.data_ptr<int64_t>();
  const RdaScalars s = make_rda_scalars(lr, lam, beta, beta_b, alpha, weight_decay, max_factor,
                                        inverse_scale(grad_scale), maximize);
  for (int64_t k = 0; k < n_tensors; ++k) {
    Flat w(params[k]), Ts(T[k]), Bs(B[k]), As(A[k]), vs(v[k]), live(occupancy[k]);
    const at::Tensor g = grad_for(params[k], grads[k]);
    const Tiling tiling(params[k].size(0), params[k].size(1), block[0], block[1]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.flat.scalar_type(), "rda_block_step_cpu", [&] {
      auto run = [&](auto* grad) {
        return block_tensor(w.flat.data_ptr<scalar_t>(), grad, Ts.flat.data_ptr<float>(), Bs.flat.data_ptr<float>(),
                            As.flat.data_ptr<float>(), vs.flat.data_ptr<float>(), live.flat.data_ptr<bool>(), tiling,
                            reweight, s);
      };
      counts[k] = g.scalar_type() == w.flat.scalar_type() ? run(g.data_ptr<scalar_t>()) : run(g.data_ptr<float>());
    });
    for (Flat* f : {&w, &Ts, &Bs, &As, &vs, &live}) f->finish();
  }
  return nnz;
}

}  // namespace sparse_rda
