// CUDA multi-tensor RDA / gRDA steps: one block per chunk of one tensor (the tensors by value in the kernel
// arguments, TensorBatch), fp32 math on fp32/bf16/fp16 parameters, fp32 state, per-element math from rda_math.h.
// Block reductions then one atomic per block for the per-tensor max of A and the nonzero counts. Each thread
// handles packs of 4 consecutive elements: one 16-byte load / store per fp32 state array (8-byte ones of bf16/fp16
// params and grads) when the tensor's arrays are aligned for it (torch's allocations are), element by element
// otherwise and for a chunk's tail. The chunk size is picked per launch (chunk_for), so that small models fill
// the GPU too.
#include "device_common.cuh"

namespace sparse_rda {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kPackStride = kThreads * kVec;  // elements a thread block covers per turn of its pack loop
// Elements per thread block: powers of two in [kMinChunk, kMaxChunk], multiples of kPackStride, so a chunk starts
// pack-aligned and every thread makes the same number of full turns.
constexpr int64_t kMinChunk = 2 * kPackStride;
constexpr int64_t kMaxChunk = 1 << 16;
constexpr int kBlocksPerSm = 8;  // two waves of 4 resident blocks: a small launch still balances across the SMs

using RdaBatch = TensorBatch<RdaTensor>;
using GrdaBatch = TensorBatch<GrdaTensor>;

int64_t chunks_of(int64_t numel, int64_t chunk) { return (numel + chunk - 1) / chunk; }

// The chunk for tensors[0, count), one launch: the largest that still gives kBlocksPerSm thread blocks per SM
// (kMinChunk when none does). ResNet-18's 62 tensors (two launches) get 2K and 8K chunks, ~6 and ~9.5 blocks per
// SM of an H200, where one 64K chunk per block left 0.4 and 1.3; a 1B-parameter model keeps 64K chunks (fewer
// blocks and atomics). The chunk only moves work between blocks: every element's math and every count are the same.
template <typename Tensor>
int64_t chunk_for(const Tensor* tensors, int count) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: a failed query only costs the tuning
    sms = 132;
  }
  const int64_t wanted = static_cast<int64_t>(kBlocksPerSm) * sms;
  int64_t chunk = kMaxChunk;
  for (; chunk > kMinChunk; chunk /= 2) {
    int64_t blocks = 0;
    for (int k = 0; k < count; ++k) blocks += chunks_of(tensors[k].numel, chunk);
    if (blocks >= wanted) break;
  }
  return chunk;
}

// Calls launch(batch, begin, grid, chunk) batch by batch as for_each_batch does, with a chunk per batch.
template <typename Tensor, typename Launch>
cudaError_t for_each_chunked_batch(const Tensor* tensors, int64_t n, Launch&& launch) {
  for (int64_t begin = 0; begin < n; begin += kBatchTensors) {
    const int count = batch_count(begin, n);
    const int64_t chunk = chunk_for(tensors + begin, count);
    TensorBatch<Tensor> batch{};
    const int64_t blocks = fill_batch(batch, tensors + begin, count, [&](const Tensor& t) {
      return chunks_of(t.numel, chunk);
    });
    if (blocks < 0) return cudaErrorInvalidValue;
    if (blocks == 0) continue;
    const cudaError_t status = launch(batch, begin, static_cast<unsigned>(blocks), chunk);
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

// This thread block's part of the batch: its tensor's index and its chunk of elements [start, end), of which
// [start, vec_end) is whole aligned packs (vec_end = start when the tensor's arrays are not aligned for packs).
struct Chunk {
  int tensor;
  int64_t start, vec_end, end;
};

template <typename Tensor, typename Aligned>
__device__ __forceinline__ Chunk locate_chunk(const TensorBatch<Tensor>& b, int64_t chunk, Aligned&& aligned) {
  int64_t index;
  const int k = b.locate(index);
  const int64_t start = index * chunk, end = min(start + chunk, b.tensors[k].numel);
  // chunk starts are multiples of the chunk, itself a multiple of kVec
  return {k, start, aligned(b.tensors[k]) ? start + (end - start) / kVec * kVec : start, end};
}

// How a tensor is penalized: a template parameter, so that each pack loop below is straight-line code from its
// loads to its stores, every result computed into its pack first. v1.2 branched per element inside the loop (on
// the penalty, on group means, a 64-bit division for the group), and nvcc 13.0 stored A and B (and T and v of
// 16-bit params) as four 32-bit stores each; these loops get one 128-bit store per pack and array.
enum class Penalty { kNone, kElement, kGroup };

// The magnitudes A follows for the N elements from the walk's position: |w|, or the mean |w| of each one's
// contiguous group (the walk's row: its group index, without a division per element).
template <Penalty p, int N, typename param_t>
__device__ __forceinline__ void magnitudes(const Pack<param_t, N>& wp, const float* __restrict__ means,
                                           const RowWalk<int64_t>& group, float (&a)[N]) {
  if constexpr (p == Penalty::kGroup) {
    int64_t groups[N];
    group.rows_ahead(groups);
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = means[groups[k]];
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = fabsf(to_float(wp.x[k]));
  }
}

// Elements [first, end) with stride `stride`, N at a time (N = kVec: the aligned packs; N = 1: the tail): calls
// f(i, group) with each pack's first index and the group walk at it (advanced in group mode only).
template <Penalty p, int N, typename F>
__device__ __forceinline__ void for_each_pack(int64_t first, int64_t end, int64_t stride, int64_t group_size,
                                              F&& f) {
  RowWalk<int64_t> group;
  if constexpr (p == Penalty::kGroup) group = RowWalk<int64_t>(first, group_size, stride);
  // no unrolling: one pack's loads (up to 96 bytes a thread) already cover the latency at the occupancy these
  // kernels get, and exact SASS counts stay checkable (tests/test_cuda_sass.py)
#pragma unroll 1
  for (int64_t i = first; i < end; i += stride) {
    f(i, group);
    if constexpr (p == Penalty::kGroup) group.advance();
  }
}

// The max over [chunk) of this step's finite A (penalized tensors).
template <Penalty p, int N, typename param_t>
__device__ __forceinline__ float max_A_part(const param_t* __restrict__ w, const float* __restrict__ A,
                                            const float* __restrict__ means, int64_t group_size, int64_t first,
                                            int64_t end, int64_t stride, const RdaScalars& s) {
  float running = 0.0f;
  for_each_pack<p, N>(first, end, stride, group_size, [&](int64_t i, const RowWalk<int64_t>& group) {
    const Pack<param_t, N> wp = load_pack<param_t, N>(w, i);
    const Pack<float, N> Ap = load_pack<float, N>(A, i);
    float a[N];
    magnitudes<p>(wp, means, group, a);
#pragma unroll
    for (int k = 0; k < N; ++k) running = fmaxf(running, finite_or_zero(new_A(Ap.x[k], a[k], s)));
  });
  return running;
}

template <Penalty p, typename param_t>
__device__ __forceinline__ float max_A_chunk(const RdaTensor& t, const Chunk& c, const RdaScalars& s) {
  const auto* w = static_cast<const param_t*>(t.w);
  return fmaxf(max_A_part<p, kVec>(w, t.A, t.group_means, t.group_size, c.start + threadIdx.x * kVec, c.vec_end,
                                   kPackStride, s),
               max_A_part<p, 1>(w, t.A, t.group_means, t.group_size, c.vec_end + threadIdx.x, c.end, kThreads, s));
}

template <typename param_t>
__device__ __forceinline__ bool max_A_aligned(const RdaTensor& t) {
  return pack_aligned(static_cast<const param_t*>(t.w)) && pack_aligned(t.A);
}

template <typename param_t>
__global__ void rda_max_A_kernel(const RdaBatch b, int64_t chunk, RdaScalars host, DeviceScalars d, float* max_A) {
  const Chunk c = locate_chunk(b, chunk, max_A_aligned<param_t>);
  const RdaTensor& t = b.tensors[c.tensor];
  const Resolved r = resolve(host, d);
  if (!(t.factor > 0.0f) || r.skip) return;  // block-uniform
  float running = t.group_means ? max_A_chunk<Penalty::kGroup, param_t>(t, c, r.s)
                                : max_A_chunk<Penalty::kElement, param_t>(t, c, r.s);
  running = block_all_reduce(running, MaxOp{});
  if (threadIdx.x == 0) atomic_max_nonnegative(max_A + c.tensor, running);
}

// The RDA step's per-tensor values besides the arrays.
struct RdaFactors {
  float factor;  // sqrt(group size) of a penalized tensor
  bool reweight;
  float max_A;
};

// The RDA step over N-element packs of [first, end); returns this thread's nonzero count. All N results are
// computed into packs before the stores, which follow each other with no branch between them.
template <Penalty p, int N, typename param_t, typename grad_t>
__device__ __forceinline__ unsigned rda_part(param_t* __restrict__ w, const grad_t* __restrict__ g,
                                             float* __restrict__ T, float* __restrict__ B, float* __restrict__ A,
                                             float* __restrict__ v, const float* __restrict__ means,
                                             int64_t group_size, RdaFactors f, int64_t first, int64_t end,
                                             int64_t stride, const RdaScalars& s) {
  unsigned count = 0;
  for_each_pack<p, N>(first, end, stride, group_size, [&](int64_t i, const RowWalk<int64_t>& group) {
    Pack<param_t, N> wp = load_pack<param_t, N>(w, i);
    const Pack<grad_t, N> gp = load_pack<grad_t, N>(g, i);
    Pack<float, N> Tp = load_pack<float, N>(T, i), vp = load_pack<float, N>(v, i), Ap, Bp;
    if constexpr (p == Penalty::kNone) {  // A and B are neither used nor stored back
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float stored = rda_unpenalized_element(to_float(wp.x[k]), to_float(gp.x[k]), Tp.x[k], vp.x[k], s);
        wp.x[k] = from_float<param_t>(stored);
      }
    } else {
      Ap = load_pack<float, N>(A, i);
      Bp = load_pack<float, N>(B, i);
      float a[N];
      magnitudes<p>(wp, means, group, a);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        Ap.x[k] = new_A(Ap.x[k], a[k], s);
        const float om_factor = (f.reweight ? reweight_factor(Ap.x[k], f.max_A, s.max_factor) : 1.0f) * f.factor;
        wp.x[k] = from_float<param_t>(
            rda_element(to_float(wp.x[k]), to_float(gp.x[k]), om_factor, Bp.x[k], Tp.x[k], vp.x[k], s));
      }
      store_pack<float, N>(A, i, Ap);
      store_pack<float, N>(B, i, Bp);
    }
    store_pack<float, N>(T, i, Tp);
    store_pack<float, N>(v, i, vp);
    store_pack<param_t, N>(w, i, wp);
    count += nonzeros(wp);
  });
  return count;
}

template <Penalty p, typename param_t, typename grad_t>
__device__ __forceinline__ unsigned rda_chunk(const RdaTensor& t, const Chunk& c, RdaFactors f,
                                              const RdaScalars& s) {
  auto* w = static_cast<param_t*>(t.w);
  const auto* g = static_cast<const grad_t*>(t.g);
  return rda_part<p, kVec>(w, g, t.T, t.B, t.A, t.v, t.group_means, t.group_size, f, c.start + threadIdx.x * kVec,
                           c.vec_end, kPackStride, s) +
         rda_part<p, 1>(w, g, t.T, t.B, t.A, t.v, t.group_means, t.group_size, f, c.vec_end + threadIdx.x, c.end,
                        kThreads, s);
}

// The nonzeros of w in the chunk as it is (a skipped step).
template <typename param_t>
__device__ __forceinline__ unsigned nonzeros_chunk(const param_t* __restrict__ w, const Chunk& c) {
  unsigned count = 0;
  using Walk = RowWalk<int64_t>;
  for_each_pack<Penalty::kNone, kVec>(c.start + threadIdx.x * kVec, c.vec_end, kPackStride, 1,
                                      [&](int64_t i, const Walk&) { count += nonzeros(load_pack(w, i)); });
  for_each_pack<Penalty::kNone, 1>(c.vec_end + threadIdx.x, c.end, kThreads, 1,
                                   [&](int64_t i, const Walk&) { count += nonzeros(load_pack<param_t, 1>(w, i)); });
  return count;
}

template <typename param_t, typename grad_t>
__device__ __forceinline__ bool rda_aligned(const RdaTensor& t) {
  return pack_aligned(static_cast<const param_t*>(t.w)) && pack_aligned(static_cast<const grad_t*>(t.g)) &&
         pack_aligned(t.T) && pack_aligned(t.B) && pack_aligned(t.A) && pack_aligned(t.v);
}

// At most 64 registers (4 resident blocks of 256 threads per SM, as v1.2 had): ptxas takes 68-70 unbounded and
// fits in 56-62 without spilling (tests/test_cuda_sass.py).
template <typename param_t, typename grad_t>
__global__ void __launch_bounds__(kThreads, 4)
    rda_step_kernel(const RdaBatch b, int64_t chunk, RdaScalars host, DeviceScalars d, const float* inv_scale,
                    bool reweight, const float* max_A, unsigned long long* nnz) {
  const Chunk c = locate_chunk(b, chunk, rda_aligned<param_t, grad_t>);
  const RdaTensor& t = b.tensors[c.tensor];
  Resolved r = resolve(host, d);
  if (inv_scale != nullptr) r.s.grad_factor *= *inv_scale;  // host grad_factor is +-1 here
  const RdaFactors f{t.factor, reweight, max_A[c.tensor]};
  unsigned count;  // branches on the tensor and the skip flag are block-uniform
  if (r.skip) {  // GradScaler found infs: write nothing, count what is there
    count = nonzeros_chunk(static_cast<const param_t*>(t.w), c);
  } else if (!(t.factor > 0.0f)) {
    count = rda_chunk<Penalty::kNone, param_t, grad_t>(t, c, f, r.s);
  } else if (t.group_means != nullptr) {
    count = rda_chunk<Penalty::kGroup, param_t, grad_t>(t, c, f, r.s);
  } else {
    count = rda_chunk<Penalty::kElement, param_t, grad_t>(t, c, f, r.s);
  }
  count = block_all_reduce(count, AddOp{});  // <= the chunk: fits 32 bits
  if (threadIdx.x == 0) atomicAdd(nnz + c.tensor, static_cast<unsigned long long>(count));
}

// The gRDA step over N-element packs of [first, end); returns this thread's nonzero count.
template <int N, typename param_t, typename grad_t>
__device__ __forceinline__ unsigned grda_part(param_t* __restrict__ w, const grad_t* __restrict__ g,
                                              float* __restrict__ acc, int64_t first, int64_t end, int64_t stride,
                                              float lr, float l1, float scale) {
  unsigned count = 0;
  for_each_pack<Penalty::kNone, N>(first, end, stride, 1, [&](int64_t i, const RowWalk<int64_t>&) {
    const Pack<grad_t, N> gp = load_pack<grad_t, N>(g, i);
    Pack<float, N> accp = load_pack<float, N>(acc, i);
    Pack<param_t, N> wp;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      wp.x[k] = from_float<param_t>(grda_element(to_float(gp.x[k]), accp.x[k], lr, l1, scale));
    }
    store_pack<float, N>(acc, i, accp);
    store_pack<param_t, N>(w, i, wp);
    count += nonzeros(wp);
  });
  return count;
}

template <typename param_t, typename grad_t>
__device__ __forceinline__ bool grda_aligned(const GrdaTensor& t) {
  return pack_aligned(static_cast<const param_t*>(t.w)) && pack_aligned(static_cast<const grad_t*>(t.g)) &&
         pack_aligned(t.acc);
}

template <typename param_t, typename grad_t>
__global__ void grda_step_kernel(const GrdaBatch b, int64_t chunk, GrdaScalars gs, unsigned long long* nnz) {
  const Chunk c = locate_chunk(b, chunk, grda_aligned<param_t, grad_t>);
  const GrdaTensor& t = b.tensors[c.tensor];
  const float lr = gs.lr_device != nullptr ? *gs.lr_device : gs.lr;
  const bool skip = gs.skip || (gs.found_inf != nullptr && *gs.found_inf != 0.0f);
  const float scale = gs.inv_scale_device != nullptr ? *gs.inv_scale_device : gs.inv_scale;
  const float l1 = gs.l1_device != nullptr ? gs.l1_device[c.tensor] : t.l1;
  auto* w = static_cast<param_t*>(t.w);
  const auto* g = static_cast<const grad_t*>(t.g);
  unsigned count;
  if (skip) {  // GradScaler found infs: write nothing, count what is there
    count = nonzeros_chunk(static_cast<const param_t*>(w), c);
  } else {
    count = grda_part<kVec>(w, g, t.acc, c.start + threadIdx.x * kVec, c.vec_end, kPackStride, lr, l1, scale) +
            grda_part<1>(w, g, t.acc, c.vec_end + threadIdx.x, c.end, kThreads, lr, l1, scale);
  }
  count = block_all_reduce(count, AddOp{});
  if (threadIdx.x == 0) atomicAdd(nnz + c.tensor, static_cast<unsigned long long>(count));
}

}  // namespace

cudaError_t launch_rda_max_A(const RdaTensor* tensors, int64_t n, DType w_dtype, RdaScalars s, DeviceScalars d,
                             float* max_A, cudaStream_t stream) {
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return for_each_chunked_batch(tensors, n, [&](const RdaBatch& b, int64_t begin, unsigned grid, int64_t chunk) {
      rda_max_A_kernel<param_t><<<grid, kThreads, 0, stream>>>(b, chunk, s, d, max_A + begin);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_rda_step(const RdaTensor* tensors, int64_t n, DType w_dtype, bool grad_is_float32, RdaScalars s,
                            DeviceScalars d, const float* inv_scale, bool reweight, const float* max_A,
                            unsigned long long* nnz, cudaStream_t stream) {
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return for_each_chunked_batch(tensors, n, [&](const RdaBatch& b, int64_t begin, unsigned grid, int64_t chunk) {
      if (grad_is_float32) {
        rda_step_kernel<param_t, float><<<grid, kThreads, 0, stream>>>(b, chunk, s, d, inv_scale, reweight,
                                                                       max_A + begin, nnz + begin);
      } else {
        rda_step_kernel<param_t, param_t><<<grid, kThreads, 0, stream>>>(b, chunk, s, d, inv_scale, reweight,
                                                                         max_A + begin, nnz + begin);
      }
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_grda_step(const GrdaTensor* tensors, int64_t n, DType w_dtype, bool grad_is_float32,
                             GrdaScalars s, unsigned long long* nnz, cudaStream_t stream) {
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return for_each_chunked_batch(tensors, n, [&](const GrdaBatch& b, int64_t begin, unsigned grid, int64_t chunk) {
      GrdaScalars batch_scalars = s;  // the device thresholds of this batch's tensors
      if (s.l1_device != nullptr) batch_scalars.l1_device = s.l1_device + begin;
      if (grad_is_float32) {
        grda_step_kernel<param_t, float><<<grid, kThreads, 0, stream>>>(b, chunk, batch_scalars, nnz + begin);
      } else {
        grda_step_kernel<param_t, param_t><<<grid, kThreads, 0, stream>>>(b, chunk, batch_scalars, nnz + begin);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace sparse_rda
