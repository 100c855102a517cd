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

// The nonzeros of a pack as stored (a weight that rounds to 0 in a 16-bit dtype counts as 0).
template <int N, typename T>
__device__ __forceinline__ unsigned nonzeros(const Pack<T, N>& p) {
  unsigned count = 0;
#pragma unroll
  for (int k = 0; k < N; ++k) count += to_float(p.x[k]) != 0.0f;
  return count;
}

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
constexpr size_t kMaxDescriptorBytes = 80;

template <typename Tensor>
struct TensorBatch {
  static_assert(sizeof(Tensor) <= kMaxDescriptorBytes, "36 descriptors must fit the 4 KB of kernel arguments");
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

// Fills batch with tensors[0, count) (count <= kBatchTensors), blocks_of(tensor) thread blocks each; returns the
// grid size, or -1 when it would pass INT_MAX (first_block is int32).
template <typename Tensor, typename BlocksOf>
int64_t fill_batch(TensorBatch<Tensor>& batch, const Tensor* tensors, int count, BlocksOf&& blocks_of) {
  int64_t blocks = 0;
  for (int k = 0; k < count; ++k) {
    batch.tensors[k] = tensors[k];
    batch.first_block[k] = static_cast<int32_t>(blocks);
    blocks += blocks_of(tensors[k]);
    if (blocks > INT_MAX) return -1;
  }
  for (int k = count; k <= kBatchTensors; ++k) batch.first_block[k] = static_cast<int32_t>(blocks);
  return blocks;
}

// The number of tensors in the batch that starts at tensors[begin] of n.
inline int batch_count(int64_t begin, int64_t n) {
  return static_cast<int>(n - begin < kBatchTensors ? n - begin : kBatchTensors);
}

// Calls launch(batch, begin, grid) for tensors[begin, begin + kBatchTensors) (a host array), batch by batch,
// with blocks_of(tensor) thread blocks per tensor; stops at the first error.
template <typename Tensor, typename BlocksOf, typename Launch>
cudaError_t for_each_batch(const Tensor* tensors, int64_t n, BlocksOf&& blocks_of, Launch&& launch) {
  for (int64_t begin = 0; begin < n; begin += kBatchTensors) {
    TensorBatch<Tensor> batch{};
    const int64_t blocks = fill_batch(batch, tensors + begin, batch_count(begin, n), blocks_of);
    if (blocks < 0) return cudaErrorInvalidValue;
    if (blocks == 0) continue;
    const cudaError_t status = launch(batch, begin, static_cast<unsigned>(blocks));
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

// Row and column of a linear index in rows of `width` (row = i / width, col = i % width), kept along a walk i,
// i + stride, i + 2 stride, ... with the divisions done once, at its start: per step two adds and a compare.
// Exact for every width >= 1. It finds an element's group (contiguous groups of group_size) and a pack's row
// in a tile without an integer division per element.
template <typename Int>
struct RowWalk {
  Int row = 0, col = 0;
  Int width = 1, stride_rows = 0, stride_cols = 0;  // stride = stride_rows * width + stride_cols

  RowWalk() = default;
  __device__ __forceinline__ RowWalk(Int i, Int width, Int stride)
      : row(i / width), col(i % width), width(width), stride_rows(stride / width), stride_cols(stride % width) {}

  __device__ __forceinline__ void advance() {
    row += stride_rows;
    col += stride_cols;
    if (col >= width) {  // col < 2 width here: one wrap at most
      col -= width;
      ++row;
    }
  }

  // The rows of the N consecutive indices from the current one (a pack may straddle rows, several when width < N).
  template <int N>
  __device__ __forceinline__ void rows_ahead(Int (&rows)[N]) const {
    Int r = row, c = col;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      rows[k] = r;
      const bool wrap = ++c == width;
      r += wrap;
      c = wrap ? 0 : c;
    }
  }
};

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
