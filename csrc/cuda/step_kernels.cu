// CUDA multi-tensor RDA / gRDA steps: one block per chunk of one tensor (the chunk table), fp32 math on
// fp32/bf16/fp16 parameters, fp32 state, per-element math from rda_math.h. Block reductions then one atomic
// per block for the per-tensor max of A and the nonzero counts.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "step_kernels.h"

namespace sparse_rda {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

template <typename T>
__device__ __forceinline__ T block_reduce(T value, T (*op)(T, T)) {
  __shared__ T partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? partial[lane] : partial[0];
    for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  }
  return value;  // valid in thread 0
}

__device__ float max_op(float a, float b) { return fmaxf(a, b); }
__device__ unsigned long long add_op(unsigned long long a, unsigned long long b) { return a + b; }

// A >= 0, so its float bits order like ints.
__device__ __forceinline__ void atomic_max_nonnegative(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
}

// The step's scalars: the host's, or read from the device in capturable mode.
struct Resolved {
  RdaScalars s;
  bool skip;
};

__device__ __forceinline__ Resolved resolve(RdaScalars s, const DeviceScalars& d) {
  bool skip = false;
  if (d.lr_alpha != nullptr) {
    s.lr = d.lr_alpha[0];
    s.alpha = d.lr_alpha[1];
    s.beta = d.inv_tau > 0.0f ? expf(-s.lr * d.inv_tau) : 0.0f;
    s.beta_b = d.inv_tau_b > 0.0f ? expf(-s.lr * d.inv_tau_b) : 0.0f;
    s.one_minus_beta = 1.0f - s.beta;
    s.one_minus_beta_b = 1.0f - s.beta_b;
    s.one_minus_alpha = 1.0f - s.alpha;
    skip = *d.found_inf != 0.0f;
  }
  return {s, skip};
}

template <typename param_t>
__device__ __forceinline__ float magnitude(const RdaTensor& t, const param_t* w, int64_t i, float wi) {
  return t.group_means ? t.group_means[i / t.group_size] : fabsf(wi);
}

template <typename param_t>
__global__ void rda_max_A_kernel(const RdaTensor* tensors, ChunkTable chunks, RdaScalars host, DeviceScalars d,
                                 float* max_A) {
  const int32_t ti = chunks.chunk_tensor[blockIdx.x];
  const RdaTensor t = tensors[ti];
  const Resolved r = resolve(host, d);
  if (t.factor == 0.0f || r.skip) return;  // block-uniform
  const int64_t start = chunks.chunk_start[blockIdx.x];
  const int64_t end = min(start + chunks.chunk, t.numel);
  const auto* w = static_cast<const param_t*>(t.w);
  float running = 0.0f;
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const float wi = to_float(w[i]);
    running = fmaxf(running, new_A(t.A[i], magnitude(t, w, i, wi), r.s));
  }
  running = block_reduce(running, max_op);
  if (threadIdx.x == 0) atomic_max_nonnegative(max_A + ti, running);
}

template <typename param_t, typename grad_t>
__global__ void rda_step_kernel(const RdaTensor* tensors, ChunkTable chunks, RdaScalars host, DeviceScalars d,
                                const float* inv_scale, bool reweight, const float* max_A, unsigned long long* nnz) {
  const int32_t ti = chunks.chunk_tensor[blockIdx.x];
  const RdaTensor t = tensors[ti];
  Resolved r = resolve(host, d);
  if (inv_scale != nullptr) r.s.grad_factor *= *inv_scale;  // host grad_factor is +-1 here
  const float m = max_A[ti];
  const int64_t start = chunks.chunk_start[blockIdx.x];
  const int64_t end = min(start + chunks.chunk, t.numel);
  auto* w = static_cast<param_t*>(t.w);
  const auto* g = static_cast<const grad_t*>(t.g);
  unsigned long long count = 0;
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const float wi = to_float(w[i]);
    if (r.skip) {
      count += wi != 0.0f;
      continue;
    }
    float om_factor = 0.0f;
    if (t.factor > 0.0f) {
      const float A_next = new_A(t.A[i], magnitude(t, w, i, wi), r.s);
      t.A[i] = A_next;
      om_factor = (reweight ? reweight_factor(A_next, m, r.s.max_factor) : 1.0f) * t.factor;
    }
    float B = t.B[i], T = t.T[i], v = t.v[i];
    const param_t stored = from_float<param_t>(rda_element(wi, to_float(g[i]), om_factor, B, T, v, r.s));
    if (t.factor > 0.0f) t.B[i] = B;
    t.T[i] = T;
    t.v[i] = v;
    w[i] = stored;
    count += to_float(stored) != 0.0f;
  }
  count = block_reduce(count, add_op);
  if (threadIdx.x == 0) atomicAdd(nnz + ti, count);
}

template <typename param_t, typename grad_t>
__global__ void grda_step_kernel(const GrdaTensor* tensors, ChunkTable chunks, float lr, const float* lr_device,
                                 const float* found_inf, const float* l1, const float* inv_scale,
                                 unsigned long long* nnz) {
  const int32_t ti = chunks.chunk_tensor[blockIdx.x];
  const GrdaTensor t = tensors[ti];
  if (lr_device != nullptr) lr = *lr_device;
  const bool skip = found_inf != nullptr && *found_inf != 0.0f;
  const float scale = inv_scale != nullptr ? *inv_scale : 1.0f;
  const float threshold = l1[ti];
  const int64_t start = chunks.chunk_start[blockIdx.x];
  const int64_t end = min(start + chunks.chunk, t.numel);
  auto* w = static_cast<param_t*>(t.w);
  const auto* g = static_cast<const grad_t*>(t.g);
  unsigned long long count = 0;
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    if (skip) {
      count += to_float(w[i]) != 0.0f;
      continue;
    }
    float acc = t.acc[i];
    const param_t stored = from_float<param_t>(grda_element(to_float(g[i]), acc, lr, threshold, scale));
    t.acc[i] = acc;
    w[i] = stored;
    count += to_float(stored) != 0.0f;
  }
  count = block_reduce(count, add_op);
  if (threadIdx.x == 0) atomicAdd(nnz + ti, count);
}

// Calls f with a value of the C++ type of the parameter dtype.
template <typename F>
cudaError_t with_param_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat16: return f(__half{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_rda_max_A(const RdaTensor* tensors, ChunkTable chunks, DType w_dtype, RdaScalars s,
                             DeviceScalars d, float* max_A, cudaStream_t stream) {
  if (chunks.n_chunks == 0) return cudaSuccess;
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    rda_max_A_kernel<param_t><<<chunks.n_chunks, kThreads, 0, stream>>>(tensors, chunks, s, d, max_A);
    return cudaGetLastError();
  });
}

cudaError_t launch_rda_step(const RdaTensor* tensors, ChunkTable chunks, DType w_dtype, bool grad_is_float32,
                            RdaScalars s, DeviceScalars d, const float* inv_scale, bool reweight, const float* max_A,
                            unsigned long long* nnz, cudaStream_t stream) {
  if (chunks.n_chunks == 0) return cudaSuccess;
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    if (grad_is_float32) {
      rda_step_kernel<param_t, float><<<chunks.n_chunks, kThreads, 0, stream>>>(tensors, chunks, s, d, inv_scale,
                                                                              reweight, max_A, nnz);
    } else {
      rda_step_kernel<param_t, param_t><<<chunks.n_chunks, kThreads, 0, stream>>>(tensors, chunks, s, d, inv_scale,
                                                                                reweight, max_A, nnz);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_grda_step(const GrdaTensor* tensors, ChunkTable chunks, DType w_dtype, bool grad_is_float32,
                             float lr, const float* lr_device, const float* found_inf, const float* l1,
                             const float* inv_scale, unsigned long long* nnz, cudaStream_t stream) {
  if (chunks.n_chunks == 0) return cudaSuccess;
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    if (grad_is_float32) {
      grda_step_kernel<param_t, float><<<chunks.n_chunks, kThreads, 0, stream>>>(tensors, chunks, lr, lr_device,
                                                                               found_inf, l1, inv_scale, nnz);
    } else {
      grda_step_kernel<param_t, param_t><<<chunks.n_chunks, kThreads, 0, stream>>>(tensors, chunks, lr, lr_device,
                                                                                 found_inf, l1, inv_scale, nnz);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparse_rda
