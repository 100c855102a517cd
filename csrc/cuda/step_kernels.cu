// CUDA multi-tensor RDA / gRDA steps: one block per chunk of one tensor (the tensors by value in the kernel
// arguments, TensorBatch), fp32 math on
// fp32/bf16/fp16 parameters, fp32 state, per-element math from rda_math.h. Block reductions then one atomic
// per block for the per-tensor max of A and the nonzero counts. Each thread handles 4 consecutive elements
// with 16-byte loads and stores of the fp32 state (8-byte ones of bf16/fp16 params) when the tensor's arrays
// are aligned for it (torch's allocations are), element by element otherwise and for a chunk's tail.
#include "device_common.cuh"

namespace sparse_rda {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 16;  // elements per thread block

using RdaBatch = TensorBatch<RdaTensor>;
using GrdaBatch = TensorBatch<GrdaTensor>;

int64_t chunks_of(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// This thread block's tensor and its chunk [start, end) of the tensor's elements.
template <typename Tensor>
__device__ __forceinline__ int locate_chunk(const TensorBatch<Tensor>& b, int64_t& start, int64_t& end) {
  int64_t chunk;
  const int k = b.locate(chunk);
  start = chunk * kChunk;
  end = min(start + kChunk, b.tensors[k].numel);
  return k;
}

// Where this chunk's vectorized part ends: its start when the arrays are misaligned, else the last multiple of
// kVec elements (chunk starts are multiples of the chunk size, itself a multiple of kVec).
__device__ __forceinline__ int64_t vector_end(bool aligned, int64_t start, int64_t end) {
  return aligned && start % kVec == 0 ? start + (end - start) / kVec * kVec : start;
}

template <typename param_t>
__device__ __forceinline__ float magnitude(const RdaTensor& t, const param_t* w, int64_t i, float wi) {
  return t.group_means ? t.group_means[i / t.group_size] : fabsf(wi);
}

template <typename param_t>
__global__ void rda_max_A_kernel(const RdaBatch b, RdaScalars host, DeviceScalars d, float* max_A) {
  int64_t start, end;
  const int ti = locate_chunk(b, start, end);
  const RdaTensor& t = b.tensors[ti];
  const Resolved r = resolve(host, d);
  if (t.factor == 0.0f || r.skip) return;  // block-uniform
  const auto* w = static_cast<const param_t*>(t.w);
  float running = 0.0f;
  const int64_t vec_end = vector_end(pack_aligned(w) && pack_aligned(t.A), start, end);
  for (int64_t i = start + threadIdx.x * kVec; i < vec_end; i += kThreads * kVec) {
    const Pack<param_t> wp = load_pack(w, i);
    const Pack<float> Ap = load_pack<float>(t.A, i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float wi = to_float(wp.x[k]);
      running = fmaxf(running, finite_or_zero(new_A(Ap.x[k], magnitude(t, w, i + k, wi), r.s)));
    }
  }
  for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads) {
    const float wi = to_float(w[i]);
    running = fmaxf(running, finite_or_zero(new_A(t.A[i], magnitude(t, w, i, wi), r.s)));
  }
  running = block_all_reduce(running, MaxOp{});
  if (threadIdx.x == 0) atomic_max_nonnegative(max_A + ti, running);
}

// One element of the RDA step on registers: A and B (penalized tensors only), T and v updated in place; returns
// the weight to store. An unpenalized tensor's A and B are neither used nor stored back.
template <typename param_t>
__device__ __forceinline__ param_t rda_values(const RdaTensor& t, int64_t i, float wi, float gi, float& A, float& B,
                                              float& T, float& v, bool reweight, float max_A, const RdaScalars& s) {
  if (t.factor == 0.0f) return from_float<param_t>(rda_unpenalized_element(wi, gi, T, v, s));
  A = new_A(A, magnitude(t, static_cast<const param_t*>(t.w), i, wi), s);
  const float om_factor = (reweight ? reweight_factor(A, max_A, s.max_factor) : 1.0f) * t.factor;
  return from_float<param_t>(rda_element(wi, gi, om_factor, B, T, v, s));
}

template <typename param_t, typename grad_t>
__global__ void rda_step_kernel(const RdaBatch b, RdaScalars host, DeviceScalars d, const float* inv_scale,
                                bool reweight, const float* max_A, unsigned long long* nnz) {
  int64_t start, end;
  const int ti = locate_chunk(b, start, end);
  const RdaTensor& t = b.tensors[ti];
  Resolved r = resolve(host, d);
  if (inv_scale != nullptr) r.s.grad_factor *= *inv_scale;  // host grad_factor is +-1 here
  const float m = max_A[ti];
  auto* w = static_cast<param_t*>(t.w);
  const auto* g = static_cast<const grad_t*>(t.g);
  const bool penalized = t.factor > 0.0f;  // block-uniform
  unsigned long long count = 0;
  if (r.skip) {  // GradScaler found infs: write nothing, count what is there
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) count += to_float(w[i]) != 0.0f;
  } else {
    const bool aligned = pack_aligned(w) && pack_aligned(g) && pack_aligned(t.T) && pack_aligned(t.B) &&
                         pack_aligned(t.A) && pack_aligned(t.v);
    const int64_t vec_end = vector_end(aligned, start, end);
    for (int64_t i = start + threadIdx.x * kVec; i < vec_end; i += kThreads * kVec) {
      Pack<param_t> wp = load_pack(w, i);
      const Pack<grad_t> gp = load_pack(g, i);
      Pack<float> Tp = load_pack<float>(t.T, i), vp = load_pack<float>(t.v, i);
      Pack<float> Ap = penalized ? load_pack<float>(t.A, i) : Pack<float>{};
      Pack<float> Bp = penalized ? load_pack<float>(t.B, i) : Pack<float>{};
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        wp.x[k] = rda_values<param_t>(t, i + k, to_float(wp.x[k]), to_float(gp.x[k]), Ap.x[k], Bp.x[k], Tp.x[k],
                                      vp.x[k], reweight, m, r.s);
        count += to_float(wp.x[k]) != 0.0f;
      }
      if (penalized) {
        store_pack(t.A, i, Ap);
        store_pack(t.B, i, Bp);
      }
      store_pack(t.T, i, Tp);
      store_pack(t.v, i, vp);
      store_pack(w, i, wp);
    }
    for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads) {
      float A = penalized ? t.A[i] : 0.0f, B = penalized ? t.B[i] : 0.0f, T = t.T[i], v = t.v[i];
      const param_t stored = rda_values<param_t>(t, i, to_float(w[i]), to_float(g[i]), A, B, T, v, reweight, m, r.s);
      if (penalized) {
        t.A[i] = A;
        t.B[i] = B;
      }
      t.T[i] = T;
      t.v[i] = v;
      w[i] = stored;
      count += to_float(stored) != 0.0f;
    }
  }
  count = block_all_reduce(count, AddOp{});
  if (threadIdx.x == 0) atomicAdd(nnz + ti, count);
}

template <typename param_t, typename grad_t>
__global__ void grda_step_kernel(const GrdaBatch b, float lr, const float* lr_device, const float* found_inf,
                                 const float* l1, const float* inv_scale, unsigned long long* nnz) {
  int64_t start, end;
  const int ti = locate_chunk(b, start, end);
  const GrdaTensor& t = b.tensors[ti];
  if (lr_device != nullptr) lr = *lr_device;
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  const float scale = inv_scale != nullptr ? *inv_scale : 1.0f;
  const float threshold = l1[ti];
  auto* w = static_cast<param_t*>(t.w);
  const auto* g = static_cast<const grad_t*>(t.g);
  unsigned long long count = 0;
  if (skip) {  // GradScaler found infs: write nothing, count what is there
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) count += to_float(w[i]) != 0.0f;
  } else {
    const int64_t vec_end = vector_end(pack_aligned(w) && pack_aligned(g) && pack_aligned(t.acc), start, end);
    for (int64_t i = start + threadIdx.x * kVec; i < vec_end; i += kThreads * kVec) {
      Pack<param_t> wp;
      const Pack<grad_t> gp = load_pack(g, i);
      Pack<float> accp = load_pack<float>(t.acc, i);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        wp.x[k] = from_float<param_t>(grda_element(to_float(gp.x[k]), accp.x[k], lr, threshold, scale));
        count += to_float(wp.x[k]) != 0.0f;
      }
      store_pack(t.acc, i, accp);
      store_pack(w, i, wp);
    }
    for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads) {
      float acc = t.acc[i];
      const param_t stored = from_float<param_t>(grda_element(to_float(g[i]), acc, lr, threshold, scale));
      t.acc[i] = acc;
      w[i] = stored;
      count += to_float(stored) != 0.0f;
    }
  }
  count = block_all_reduce(count, AddOp{});
  if (threadIdx.x == 0) atomicAdd(nnz + ti, count);
}

}  // namespace

cudaError_t launch_rda_max_A(const RdaTensor* tensors, int64_t n, DType w_dtype, RdaScalars s, DeviceScalars d,
                             float* max_A, cudaStream_t stream) {
  const auto blocks = [](const RdaTensor& t) { return chunks_of(t.numel); };
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return for_each_batch(tensors, n, blocks, [&](const RdaBatch& b, int64_t begin, unsigned grid) {
      rda_max_A_kernel<param_t><<<grid, kThreads, 0, stream>>>(b, s, d, max_A + begin);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_rda_step(const RdaTensor* tensors, int64_t n, DType w_dtype, bool grad_is_float32, RdaScalars s,
                            DeviceScalars d, const float* inv_scale, bool reweight, const float* max_A,
                            unsigned long long* nnz, cudaStream_t stream) {
  const auto blocks = [](const RdaTensor& t) { return chunks_of(t.numel); };
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return for_each_batch(tensors, n, blocks, [&](const RdaBatch& b, int64_t begin, unsigned grid) {
      if (grad_is_float32) {
        rda_step_kernel<param_t, float><<<grid, kThreads, 0, stream>>>(b, s, d, inv_scale, reweight, max_A + begin,
                                                                       nnz + begin);
      } else {
        rda_step_kernel<param_t, param_t><<<grid, kThreads, 0, stream>>>(b, s, d, inv_scale, reweight,
                                                                         max_A + begin, nnz + begin);
      }
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_grda_step(const GrdaTensor* tensors, int64_t n, DType w_dtype, bool grad_is_float32, float lr,
                             const float* lr_device, const float* found_inf, const float* l1, const float* inv_scale,
                             unsigned long long* nnz, cudaStream_t stream) {
  const auto blocks = [](const GrdaTensor& t) { return chunks_of(t.numel); };
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return for_each_batch(tensors, n, blocks, [&](const GrdaBatch& b, int64_t begin, unsigned grid) {
      if (grad_is_float32) {
        grda_step_kernel<param_t, float><<<grid, kThreads, 0, stream>>>(b, lr, lr_device, found_inf, l1 + begin,
                                                                        inv_scale, nnz + begin);
      } else {
        grda_step_kernel<param_t, param_t><<<grid, kThreads, 0, stream>>>(b, lr, lr_device, found_inf, l1 + begin,
                                                                          inv_scale, nnz + begin);
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace sparse_rda
