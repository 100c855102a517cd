// CPU implementations of the sparse_rda::* ops (schemas in bindings.cpp).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>

#include "../rda_math.h"

// The element loops are compiled for AVX-512, AVX2 and baseline x86-64, picked when the library loads: a
// portable build still gets the wide vectors (and FMA) of the machine it runs on.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SPARSE_RDA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPARSE_RDA_CPU_CLONES
#endif

namespace sparse_rda {

at::Tensor rda_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                        at::TensorList A, at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means,
                        at::ArrayRef<double> factors, at::ArrayRef<double> hyper, bool reweight, bool maximize,
                        const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& device_hyper,
                        const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& max_A);

at::Tensor rda_max_A_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                         at::TensorList A, at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means,
                         at::ArrayRef<double> factors, at::ArrayRef<double> hyper, bool reweight, bool maximize,
                         const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& device_hyper,
                         const std::optional<at::Tensor>& found_inf);

at::Tensor rda_block_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                              at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                              at::ArrayRef<double> hyper, bool reweight, bool maximize,
                              const std::optional<at::Tensor>& inv_scale,
                              const std::optional<at::Tensor>& device_hyper,
                              const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& max_A);

at::Tensor rda_block_max_A_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                               at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                               at::ArrayRef<double> hyper, bool reweight, bool maximize,
                               const std::optional<at::Tensor>& inv_scale,
                               const std::optional<at::Tensor>& device_hyper,
                               const std::optional<at::Tensor>& found_inf);

// y = x W^T + b from W's nonzeros by output row (CSR), for inference (csr_linear_cpu.cpp).
at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                          const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t in_features);

at::Tensor rda_nm_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                           at::TensorList A, at::TensorList v, at::IntArrayRef nm, at::ArrayRef<double> hyper,
                           bool reweight, bool maximize, const std::optional<at::Tensor>& inv_scale,
                           const std::optional<at::Tensor>& device_hyper, const std::optional<at::Tensor>& found_inf,
                           const std::optional<at::Tensor>& max_A);

at::Tensor grda_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList acc, const at::Tensor& thresholds,
                         double lr, const std::optional<at::Tensor>& lr_device,
                         const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& found_inf);

// Shared by the steps: the grad as read (its own dtype if the param's, else float32); the value of the caller's
// 1 / GradScaler scale (1 without one), read on the host.
at::Tensor grad_for(const at::Tensor& param, const at::Tensor& grad);
float host_inv_scale(const std::optional<at::Tensor>& inv_scale);
// The device form (capturable mode, or a traced step): s with the values of device_hyper (rda_math.h's
// DeviceHyperIndex order) read on the host; s itself without it.
RdaScalars with_device_form(const RdaScalars& s, const std::optional<at::Tensor>& device_hyper);
// Capturable mode: whether a GradScaler's found_inf says to skip the step (then nothing is written).
bool found_inf_set(const std::optional<at::Tensor>& found_inf);
// Each param's nonzero count, for a skipped step.
at::Tensor count_nonzeros(at::TensorList params);
// The element step's max pass over one contiguous tensor (w and its A): the max of this step's finite A, |w| the
// magnitude (N:M tensors' A is element-wise too).
float element_max_A(const at::Tensor& w, const at::Tensor& A, const RdaScalars& s);
// A given max_A (checked) as float32 values on the host; undefined when not given.
at::Tensor given_max_A(const std::optional<at::Tensor>& max_A);

}  // namespace sparse_rda
