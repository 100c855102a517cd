// CUDA RDA step in block granularity (docs/ALGORITHMS.md section 3), the native counterpart of
// kernels/rda_block_step.py and csrc/cpu/block_step_cpu.cpp: one thread block per tile.
//   1. block_max_A_kernel (with reweighting, unless the max is given; alone: the rda_block_max_A op): the tile's
//      RMS, its A = beta_b A + (1 - beta_b) RMS and the per-tensor max of A (atomic); om needs that max over all
//      tiles before any tile is shrunk.
//   2. block_step_kernel: per element the dual average (T, v) while summing w^2 and T^2; then the tile's A, om,
//      B and group prox factor; then w = T * shrink with A and B stored on every element (the state keeps the
//      weight's shape), and the tile's occupancy bit. The prox pass re-reads the T this same thread just wrote
//      (from cache), so a tile costs one pass over memory.
// The tensors travel by value in the kernel arguments (TensorBatch), one thread block per tile. In the device form
// the scalars are read in the kernels (DeviceScalars, resolve), and a set found_inf makes them write nothing.
// Every pass walks the same packs per thread (RowWalk: no division per pack), 16-byte accesses of the fp32 state
// when the weight's rows are whole aligned packs.
#include <vector>

#include "device_common.cuh"

namespace sparse_rda {
namespace cuda {
namespace {

constexpr int kMaxThreads = 256;

struct TiledTensor {
  BlockTensor t;
  bool vectorized;  // every tile row is whole aligned packs of kVec elements
};
using Batch = TensorBatch<TiledTensor>;

struct TileShape {
  int rows, cols;
};

// One tile, as its thread block sees it.
struct Tile {
  int64_t first;  // index of its top-left element
  int64_t cols;   // the weight's row stride
  int height, width;  // block_rows x block_cols, less at the ragged edges
  int64_t index;  // in the occupancy map
  __device__ float count() const { return static_cast<float>(height) * static_cast<float>(width); }
};

// Tile number `tile` (row-major over the tiles) of t.
__device__ __forceinline__ Tile tile_of(const BlockTensor& t, int64_t tile, TileShape shape) {
  const int64_t tile_cols = (t.cols + shape.cols - 1) / shape.cols;
  const int64_t r0 = tile / tile_cols * shape.rows, c0 = tile % tile_cols * shape.cols;
  return {r0 * t.cols + c0, t.cols, static_cast<int>(min(static_cast<int64_t>(shape.rows), t.rows - r0)),
          static_cast<int>(min(static_cast<int64_t>(shape.cols), t.cols - c0)), tile};
}

// The walk over this thread's N-element packs of a tile, u = threadIdx.x, + blockDim.x, ... of height x width / N
// packs, as (row, pack in the row): the divisions happen once per tile, not per pack (N divides the tile's width
// when N > 1).
template <int N>
__device__ __forceinline__ RowWalk<int> first_pack(const Tile& tile) {
  return RowWalk<int>(static_cast<int>(threadIdx.x), tile.width / N, static_cast<int>(blockDim.x));
}

// Calls f(i) with the first element index i of each pack of the walk. No unrolling: one pack's loads are enough
// in flight at these kernels' occupancy, and the SASS counts stay exact (tests/test_cuda_sass.py). The column
// offset is an int (col * N < the tile's width): computed in 64 bits, nvcc split the prox pass's 128-bit stores
// into 32-bit ones (nvcc 13.0, seen in the PTX).
template <int N, typename F>
__device__ __forceinline__ void for_each_pack(const Tile& tile, RowWalk<int> at, F&& f) {
#pragma unroll 1
  for (; at.row < tile.height; at.advance()) f(tile.first + at.row * tile.cols + at.col * N);
}

template <int N, typename param_t>
__device__ __forceinline__ float sum_squares(const param_t* __restrict__ w, const Tile& tile, RowWalk<int> at) {
  float sum = 0.0f;
  for_each_pack<N>(tile, at, [&](int64_t i) {
    const Pack<param_t, N> wp = load_pack<param_t, N>(w, i);
#pragma unroll
    for (int k = 0; k < N; ++k) sum += to_float(wp.x[k]) * to_float(wp.x[k]);
  });
  return sum;
}

// The tile's RMS of w, summed over the whole thread block.
template <int N, typename param_t>
__device__ __forceinline__ float tile_rms(const BlockTensor& t, const Tile& tile) {
  const float sum = sum_squares<N>(static_cast<const param_t*>(t.w), tile, first_pack<N>(tile));
  return sqrtf(block_all_reduce(sum, AddOp{}) / tile.count());
}

template <typename param_t>
__global__ void block_max_A_kernel(const Batch b, TileShape shape, RdaScalars host, DeviceScalars d, float* max_A) {
  const Resolved r = resolve(host, d);
  if (r.skip) return;  // block-uniform, before the barriers of the sum
  int64_t tile_index;
  const int k = b.locate(tile_index);
  const BlockTensor& t = b.tensors[k].t;
  const Tile tile = tile_of(t, tile_index, shape);
  const float rms = b.tensors[k].vectorized ? tile_rms<kVec, param_t>(t, tile) : tile_rms<1, param_t>(t, tile);
  if (threadIdx.x == 0) atomic_max_nonnegative(max_A + k, finite_or_zero(new_A(t.A[tile.first], rms, r.s)));
}

// T and v of the tile's elements, stored; adds the tile's sums of w^2 and of the new T^2.
template <int N, typename param_t, typename grad_t>
__device__ __forceinline__ void dual_average_pass(const param_t* __restrict__ w, const grad_t* __restrict__ g,
                                                  float* __restrict__ T, float* __restrict__ v, const Tile& tile,
                                                  RowWalk<int> at, const RdaScalars& s, float& sum_w2, float& sum_T2) {
  for_each_pack<N>(tile, at, [&](int64_t i) {
    const Pack<param_t, N> wp = load_pack<param_t, N>(w, i);
    const Pack<grad_t, N> gp = load_pack<grad_t, N>(g, i);
    Pack<float, N> Tp = load_pack<float, N>(T, i), vp = load_pack<float, N>(v, i);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float wi = to_float(wp.x[k]);
      sum_w2 += wi * wi;
      dual_average(wi, to_float(gp.x[k]), Tp.x[k], vp.x[k], s);
      sum_T2 += Tp.x[k] * Tp.x[k];
    }
    store_pack<float, N>(T, i, Tp);
    store_pack<float, N>(v, i, vp);
  });
}

// w = T * shrink and the tile's A and B on every element; returns this thread's nonzero count. The three stores
// of a pack follow each other, its values all computed before them.
template <int N, typename param_t>
__device__ __forceinline__ unsigned prox_pass(param_t* __restrict__ w, const float* __restrict__ T,
                                              float* __restrict__ A, float* __restrict__ B, const Tile& tile,
                                              RowWalk<int> at, float A_tile, float B_tile, float shrink) {
  Pack<float, N> Ap, Bp;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    Ap.x[k] = A_tile;
    Bp.x[k] = B_tile;
  }
  unsigned count = 0;
  for_each_pack<N>(tile, at, [&](int64_t i) {
    const Pack<float, N> Tp = load_pack<float, N>(T, i);
    Pack<param_t, N> wp;
#pragma unroll
    for (int k = 0; k < N; ++k) wp.x[k] = from_float<param_t>(Tp.x[k] * shrink);
    store_pack<float, N>(A, i, Ap);
    store_pack<float, N>(B, i, Bp);
    store_pack<param_t, N>(w, i, wp);
    count += nonzeros(wp);
  });
  return count;
}

// The nonzeros of the tile's weights as they are; returns this thread's count.
template <int N, typename param_t>
__device__ __forceinline__ unsigned nonzero_pass(const param_t* __restrict__ w, const Tile& tile) {
  unsigned count = 0;
  for_each_pack<N>(tile, first_pack<N>(tile), [&](int64_t i) { count += nonzeros(load_pack<param_t, N>(w, i)); });
  return count;
}

// What the tile's step leaves for its thread block to publish.
struct TileResult {
  unsigned count;  // this thread's nonzeros
  float shrink;
};

// The block step of one tile in N-element packs: the dual average, the tile's A, om, B and group prox factor from
// the block's sums, then the prox pass over the same packs (this thread re-reads the T it just wrote).
template <int N, typename param_t, typename grad_t>
__device__ __forceinline__ TileResult step_tile(const BlockTensor& t, const Tile& tile, const RdaScalars& s,
                                                bool reweight, float max_A) {
  auto* w = static_cast<param_t*>(t.w);
  const RowWalk<int> at = first_pack<N>(tile);
  // the tile's A and B, read before the barriers of the sums: the prox pass overwrites them
  const float A_old = t.A[tile.first], B_old = t.B[tile.first];
  float sum_w2 = 0.0f, sum_T2 = 0.0f;
  dual_average_pass<N>(static_cast<const param_t*>(w), static_cast<const grad_t*>(t.g), t.T, t.v, tile, at, s,
                       sum_w2, sum_T2);
  sum_w2 = block_all_reduce(sum_w2, AddOp{});
  sum_T2 = block_all_reduce(sum_T2, AddOp{});
  const float A = new_A(A_old, sqrtf(sum_w2 / tile.count()), s);
  const float om = reweight ? reweight_factor(A, max_A, s.max_factor) : 1.0f;
  const float B = new_B(B_old, om, s);
  const float shrink = group_shrink(sqrtf(sum_T2), s.lam * B, sqrtf(tile.count()));
  return {prox_pass<N>(w, t.T, t.A, t.B, tile, at, A, B, shrink), shrink};
}

template <typename param_t, typename grad_t>
__global__ void block_step_kernel(const Batch b, TileShape shape, RdaScalars host, DeviceScalars d,
                                  const float* inv_scale, bool reweight, const float* max_A, unsigned long long* nnz) {
  int64_t tile_index;
  const int k = b.locate(tile_index);
  const BlockTensor& t = b.tensors[k].t;
  const Tile tile = tile_of(t, tile_index, shape);
  const bool vectorized = b.tensors[k].vectorized;  // block-uniform, as the skip flag
  Resolved r = resolve(host, d);
  if (r.skip) {  // GradScaler found infs: write nothing (the occupancy bit neither), count what is there
    const auto* w = static_cast<const param_t*>(t.w);
    unsigned count = vectorized ? nonzero_pass<kVec>(w, tile) : nonzero_pass<1>(w, tile);
    count = block_all_reduce(count, AddOp{});
    if (threadIdx.x == 0) atomicAdd(nnz + k, static_cast<unsigned long long>(count));
    return;
  }
  if (inv_scale != nullptr) r.s.grad_factor *= *inv_scale;  // host grad_factor is +-1 here
  const float m = reweight ? max_A[k] : 0.0f;
  const TileResult result = vectorized ? step_tile<kVec, param_t, grad_t>(t, tile, r.s, reweight, m)
                                       : step_tile<1, param_t, grad_t>(t, tile, r.s, reweight, m);
  const unsigned count = block_all_reduce(result.count, AddOp{});  // <= the tile's elements (an int)
  if (threadIdx.x == 0) {
    t.occupancy[tile.index] = result.shrink > 0.0f;
    atomicAdd(nnz + k, static_cast<unsigned long long>(count));
  }
}

bool aligned(const void* p, size_t element_size) { return reinterpret_cast<uintptr_t>(p) % (kVec * element_size) == 0; }

// Threads per tile: one per pack of kVec elements, a warp at least.
int threads_for(int64_t tile_elements) {
  int threads = 32;
  while (threads < kMaxThreads && threads * static_cast<int64_t>(kVec) < tile_elements) threads *= 2;
  return threads;
}

// Calls launch(batch, begin, grid, threads, param) over the tiled tensors (param: a value of the param type).
template <typename Launch>
cudaError_t for_each_tiled_batch(const BlockTensor* tensors, int64_t n, int block_rows, int block_cols,
                                 DType w_dtype, bool grad_is_float32, Launch&& launch) {
  if (block_rows < 1 || block_cols < 1 || static_cast<int64_t>(block_rows) * block_cols > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  const size_t w_size = w_dtype == DType::kFloat32 ? 4 : 2;
  const size_t g_size = grad_is_float32 ? 4 : w_size;
  std::vector<TiledTensor> tiled;
  tiled.reserve(n);
  for (int64_t k = 0; k < n; ++k) {
    const BlockTensor& t = tensors[k];
    tiled.push_back({t, t.cols % kVec == 0 && block_cols % kVec == 0 && aligned(t.w, w_size) && aligned(t.g, g_size) &&
                            aligned(t.T, 4) && aligned(t.B, 4) && aligned(t.A, 4) && aligned(t.v, 4)});
  }
  const auto tiles_of = [&](const TiledTensor& x) {
    return (x.t.rows + block_rows - 1) / block_rows * ((x.t.cols + block_cols - 1) / block_cols);
  };
  const int threads = threads_for(static_cast<int64_t>(block_rows) * block_cols);
  return with_param_type(w_dtype, [&](auto param) {
    return for_each_batch(tiled.data(), n, tiles_of, [&](const Batch& b, int64_t begin, unsigned grid) {
      return launch(b, begin, grid, threads, param);
    });
  });
}

}  // namespace

cudaError_t launch_rda_block_max_A(const BlockTensor* tensors, int64_t n, int block_rows, int block_cols,
                                   DType w_dtype, bool grad_is_float32, RdaScalars s, DeviceScalars d, float* max_A,
                                   cudaStream_t stream) {
  const TileShape shape{block_rows, block_cols};
  return for_each_tiled_batch(tensors, n, block_rows, block_cols, w_dtype, grad_is_float32,
                              [&](const Batch& b, int64_t begin, unsigned grid, int threads, auto param) {
    using param_t = decltype(param);
    block_max_A_kernel<param_t><<<grid, threads, 0, stream>>>(b, shape, s, d, max_A + begin);
    return cudaGetLastError();
  });
}

cudaError_t launch_rda_block_step(const BlockTensor* tensors, int64_t n, int block_rows, int block_cols,
                                  DType w_dtype, bool grad_is_float32, RdaScalars s, DeviceScalars d,
                                  const float* inv_scale, bool reweight, const float* max_A, unsigned long long* nnz,
                                  cudaStream_t stream) {
  const TileShape shape{block_rows, block_cols};
  return for_each_tiled_batch(tensors, n, block_rows, block_cols, w_dtype, grad_is_float32,
                              [&](const Batch& b, int64_t begin, unsigned grid, int threads, auto param) {
    using param_t = decltype(param);
    if (grad_is_float32) {
      block_step_kernel<param_t, float><<<grid, threads, 0, stream>>>(b, shape, s, d, inv_scale, reweight,
                                                                      max_A + begin, nnz + begin);
    } else {
      block_step_kernel<param_t, param_t><<<grid, threads, 0, stream>>>(b, shape, s, d, inv_scale, reweight,
                                                                        max_A + begin, nnz + begin);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparse_rda
