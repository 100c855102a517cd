// CPU implementations of the sparse_rda::rda_step_, rda_block_step_ and grda_step_ ops (schemas in bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

// The element loops are compiled for AVX-512, AVX2 and baseline x86-64, picked when the library loads: a
// portable build still gets the wide vectors (and FMA) of the machine it runs on.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SPARSE_RDA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPARSE_RDA_CPU_CLONES
#endif

namespace sparse_rda {

at::Tensor rda_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                        at::TensorList A, at::TensorList v, at::ArrayRef<double> factors,
                        at::IntArrayRef group_sizes, double lr, double lam, double beta, double beta_b,
                        double alpha, double weight_decay, double max_factor, bool reweight, bool maximize,
                        const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& lr_alpha,
                        const std::optional<at::Tensor>& found_inf, double inv_tau, double inv_tau_b);

at::Tensor rda_block_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                              at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                              double lr, double lam, double beta, double beta_b, double alpha, double weight_decay,
                              double max_factor, bool reweight, bool maximize,
                              const std::optional<at::Tensor>& grad_scale);

at::Tensor grda_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList acc,
                         at::ArrayRef<double> thresholds, double lr, const std::optional<at::Tensor>& grad_scale,
                         const std::optional<at::Tensor>& thresholds_device, const std::optional<at::Tensor>& lr_device,
                         const std::optional<at::Tensor>& found_inf);

// Shared by the steps: the grad as read (its own dtype if the param's, else float32), GradScaler's 1 / scale.
at::Tensor grad_for(const at::Tensor& param, const at::Tensor& grad);
float inverse_scale(const std::optional<at::Tensor>& grad_scale);
// Capturable mode: whether a GradScaler's found_inf says to skip the step (then nothing is written).
bool found_inf_set(const std::optional<at::Tensor>& found_inf);
// Each param's nonzero count, for a skipped step.
at::Tensor count_nonzeros(at::TensorList params);

}  // namespace sparse_rda
