// The step ops check their own arguments, CPU and CUDA alike: whatever a Python caller passes, a kernel never
// reads or writes outside its tensors. Every check runs before the first tensor is touched, so a refused call
// changes nothing; each error names the argument and the index (torch raises it as a RuntimeError).
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>

#include "rda_math.h"

namespace sparse_rda {

struct NamedTensors {
  const char* name;
  at::TensorList tensors;
};

inline bool is_param_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// A tensor the step writes: no element may alias another (an expanded view would be written twice).
inline void check_writable(const char* op, const char* name, size_t i, const at::Tensor& t) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name, "[", i,
              "] has elements that share memory (an expanded or stride-0 view); the step writes every element");
}

// t sits beside params[i]: as many elements, on its device; float32 (state) or any floating dtype (a grad).
inline void check_beside(const char* op, const char* name, size_t i, const at::Tensor& t, const at::Tensor& param,
                         bool float32) {
  TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
  TORCH_CHECK(t.device() == param.device(), op, ": ", name, "[", i, "] is on ", t.device(), ", params[", i,
              "] on ", param.device());
  TORCH_CHECK(t.numel() == param.numel(), op, ": ", name, "[", i, "] has ", t.numel(), " elements (shape ",
              t.sizes(), "), params[", i, "] has ", param.numel(), " (shape ", param.sizes(), ")");
  if (float32) {
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, "[", i, "] must be float32, got ", t.scalar_type());
  } else {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, "[", i, "] must be floating, got ",
                t.scalar_type());
  }
}

// params on one device in a kernel dtype; grads and every state list as long as params, each tensor beside
// its param (state in float32).
inline void check_tensor_lists(const char* op, at::TensorList params, at::TensorList grads,
                               std::initializer_list<NamedTensors> state) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, op, ": grads has ", grads.size(), " tensors for ", n, " params");
  for (const NamedTensors& list : state) {
    TORCH_CHECK(list.tensors.size() == n, op, ": ", list.name, " has ", list.tensors.size(), " tensors for ", n,
                " params");
  }
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
    TORCH_CHECK(p.device() == params[0].device(), op, ": params[", i, "] is on ", p.device(), ", params[0] on ",
                params[0].device());
    TORCH_CHECK(is_param_dtype(p.scalar_type()), op, ": params[", i, "] has dtype ", p.scalar_type(),
                " (float32, bfloat16 or float16)");
    check_writable(op, "params", i, p);
    check_beside(op, "grads", i, grads[i], p, false);
    for (const NamedTensors& list : state) {
      check_beside(op, list.name, i, list.tensors[i], p, true);
      check_writable(op, list.name, i, list.tensors[i]);
    }
  }
}

// A list of per-param values (factors) as long as params.
inline void check_count(const char* op, const char* name, size_t size, size_t n) {
  TORCH_CHECK(size == n, op, ": ", name, " has ", size, " values for ", n, " params");
}

// The RDA ops' hyper values (rda_math.h's HyperIndex order).
inline void check_hyper(const char* op, at::ArrayRef<double> hyper) {
  TORCH_CHECK(hyper.size() == kHyperSize, op, ": hyper must hold ", static_cast<int>(kHyperSize),
              " values [lr, lam, beta, beta_b, averaging, weight_decay, max_factor], got ", hyper.size());
}

// An optional tensor of scalars read by the step: at least `numel` floating values. On a CUDA step (params on
// `device`) and with on_device, it must be there: capturable mode reads it in the kernels, and a graph cannot
// replay a copy from the host. `layout` names the values in the error.
inline void check_scalars(const char* op, const char* name, const std::optional<at::Tensor>& t, int64_t numel,
                          const at::Device& device, bool on_device = false, const char* layout = "") {
  if (!t.has_value()) return;
  TORCH_CHECK(t->defined() && t->numel() >= numel, op, ": ", name, " must hold at least ", numel, " values", layout,
              ", got ", t->defined() ? t->numel() : 0);
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name, " must be floating, got ", t->scalar_type());
  TORCH_CHECK(!on_device || device.is_cpu() || t->device() == device, op, ": ", name, " is on ", t->device(),
              ", params on ", device);
}

// Structured modes: per param None, or the caller's mean |w| of each contiguous group (float32, contiguous, beside
// its param, a count of groups that divides the param's numel; the group size is the quotient).
inline void check_group_means(const char* op, at::TensorList params,
                              const c10::List<std::optional<at::Tensor>>& group_means) {
  TORCH_CHECK(group_means.size() == params.size(), op, ": group_means has ", group_means.size(), " entries for ",
              params.size(), " params");
  for (size_t i = 0; i < params.size(); ++i) {
    const std::optional<at::Tensor> means = group_means.get(i);
    if (!means.has_value()) continue;
    TORCH_CHECK(means->defined(), op, ": group_means[", i, "] is undefined");
    TORCH_CHECK(means->scalar_type() == at::kFloat, op, ": group_means[", i, "] must be float32, got ",
                means->scalar_type());
    TORCH_CHECK(means->device() == params[i].device(), op, ": group_means[", i, "] is on ", means->device(),
                ", params[", i, "] on ", params[i].device());
    TORCH_CHECK(means->is_contiguous(), op, ": group_means[", i, "] must be contiguous");
    TORCH_CHECK(means->numel() >= 1 && params[i].numel() % means->numel() == 0, op, ": group_means[", i, "] has ",
                means->numel(), " values, which does not divide params[", i, "]'s ", params[i].numel(),
                " elements into groups");
  }
}

// The group size of params[i] for group_means[i] (checked by check_group_means).
inline int64_t group_size_of(const at::Tensor& param, const at::Tensor& means) { return param.numel() / means.numel(); }

// Block steps: 2-D params, positive tile sides, and an occupancy map of one bool per tile.
inline void check_block_args(const char* op, at::TensorList params, at::TensorList occupancy, at::IntArrayRef block) {
  TORCH_CHECK(block.size() == 2 && block[0] >= 1 && block[1] >= 1, op, ": block must be two positive tile sides, got ",
              block);
  TORCH_CHECK(occupancy.size() == params.size(), op, ": occupancy has ", occupancy.size(), " tensors for ",
              params.size(), " params");
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].dim() == 2, op, ": params[", i, "]: block granularity needs 2-D weights, got shape ",
                params[i].sizes());
    const int64_t tiles =
        ((params[i].size(0) + block[0] - 1) / block[0]) * ((params[i].size(1) + block[1] - 1) / block[1]);
    const at::Tensor& map = occupancy[i];
    TORCH_CHECK(map.defined() && map.scalar_type() == at::kBool && map.numel() == tiles &&
                    map.device() == params[i].device(),
                op, ": occupancy[", i, "] must be a bool map of ", tiles, " tiles on ", params[i].device(), ", got ",
                map.defined() ? map.sizes() : at::IntArrayRef{}, " ",
                map.defined() ? c10::toString(map.scalar_type()) : "undefined");
  }
}

// The CUDA kernels are specialised on one (param dtype, grad dtype) pair per call (the caller splits groups by
// dtype): one param dtype, and every grad read as the param dtype or every grad read as float32 (grad_for).
inline void check_one_dtype_pair(const char* op, at::TensorList params, at::TensorList grads) {
  const at::ScalarType dtype = params[0].scalar_type();
  const bool grads_as_params = grads[0].scalar_type() == dtype;
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].scalar_type() == dtype, op, ": params[", i, "] is ", params[i].scalar_type(),
                ", params[0] ", dtype, ": the CUDA kernels are specialised on one (param dtype, grad dtype) pair "
                "per call, so pass one dtype per call");
    TORCH_CHECK((grads[i].scalar_type() == dtype) == grads_as_params, op, ": grads[", i, "] is ",
                grads[i].scalar_type(), ", grads[0] ", grads[0].scalar_type(), " (params ", dtype,
                "): the CUDA kernels are specialised on one (param dtype, grad dtype) pair per call, so grads must "
                "be all in the params' dtype or all float32");
  }
}

// The RDA ops' device form (rda_math.h's DeviceHyperIndex order), and found_inf, which only it reads.
inline void check_device_form(const char* op, const std::optional<at::Tensor>& device_hyper,
                              const std::optional<at::Tensor>& found_inf, const at::Device& device) {
  check_scalars(op, "device_hyper", device_hyper, kDeviceHyperSize, device, /*on_device=*/true,
                " [lr, averaging, beta, beta_b, lam, 1 - averaging, 1 - beta, 1 - beta_b]");
  check_scalars(op, "found_inf", found_inf, 1, device);
  TORCH_CHECK(device_hyper.has_value() || !found_inf.has_value(), op,
              ": found_inf is only read with device_hyper (capturable mode)");
}

// Each op's whole argument check, shared by its CPU and CUDA implementations.
inline void check_rda_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList T,
                           at::TensorList B, at::TensorList A, at::TensorList v,
                           const c10::List<std::optional<at::Tensor>>& group_means, at::ArrayRef<double> factors,
                           at::ArrayRef<double> hyper, const std::optional<at::Tensor>& inv_scale,
                           const std::optional<at::Tensor>& device_hyper, const std::optional<at::Tensor>& found_inf) {
  check_tensor_lists(op, params, grads, {{"T", T}, {"B", B}, {"A", A}, {"v", v}});
  check_group_means(op, params, group_means);
  check_count(op, "factors", factors.size(), params.size());
  check_hyper(op, hyper);
  const at::Device device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  check_scalars(op, "inv_scale", inv_scale, 1, device);
  check_device_form(op, device_hyper, found_inf, device);
}

inline void check_block_step_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList T,
                                  at::TensorList B, at::TensorList A, at::TensorList v, at::TensorList occupancy,
                                  at::IntArrayRef block, at::ArrayRef<double> hyper,
                                  const std::optional<at::Tensor>& inv_scale,
                                  const std::optional<at::Tensor>& device_hyper,
                                  const std::optional<at::Tensor>& found_inf) {
  check_tensor_lists(op, params, grads, {{"T", T}, {"B", B}, {"A", A}, {"v", v}});
  check_block_args(op, params, occupancy, block);
  check_hyper(op, hyper);
  const at::Device device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  check_scalars(op, "inv_scale", inv_scale, 1, device);
  check_device_form(op, device_hyper, found_inf, device);
}

// N:M steps: nm = [N, M] with 1 <= N < M <= kMaxNmGroup, and params of 2+ dims, each viewed as [size(0), rest]
// whose rows split into groups of M (the kernels keep a group's M values in registers).
inline void check_nm_args(const char* op, at::TensorList params, at::IntArrayRef nm) {
  TORCH_CHECK(nm.size() == 2 && nm[0] >= 1 && nm[0] < nm[1] && nm[1] <= kMaxNmGroup, op,
              ": nm must be [N, M] with 1 <= N < M <= ", kMaxNmGroup, ", got ", nm);
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].dim() >= 2, op, ": params[", i, "]: N:M granularity needs weights of 2+ dims, got shape ",
                params[i].sizes());
  }
}

inline void check_nm_step_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList T,
                               at::TensorList B, at::TensorList A, at::TensorList v, at::IntArrayRef nm,
                               at::ArrayRef<double> hyper, const std::optional<at::Tensor>& inv_scale,
                               const std::optional<at::Tensor>& device_hyper,
                               const std::optional<at::Tensor>& found_inf) {
  check_tensor_lists(op, params, grads, {{"T", T}, {"B", B}, {"A", A}, {"v", v}});
  check_nm_args(op, params, nm);
  check_hyper(op, hyper);
  const at::Device device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  check_scalars(op, "inv_scale", inv_scale, 1, device);
  check_device_form(op, device_hyper, found_inf, device);
}

// The RDA steps' optional given max A (a sharded tensor's max over every rank): one floating value per param on
// the params' device, where the kernels read it (a CUDA step copies nothing from the host).
inline void check_max_A(const char* op, const std::optional<at::Tensor>& max_A, at::TensorList params) {
  if (!max_A.has_value()) return;
  TORCH_CHECK(max_A->defined(), op, ": max_A is undefined");
  TORCH_CHECK(max_A->numel() == static_cast<int64_t>(params.size()), op, ": max_A has ", max_A->numel(),
              " values for ", params.size(), " params");
  TORCH_CHECK(at::isFloatingType(max_A->scalar_type()), op, ": max_A must be floating, got ", max_A->scalar_type());
  const at::Device device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  TORCH_CHECK(max_A->device() == device, op, ": max_A is on ", max_A->device(), ", params on ", device);
}

// thresholds: one floating value per param, on the host or on the params' device.
inline void check_grda_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList acc,
                            const at::Tensor& thresholds, const std::optional<at::Tensor>& lr_device,
                            const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& found_inf) {
  check_tensor_lists(op, params, grads, {{"acc", acc}});
  const at::Device device = params.empty() ? at::Device(at::kCPU) : params[0].device();
  TORCH_CHECK(thresholds.defined(), op, ": thresholds is undefined");
  TORCH_CHECK(thresholds.numel() == static_cast<int64_t>(params.size()), op, ": thresholds has ", thresholds.numel(),
              " values for ", params.size(), " params");
  TORCH_CHECK(at::isFloatingType(thresholds.scalar_type()), op, ": thresholds must be floating, got ",
              thresholds.scalar_type());
  TORCH_CHECK(thresholds.device().is_cpu() || thresholds.device() == device, op, ": thresholds is on ",
              thresholds.device(), ", params on ", device, " (the host or the params' device)");
  check_scalars(op, "lr_device", lr_device, 1, device, /*on_device=*/true);
  check_scalars(op, "inv_scale", inv_scale, 1, device);
  check_scalars(op, "found_inf", found_inf, 1, device);
}

}  // namespace sparse_rda
