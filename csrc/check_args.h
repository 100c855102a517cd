// The step ops check their own arguments, CPU and CUDA alike: whatever a Python caller passes, a kernel never
// reads or writes outside its tensors. Every check runs before the first tensor is touched, so a refused call
// changes nothing; each error names the argument and the index (torch raises it as a RuntimeError).
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>

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

// A list of per-param values (factors, group sizes, thresholds) as long as params.
inline void check_count(const char* op, const char* name, size_t size, size_t n) {
  TORCH_CHECK(size == n, op, ": ", name, " has ", size, " values for ", n, " params");
}

// An optional tensor of scalars read by the step: at least `numel` elements.
inline void check_scalars(const char* op, const char* name, const std::optional<at::Tensor>& t, int64_t numel) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->defined() && t->numel() >= numel, op, ": ", name, " must hold at least ", numel, " values, got ",
              t->defined() ? t->numel() : 0);
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), op, ": ", name, " must be floating, got ", t->scalar_type());
}

// Structured groups: each group size positive and a divisor of its tensor's numel.
inline void check_group_sizes(const char* op, at::TensorList params, at::IntArrayRef group_sizes) {
  check_count(op, "group_sizes", group_sizes.size(), params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(group_sizes[i] >= 1 && params[i].numel() % group_sizes[i] == 0, op, ": group_sizes[", i, "] = ",
                group_sizes[i], " does not divide params[", i, "]'s ", params[i].numel(), " elements");
  }
}

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

// Each op's whole argument check, shared by its CPU and CUDA implementations.
inline void check_rda_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList T,
                           at::TensorList B, at::TensorList A, at::TensorList v, at::ArrayRef<double> factors,
                           at::IntArrayRef group_sizes, const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& lr_alpha, const std::optional<at::Tensor>& found_inf) {
  check_tensor_lists(op, params, grads, {{"T", T}, {"B", B}, {"A", A}, {"v", v}});
  check_count(op, "factors", factors.size(), params.size());
  check_group_sizes(op, params, group_sizes);
  check_scalars(op, "grad_scale", grad_scale, 1);
  check_scalars(op, "lr_alpha", lr_alpha, 2);
  check_scalars(op, "found_inf", found_inf, 1);
}

inline void check_block_step_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList T,
                                  at::TensorList B, at::TensorList A, at::TensorList v, at::TensorList occupancy,
                                  at::IntArrayRef block, const std::optional<at::Tensor>& grad_scale) {
  check_tensor_lists(op, params, grads, {{"T", T}, {"B", B}, {"A", A}, {"v", v}});
  check_block_args(op, params, occupancy, block);
  check_scalars(op, "grad_scale", grad_scale, 1);
}

inline void check_grda_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList acc,
                            at::ArrayRef<double> thresholds, const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& thresholds_device,
                            const std::optional<at::Tensor>& lr_device, const std::optional<at::Tensor>& found_inf) {
  check_tensor_lists(op, params, grads, {{"acc", acc}});
  if (thresholds_device.has_value()) {
    check_scalars(op, "thresholds_device", thresholds_device, static_cast<int64_t>(params.size()));
  } else {
    check_count(op, "thresholds", thresholds.size(), params.size());
  }
  check_scalars(op, "grad_scale", grad_scale, 1);
  check_scalars(op, "lr_device", lr_device, 1);
  check_scalars(op, "found_inf", found_inf, 1);
}

}  // namespace sparse_rda
