// Launcher API of the CUDA multi-tensor RDA / gRDA steps. Torch-free: raw device pointers and a stream, so the
// .cu file compiles with nvcc alone (CMake builds it as a library; setup.py links it into the extension).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../rda_math.h"

namespace sparse_rda {
namespace cuda {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// One tensor of a param group, as the kernels see it (all contiguous, state float32).
struct RdaTensor {
  void* w;                    // parameter, in the param dtype
  const void* g;              // gradient, in the grad dtype
  float* T;
  float* B;
  float* A;
  float* v;
  const float* group_means;   // structured modes: mean |w| per contiguous group; null in element mode or unpenalized
  int64_t numel;
  int64_t group_size;
  float factor;               // sqrt(group size) when penalized, 0 when not
};

struct GrdaTensor {
  void* w;
  const void* g;
  float* acc;
  int64_t numel;
  float l1;  // the threshold, from the host (by value in the launch arguments); see GrdaScalars::l1_device
};

// The device form (capturable mode, traced steps): lr, averaging, the decays and lam come from device memory; a
// nonzero *found_inf makes the kernels write nothing (nonzeros are still counted). Both null when unused.
struct DeviceScalars {
  const float* hyper;  // kDeviceHyperSize values: [lr, averaging, beta, beta_b, lam, 1 - x of the first three] (rda_math.h)
  const float* found_inf;
};

// The launchers take the n tensors as a host array and pass them to the kernels by value (no device table), so
// a CUDA graph can capture them. Per-tensor outputs (max_A, nnz) are device arrays of n, zeroed by the caller.

// The per-tensor max of this step's A, into max_A, for penalized tensors (nothing with a set found_inf).
cudaError_t launch_rda_max_A(const RdaTensor* tensors, int64_t n, DType w_dtype, RdaScalars s, DeviceScalars d,
                             float* max_A, cudaStream_t stream);

// The RDA step; counts each tensor's nonzeros into nnz. max_A from launch_rda_max_A or given (n values, read
// with reweighting only); inv_scale: the caller's 1 / GradScaler scale on the device (s.grad_factor then +-1), or null.
cudaError_t launch_rda_step(const RdaTensor* tensors, int64_t n, DType w_dtype, bool grad_is_float32, RdaScalars s,
                            DeviceScalars d, const float* inv_scale, bool reweight, const float* max_A,
                            unsigned long long* nnz, cudaStream_t stream);

// gRDA's step-wide values: each one by value from the host, or read by the kernels through its pointer when
// that is not null (device memory: capturable mode, where a CUDA graph replays with new values).
struct GrdaScalars {
  float lr;
  const float* lr_device;
  float inv_scale;  // 1 / GradScaler scale, 1 without one
  const float* inv_scale_device;
  bool skip;  // a GradScaler found infs: write nothing, count the nonzeros
  const float* found_inf;  // nonzero: skip
  const float* l1_device;  // the n tensors' thresholds; null: each GrdaTensor's l1
};

// The gRDA step; counts each tensor's nonzeros into nnz.
cudaError_t launch_grda_step(const GrdaTensor* tensors, int64_t n, DType w_dtype, bool grad_is_float32,
                             GrdaScalars s, unsigned long long* nnz, cudaStream_t stream);

// Block granularity (block_step_kernels.cu): one contiguous rows x cols weight, tiled in block_rows x block_cols
// tiles (the last row / column of tiles ragged), its occupancy map [tile rows, tile cols] written by the step.
struct BlockTensor {
  void* w;
  const void* g;
  float* T;
  float* B;
  float* A;
  float* v;
  bool* occupancy;
  int64_t rows;
  int64_t cols;
};

// The per-tensor max of this step's tile A, into max_A (nothing with a set found_inf). The same tensors and
// flags as the step's launch: the tile RMS is summed in the order the step's alignment picks.
cudaError_t launch_rda_block_max_A(const BlockTensor* tensors, int64_t n, int block_rows, int block_cols,
                                   DType w_dtype, bool grad_is_float32, RdaScalars s, DeviceScalars d, float* max_A,
                                   cudaStream_t stream);

// The block-mode RDA step; max_A from launch_rda_block_max_A or given (n values, read with reweighting only); d
// and inv_scale as in launch_rda_step (a skipped step writes neither the tensors nor the occupancy maps).
cudaError_t launch_rda_block_step(const BlockTensor* tensors, int64_t n, int block_rows, int block_cols,
                                  DType w_dtype, bool grad_is_float32, RdaScalars s, DeviceScalars d,
                                  const float* inv_scale, bool reweight, const float* max_A, unsigned long long* nnz,
                                  cudaStream_t stream);

// N:M granularity (nm_step_kernels.cu): one contiguous weight viewed as [rows, cols], each row split into groups of
// M consecutive elements (the last one shorter when M does not divide cols), of which the step keeps the N largest.
struct NmTensor {
  void* w;
  const void* g;
  float* T;
  float* B;
  float* A;
  float* v;
  int64_t rows;
  int64_t cols;
};

// The N:M RDA step, 1 <= keep (N) < group (M) <= kMaxNmGroup (else cudaErrorInvalidValue): the element step's
// update with factor 1, then each group's top N. max_A from launch_rda_max_A over the same tensors as RdaTensors
// (factor 1, no group means) or given (n values, read with reweighting only); d and inv_scale as in
// launch_rda_step.
cudaError_t launch_rda_nm_step(const NmTensor* tensors, int64_t n, int keep, int group, DType w_dtype,
                               bool grad_is_float32, RdaScalars s, DeviceScalars d, const float* inv_scale,
                               bool reweight, const float* max_A, unsigned long long* nnz, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparse_rda
