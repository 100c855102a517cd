// The one binding file: the sparse_rda::* op schemas, their CPU implementations and (WITH_CUDA) the glue that
// turns tensor lists into the launcher tables of cuda/step_kernels.h. Fake implementations for torch.compile
// are registered in Python (sparse_rda/native.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/step_cpu.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>  // the stream alone: ATen/cuda/CUDAContext.h would need cuBLAS/cuSPARSE headers
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstring>
#include <vector>

#include "check_args.h"
#include "cuda/step_kernels.h"
#include "flat.h"
#endif

// An importable module, so `import sparse_rda._C` loads the library and runs the registrations below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}

namespace sparse_rda {

#ifdef WITH_CUDA
namespace {

cuda::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kHalf: return cuda::DType::kFloat16;
    default: TORCH_CHECK(false, "params: dtype ", t, " is not supported (float32, bfloat16, float16)");
  }
}

// Copies a host array of plain structs to the device (one copy from pinned memory). Not for capturable mode: a
// CUDA graph would replay the copy from host memory freed after capture.
template <typename T>
at::Tensor to_device(const std::vector<T>& items, const at::Device& device) {
  auto host = at::empty({static_cast<int64_t>(items.size() * sizeof(T))}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), items.data(), items.size() * sizeof(T));
  return host.to(device, /*non_blocking=*/true);
}

void check(cudaError_t status) { TORCH_CHECK(status == cudaSuccess, "sparse_rda CUDA kernel: ", cudaGetErrorString(status)); }

// Splits tensor indices by (param dtype, grad dtype == param dtype): the kernels are specialised on both.
std::vector<std::vector<int64_t>> by_dtype(at::TensorList params, at::TensorList grads) {
  std::vector<std::vector<int64_t>> groups;
  std::vector<std::pair<at::ScalarType, bool>> keys;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::pair<at::ScalarType, bool> key{params[i].scalar_type(), grads[i].scalar_type() == params[i].scalar_type()};
    size_t k = 0;
    while (k < keys.size() && keys[k] != key) ++k;
    if (k == keys.size()) {
      keys.push_back(key);
      groups.emplace_back();
    }
    groups[k].push_back(static_cast<int64_t>(i));
  }
  return groups;
}

// GradScaler's 1 / scale, computed on the device (no host sync).
std::optional<at::Tensor> device_inverse_scale(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value()) return std::nullopt;
  return grad_scale->to(at::kDouble).reciprocal().to(at::kFloat);
}

// The rows idx of a device vector, gathered on the device (no index tensor copied from the host).
at::Tensor rows(const at::Tensor& t, const std::vector<int64_t>& idx) {
  if (static_cast<int64_t>(idx.size()) == t.size(0)) return t;  // a single dtype group: all rows, in order
  std::vector<at::Tensor> picked;
  for (int64_t i : idx) picked.push_back(t.select(0, i));
  return at::stack(picked);
}

// Each param's nonzero count, from step(idx) run once per dtype group idx (int64 counts in idx's order).
template <typename Step>
at::Tensor counts_by_dtype(at::TensorList params, at::TensorList grads, Step&& step) {
  const auto groups = by_dtype(params, grads);
  if (groups.size() == 1) return step(groups[0]);
  std::vector<at::Tensor> counts(params.size());
  for (const auto& idx : groups) {
    const at::Tensor group_counts = step(idx);
    for (size_t j = 0; j < idx.size(); ++j) counts[idx[j]] = group_counts.select(0, static_cast<int64_t>(j));
  }
  return at::stack(counts);
}

at::Tensor rda_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                         at::TensorList A, at::TensorList v, at::ArrayRef<double> factors,
                         at::IntArrayRef group_sizes, double lr, double lam, double beta, double beta_b,
                         double alpha, double weight_decay, double max_factor, bool reweight, bool maximize,
                         const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& lr_alpha,
                         const std::optional<at::Tensor>& found_inf, double inv_tau, double inv_tau_b) {
  TORCH_CHECK(!params.empty(), "rda_step_: params is empty");
  check_rda_args("rda_step_", params, grads, T, B, A, v, factors, group_sizes, grad_scale, lr_alpha, found_inf);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto inv = device_inverse_scale(grad_scale);
  const RdaScalars s = make_rda_scalars(lr, lam, beta, beta_b, alpha, weight_decay, max_factor, 1.0f, maximize);
  // capturable: lr and averaging (and the skip flag) read by the kernels from the device
  at::Tensor lr_alpha_f32, skip_flag;
  if (lr_alpha.has_value()) {
    lr_alpha_f32 = lr_alpha->to(device, at::kFloat).contiguous();
    skip_flag = found_inf.has_value() ? found_inf->to(device, at::kFloat).contiguous()
                                      : at::zeros({1}, params[0].options().dtype(at::kFloat));
  }
  const cuda::DeviceScalars scalars =
      lr_alpha.has_value() ? cuda::DeviceScalars{lr_alpha_f32.data_ptr<float>(), skip_flag.data_ptr<float>(),
                                                 static_cast<float>(inv_tau), static_cast<float>(inv_tau_b)}
                           : cuda::DeviceScalars{nullptr, nullptr, 0.0f, 0.0f};
  TORCH_CHECK(lr_alpha.has_value() || !found_inf.has_value(), "found_inf: only with lr_alpha (capturable mode)");
  return counts_by_dtype(params, grads, [&](const std::vector<int64_t>& idx) {
    std::vector<Flat> flats;
    flats.reserve(idx.size() * 5);
    std::vector<at::Tensor> keep;  // grads and group means stay alive until the kernels are queued
    std::vector<cuda::RdaTensor> tensors;
    for (int64_t i : idx) {
      for (const at::Tensor& t : {params[i], T[i], B[i], A[i], v[i]}) flats.emplace_back(t);
      Flat* f = &flats[flats.size() - 5];
      const at::Tensor g = grad_for(params[i], grads[i]);
      at::Tensor means;
      if (factors[i] > 0 && group_sizes[i] > 1) {
        means = f[0].flat.to(at::kFloat).abs().view({-1, group_sizes[i]}).mean(1);
      }
      keep.push_back(g);
      keep.push_back(means);
      tensors.push_back({f[0].flat.data_ptr(), g.data_ptr(), f[1].flat.data_ptr<float>(), f[2].flat.data_ptr<float>(),
                         f[3].flat.data_ptr<float>(), f[4].flat.data_ptr<float>(),
                         means.defined() ? means.data_ptr<float>() : nullptr, f[0].flat.numel(), group_sizes[i],
                         static_cast<float>(factors[i])});
    }
    const int64_t n = static_cast<int64_t>(tensors.size());
    auto max_A = at::zeros({static_cast<int64_t>(idx.size())}, params[0].options().dtype(at::kFloat));
    auto counts = at::zeros({static_cast<int64_t>(idx.size())}, params[0].options().dtype(at::kLong));
    const cuda::DType w_dtype = kernel_dtype(params[idx[0]].scalar_type());
    const bool grad_f32 = grads[idx[0]].scalar_type() != params[idx[0]].scalar_type();
    if (reweight) {
      check(cuda::launch_rda_max_A(tensors.data(), n, w_dtype, s, scalars, max_A.data_ptr<float>(), stream));
    }
    check(cuda::launch_rda_step(tensors.data(), n, w_dtype, grad_f32, s, scalars,
                                inv ? inv->data_ptr<float>() : nullptr, reweight, max_A.data_ptr<float>(),
                                reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), stream));
    for (Flat& f : flats) f.finish();
    return counts;
  });
}

at::Tensor rda_block_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                               at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                               double lr, double lam, double beta, double beta_b, double alpha, double weight_decay,
                               double max_factor, bool reweight, bool maximize,
                               const std::optional<at::Tensor>& grad_scale) {
  TORCH_CHECK(!params.empty(), "rda_block_step_: params is empty");
  check_block_step_args("rda_block_step_", params, grads, T, B, A, v, occupancy, block, grad_scale);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto inv = device_inverse_scale(grad_scale);
  const RdaScalars s = make_rda_scalars(lr, lam, beta, beta_b, alpha, weight_decay, max_factor, 1.0f, maximize);
  return counts_by_dtype(params, grads, [&](const std::vector<int64_t>& idx) {
    std::vector<Flat> flats;
    flats.reserve(idx.size() * 6);
    std::vector<at::Tensor> grads_read;  // alive until the kernels are queued
    std::vector<cuda::BlockTensor> tensors;
    for (int64_t i : idx) {
      for (const at::Tensor& t : {params[i], T[i], B[i], A[i], v[i], occupancy[i]}) flats.emplace_back(t);
      Flat* f = &flats[flats.size() - 6];
      grads_read.push_back(grad_for(params[i], grads[i]));
      tensors.push_back({f[0].flat.data_ptr(), grads_read.back().data_ptr(), f[1].flat.data_ptr<float>(),
                         f[2].flat.data_ptr<float>(), f[3].flat.data_ptr<float>(), f[4].flat.data_ptr<float>(),
                         f[5].flat.data_ptr<bool>(), params[i].size(0), params[i].size(1)});
    }
    auto max_A = at::zeros({static_cast<int64_t>(idx.size())}, params[0].options().dtype(at::kFloat));
    auto counts = at::zeros({static_cast<int64_t>(idx.size())}, params[0].options().dtype(at::kLong));
    check(cuda::launch_rda_block_step(tensors.data(), static_cast<int64_t>(tensors.size()), static_cast<int>(block[0]),
                                      static_cast<int>(block[1]), kernel_dtype(params[idx[0]].scalar_type()),
                                      grads[idx[0]].scalar_type() != params[idx[0]].scalar_type(), s,
                                      inv ? inv->data_ptr<float>() : nullptr, reweight, max_A.data_ptr<float>(),
                                      reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), stream));
    for (Flat& f : flats) f.finish();
    return counts;
  });
}

at::Tensor grda_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList acc,
                          at::ArrayRef<double> thresholds, double lr, const std::optional<at::Tensor>& grad_scale,
                          const std::optional<at::Tensor>& thresholds_device, const std::optional<at::Tensor>& lr_device,
                          const std::optional<at::Tensor>& found_inf) {
  TORCH_CHECK(!params.empty(), "grda_step_: params is empty");
  check_grda_args("grda_step_", params, grads, acc, thresholds, grad_scale, thresholds_device, lr_device,
                  found_inf);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto inv = device_inverse_scale(grad_scale);
  return counts_by_dtype(params, grads, [&](const std::vector<int64_t>& idx) {
    std::vector<Flat> flats;
    flats.reserve(idx.size() * 2);
    std::vector<at::Tensor> keep;
    std::vector<cuda::GrdaTensor> tensors;
    std::vector<float> l1;
    for (int64_t i : idx) {
      flats.emplace_back(params[i]);
      flats.emplace_back(acc[i]);
      const at::Tensor g = grad_for(params[i], grads[i]);
      keep.push_back(g);
      Flat* f = &flats[flats.size() - 2];
      tensors.push_back({f[0].flat.data_ptr(), g.data_ptr(), f[1].flat.data_ptr<float>(), f[0].flat.numel()});
      l1.push_back(static_cast<float>(thresholds[i]));
    }
    // capturable: this dtype group's thresholds, lr and skip flag stay on the device
    const at::Tensor l1_device = thresholds_device.has_value()
                                     ? rows(thresholds_device->to(device, at::kFloat), idx).contiguous()
                                     : to_device(l1, device).view(at::kFloat);
    const at::Tensor lr_f32 = lr_device.has_value() ? lr_device->to(device, at::kFloat).contiguous() : at::Tensor();
    const at::Tensor skip = found_inf.has_value() ? found_inf->to(device, at::kFloat).contiguous() : at::Tensor();
    auto counts = at::zeros({static_cast<int64_t>(idx.size())}, params[0].options().dtype(at::kLong));
    check(cuda::launch_grda_step(tensors.data(), static_cast<int64_t>(tensors.size()),
                                 kernel_dtype(params[idx[0]].scalar_type()),
                                 grads[idx[0]].scalar_type() != params[idx[0]].scalar_type(), static_cast<float>(lr),
                                 lr_f32.defined() ? lr_f32.data_ptr<float>() : nullptr,
                                 skip.defined() ? skip.data_ptr<float>() : nullptr, l1_device.data_ptr<float>(),
                                 inv ? inv->data_ptr<float>() : nullptr,
                                 reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()), stream));
    for (Flat& f : flats) f.finish();
    return counts;
  });
}

}  // namespace
#endif

TORCH_LIBRARY(sparse_rda, m) {
  m.def(
      "rda_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] T, Tensor(c!)[] B, Tensor(d!)[] A, "
      "Tensor(e!)[] v, float[] factors, int[] group_sizes, float lr, float lam, float beta, float beta_b, "
      "float alpha, float weight_decay, float max_factor, bool reweight, bool maximize, Tensor? grad_scale, "
      "Tensor? lr_alpha=None, Tensor? found_inf=None, float inv_tau=0., float inv_tau_b=0.) -> Tensor");
  m.def(
      "rda_block_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] T, Tensor(c!)[] B, Tensor(d!)[] A, "
      "Tensor(e!)[] v, Tensor(f!)[] occupancy, int[] block, float lr, float lam, float beta, float beta_b, "
      "float alpha, float weight_decay, float max_factor, bool reweight, bool maximize, Tensor? grad_scale) -> Tensor");
  m.def(
      "grda_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] acc, float[] thresholds, float lr, "
      "Tensor? grad_scale, Tensor? thresholds_device=None, Tensor? lr_device=None, Tensor? found_inf=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparse_rda, CPU, m) {
  m.impl("rda_step_", &rda_step_cpu);
  m.impl("rda_block_step_", &rda_block_step_cpu);
  m.impl("grda_step_", &grda_step_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(sparse_rda, CUDA, m) {
  m.impl("rda_step_", &rda_step_cuda);
  m.impl("rda_block_step_", &rda_block_step_cuda);
  m.impl("grda_step_", &grda_step_cuda);
}
#endif

}  // namespace sparse_rda
