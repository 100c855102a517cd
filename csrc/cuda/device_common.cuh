// Device helpers shared by the CUDA steps: dtype conversion, vector access to aligned arrays, block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits.h>
#include <stdint.h>

#include "step_kernels.h"

namespace sparse_rda {
namespace cuda {

constexpr int kVec = 4;  // elements per vector access: 16 bytes of fp32 state

// N consecutive elements, aligned to their size, so that one load / store instruction moves them.
template <typename T, int N = kVec>
struct alignas(N * sizeof(T)) Pack {
  T x[N];
};

template <typename T, int N = kVec>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p, int64_t i) {
  return *reinterpret_cast<const Pack<T, N>*>(p + i);
}

template <typename T, int N = kVec>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const Pack<T, N>& value) {
  *reinterpret_cast<Pack<T, N>*>(p + i) = value;
}

template <typename T>
__host__ __device__ __forceinline__ bool pack_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>) == 0;
}

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

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct AddOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// The block-wide reduction of value (blockDim.x a multiple of 32, at most 1024), returned to every thread.
// Ends with a barrier, so calls may follow each other.
template <typename T, typename Op>
__device__ __forceinline__ T block_all_reduce(T value, Op op) {
  __shared__ T partial[32];
  for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  value = partial[0];
  for (int k = 1; k < warps; ++k) value = op(value, partial[k]);
  __syncthreads();
  return value;
}

// A >= 0, so its float bits order like ints.
__device__ __forceinline__ void atomic_max_nonnegative(float* address, float value) {
  atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
}

// The step's scalars: the host's, or in the device form read from the device (DeviceScalars); skip when a
// GradScaler found infs. The same for every thread of a launch, so branches on skip are block-uniform.
struct Resolved {
  RdaScalars s;
  bool skip;
};

__device__ __forceinline__ Resolved resolve(RdaScalars s, const DeviceScalars& d) {
  if (d.hyper != nullptr) s = with_device_hyper(s, d.hyper);
  return {s, d.found_inf != nullptr && *d.found_inf != 0.0f};
}

// Up to kBatchTensors tensors passed by value in a launch's arguments, each with the index of its first thread
// block (as apex's multi-tensor apply passes its lists): nothing is copied to the device per step, so a CUDA graph
// can capture the launches. 36 descriptors of <= 80 bytes keep the arguments under the 4 KB limit.
constexpr int kBatchTensors = 36;

template <typename Tensor>
struct TensorBatch {
  Tensor tensors[kBatchTensors];
  int32_t first_block[kBatchTensors + 1];  // tensor k has thread blocks first_block[k] .. first_block[k + 1] - 1

  // This thread block's tensor, and its block index within that tensor.
  __device__ __forceinline__ int locate(int64_t& block) const {
    int k = 0;
    while (static_cast<int32_t>(blockIdx.x) >= first_block[k + 1]) ++k;
    block = blockIdx.x - first_block[k];
    return k;
  }
};

// Calls launch(batch, begin, grid) for tensors[begin, begin + kBatchTensors) (a host array), batch by batch,
// with blocks_of(tensor) thread blocks per tensor; stops at the first error.
template <typename Tensor, typename BlocksOf, typename Launch>
cudaError_t for_each_batch(const Tensor* tensors, int64_t n, BlocksOf&& blocks_of, Launch&& launch) {
  for (int64_t begin = 0; begin < n; begin += kBatchTensors) {
    TensorBatch<Tensor> batch{};
    const int count = static_cast<int>(n - begin < kBatchTensors ? n - begin : kBatchTensors);
    int64_t blocks = 0;
    for (int k = 0; k < count; ++k) {
      batch.tensors[k] = tensors[begin + k];
      batch.first_block[k] = static_cast<int32_t>(blocks);
      blocks += blocks_of(tensors[begin + k]);
      if (blocks > INT_MAX) return cudaErrorInvalidValue;
    }
    for (int k = count; k <= kBatchTensors; ++k) batch.first_block[k] = static_cast<int32_t>(blocks);
    if (blocks == 0) continue;
    const cudaError_t status = launch(batch, begin, static_cast<unsigned>(blocks));
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
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

}  // namespace cuda
}  // namespace sparse_rda
