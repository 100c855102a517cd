// The one binding file: the sparse_rda::* op schemas, their CPU implementations and (WITH_CUDA) the glue that
// turns tensor lists into the launcher tables of cuda/step_kernels.h. Fake implementations for torch.compile
// are registered in Python (sparse_rda/native.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/step_cpu.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>  // the stream alone: ATen/cuda/CUDAContext.h would need cuBLAS/cuSPARSE headers
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

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

void check(cudaError_t status) { TORCH_CHECK(status == cudaSuccess, "sparse_rda CUDA kernel: ", cudaGetErrorString(status)); }

// An optional scalar tensor as the kernels read it: float32 on the params' device (one already there is converted
// there, without a host sync).
at::Tensor device_f32(const std::optional<at::Tensor>& t, const at::Device& device) {
  return t.has_value() ? t->to(device, at::kFloat).contiguous() : at::Tensor();
}

const float* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// Whether the kernels read the grads as float32 (grad_for): the call's one grad dtype is not the params'.
bool grads_float32(at::TensorList params, at::TensorList grads) {
  return grads[0].scalar_type() != params[0].scalar_type();
}

unsigned long long* counts_ptr(at::Tensor& counts) {
  return reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
}

// The device form's tensors as the kernels read them (float32 on the params' device), alive through the launches.
struct DeviceForm {
  at::Tensor hyper, skip;
  DeviceForm(const std::optional<at::Tensor>& device_hyper, const std::optional<at::Tensor>& found_inf,
             const at::Device& device)
      : hyper(device_f32(device_hyper, device)), skip(device_f32(found_inf, device)) {}
  cuda::DeviceScalars scalars() const { return {ptr_or_null(hyper), ptr_or_null(skip)}; }
};

// An element op's tensors as the launchers take them: contiguous stand-ins (written back by finish(), which the
// max op never calls), the grads as read, and the table. The max op builds the step's table, so it reads the same.
struct RdaCall {
  std::vector<Flat> flats;
  std::vector<at::Tensor> grads_read;  // alive until the kernels are queued
  std::vector<cuda::RdaTensor> tensors;
  RdaCall(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B, at::TensorList A,
          at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means, at::ArrayRef<double> factors) {
    const size_t n = params.size();
    flats.reserve(n * 5);
    for (size_t i = 0; i < n; ++i) {
      for (const at::Tensor& t : {params[i], T[i], B[i], A[i], v[i]}) flats.emplace_back(t);
      Flat* f = &flats[flats.size() - 5];
      grads_read.push_back(grad_for(params[i], grads[i]));
      const std::optional<at::Tensor> means = factors[i] > 0 ? group_means.get(i) : std::nullopt;
      tensors.push_back({f[0].flat.data_ptr(), grads_read.back().data_ptr(), f[1].flat.data_ptr<float>(),
                         f[2].flat.data_ptr<float>(), f[3].flat.data_ptr<float>(), f[4].flat.data_ptr<float>(),
                         means ? means->data_ptr<float>() : nullptr, f[0].flat.numel(),
                         means ? group_size_of(params[i], *means) : 1, static_cast<float>(factors[i])});
    }
  }
  void finish() {
    for (Flat& f : flats) f.finish();
  }
};

// The block op's counterpart of RdaCall.
struct BlockCall {
  std::vector<Flat> flats;
  std::vector<at::Tensor> grads_read;  // alive until the kernels are queued
  std::vector<cuda::BlockTensor> tensors;
  BlockCall(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B, at::TensorList A,
            at::TensorList v, at::TensorList occupancy) {
    const size_t n = params.size();
    flats.reserve(n * 6);
    for (size_t i = 0; i < n; ++i) {
      for (const at::Tensor& t : {params[i], T[i], B[i], A[i], v[i], occupancy[i]}) flats.emplace_back(t);
      Flat* f = &flats[flats.size() - 6];
      grads_read.push_back(grad_for(params[i], grads[i]));
      tensors.push_back({f[0].flat.data_ptr(), grads_read.back().data_ptr(), f[1].flat.data_ptr<float>(),
                         f[2].flat.data_ptr<float>(), f[3].flat.data_ptr<float>(), f[4].flat.data_ptr<float>(),
                         f[5].flat.data_ptr<bool>(), params[i].size(0), params[i].size(1)});
    }
  }
  void finish() {
    for (Flat& f : flats) f.finish();
  }
};

at::Tensor per_tensor_max(at::TensorList params) {
  return at::zeros({static_cast<int64_t>(params.size())}, params[0].options().dtype(at::kFloat));
}

at::Tensor rda_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                         at::TensorList A, at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means,
                         at::ArrayRef<double> factors, at::ArrayRef<double> hyper, bool reweight, bool maximize,
                         const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& device_hyper,
                         const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& max_A) {
  TORCH_CHECK(!params.empty(), "rda_step_: params is empty");
  check_rda_args("rda_step_", params, grads, T, B, A, v, group_means, factors, hyper, inv_scale, device_hyper,
                 found_inf);
  check_one_dtype_pair("rda_step_", params, grads);
  check_max_A("rda_step_", max_A, params);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor inv = device_f32(inv_scale, device);
  const RdaScalars s = make_rda_scalars(hyper.data(), 1.0f, maximize);
  // the device form: lr, averaging, the decays, lam and the skip flag read by the kernels from the device
  const DeviceForm form(device_hyper, found_inf, device);
  const int64_t n = static_cast<int64_t>(params.size());
  RdaCall call(params, grads, T, B, A, v, group_means, factors);
  // a given max (already on the device: converted there) replaces the max pass
  const at::Tensor maxes = max_A.has_value() ? device_f32(max_A, device) : per_tensor_max(params);
  auto counts = at::zeros({n}, params[0].options().dtype(at::kLong));
  const cuda::DType w_dtype = kernel_dtype(params[0].scalar_type());
  if (reweight && !max_A.has_value()) {
    check(cuda::launch_rda_max_A(call.tensors.data(), n, w_dtype, s, form.scalars(), maxes.data_ptr<float>(),
                                 stream));
  }
  check(cuda::launch_rda_step(call.tensors.data(), n, w_dtype, grads_float32(params, grads), s, form.scalars(),
                              ptr_or_null(inv), reweight, maxes.data_ptr<float>(), counts_ptr(counts), stream));
  call.finish();
  return counts;
}

at::Tensor rda_max_A_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                          at::TensorList A, at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means,
                          at::ArrayRef<double> factors, at::ArrayRef<double> hyper, bool /*reweight*/, bool maximize,
                          const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& device_hyper,
                          const std::optional<at::Tensor>& found_inf) {
  TORCH_CHECK(!params.empty(), "rda_max_A: params is empty");
  check_rda_args("rda_max_A", params, grads, T, B, A, v, group_means, factors, hyper, inv_scale, device_hyper,
                 found_inf);
  check_one_dtype_pair("rda_max_A", params, grads);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceForm form(device_hyper, found_inf, device);
  const RdaCall call(params, grads, T, B, A, v, group_means, factors);
  at::Tensor maxes = per_tensor_max(params);
  check(cuda::launch_rda_max_A(call.tensors.data(), static_cast<int64_t>(params.size()),
                               kernel_dtype(params[0].scalar_type()), make_rda_scalars(hyper.data(), 1.0f, maximize),
                               form.scalars(), maxes.data_ptr<float>(), stream));
  return maxes;
}

at::Tensor rda_block_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                               at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                               at::ArrayRef<double> hyper, bool reweight, bool maximize,
                               const std::optional<at::Tensor>& inv_scale,
                               const std::optional<at::Tensor>& device_hyper,
                               const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& max_A) {
  TORCH_CHECK(!params.empty(), "rda_block_step_: params is empty");
  check_block_step_args("rda_block_step_", params, grads, T, B, A, v, occupancy, block, hyper, inv_scale,
                        device_hyper, found_inf);
  check_one_dtype_pair("rda_block_step_", params, grads);
  check_max_A("rda_block_step_", max_A, params);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor inv = device_f32(inv_scale, device);
  const RdaScalars s = make_rda_scalars(hyper.data(), 1.0f, maximize);
  // the device form: the changing values and the skip flag read by the kernels from the device
  const DeviceForm form(device_hyper, found_inf, device);
  const int64_t n = static_cast<int64_t>(params.size());
  BlockCall call(params, grads, T, B, A, v, occupancy);
  const at::Tensor maxes = max_A.has_value() ? device_f32(max_A, device) : per_tensor_max(params);
  auto counts = at::zeros({n}, params[0].options().dtype(at::kLong));
  const int rows = static_cast<int>(block[0]), cols = static_cast<int>(block[1]);
  const cuda::DType w_dtype = kernel_dtype(params[0].scalar_type());
  const bool grads_f32 = grads_float32(params, grads);
  if (reweight && !max_A.has_value()) {
    check(cuda::launch_rda_block_max_A(call.tensors.data(), n, rows, cols, w_dtype, grads_f32, s, form.scalars(),
                                       maxes.data_ptr<float>(), stream));
  }
  check(cuda::launch_rda_block_step(call.tensors.data(), n, rows, cols, w_dtype, grads_f32, s, form.scalars(),
                                    ptr_or_null(inv), reweight, maxes.data_ptr<float>(), counts_ptr(counts), stream));
  call.finish();
  return counts;
}

at::Tensor rda_block_max_A_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                                at::TensorList A, at::TensorList v, at::TensorList occupancy, at::IntArrayRef block,
                                at::ArrayRef<double> hyper, bool /*reweight*/, bool maximize,
                                const std::optional<at::Tensor>& inv_scale,
                                const std::optional<at::Tensor>& device_hyper,
                                const std::optional<at::Tensor>& found_inf) {
  TORCH_CHECK(!params.empty(), "rda_block_max_A: params is empty");
  check_block_step_args("rda_block_max_A", params, grads, T, B, A, v, occupancy, block, hyper, inv_scale,
                        device_hyper, found_inf);
  check_one_dtype_pair("rda_block_max_A", params, grads);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceForm form(device_hyper, found_inf, device);
  const BlockCall call(params, grads, T, B, A, v, occupancy);
  at::Tensor maxes = per_tensor_max(params);
  check(cuda::launch_rda_block_max_A(call.tensors.data(), static_cast<int64_t>(params.size()),
                                     static_cast<int>(block[0]), static_cast<int>(block[1]),
                                     kernel_dtype(params[0].scalar_type()), grads_float32(params, grads),
                                     make_rda_scalars(hyper.data(), 1.0f, maximize), form.scalars(),
                                     maxes.data_ptr<float>(), stream));
  return maxes;
}

// The N:M op's tensors: the element op's table (factor 1, no group means: what its max pass reads) and, on the
// same contiguous stand-ins, the N:M kernels' table with each weight's [rows, row length].
struct NmCall : RdaCall {
  std::vector<cuda::NmTensor> nm_tensors;
  NmCall(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B, at::TensorList A,
         at::TensorList v, const std::vector<double>& ones)
      : RdaCall(params, grads, T, B, A, v, no_group_means(params.size()), ones) {
    for (size_t i = 0; i < params.size(); ++i) {
      const cuda::RdaTensor& e = tensors[i];
      const int64_t rows = params[i].size(0);
      nm_tensors.push_back({e.w, e.g, e.T, e.B, e.A, e.v, rows, rows > 0 ? e.numel / rows : 0});
    }
  }
  static c10::List<std::optional<at::Tensor>> no_group_means(size_t n) {
    c10::List<std::optional<at::Tensor>> none;
    for (size_t i = 0; i < n; ++i) none.push_back(std::nullopt);
    return none;
  }
};

at::Tensor rda_nm_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                            at::TensorList A, at::TensorList v, at::IntArrayRef nm, at::ArrayRef<double> hyper,
                            bool reweight, bool maximize, const std::optional<at::Tensor>& inv_scale,
                            const std::optional<at::Tensor>& device_hyper, const std::optional<at::Tensor>& found_inf,
                            const std::optional<at::Tensor>& max_A) {
  TORCH_CHECK(!params.empty(), "rda_nm_step_: params is empty");
  check_nm_step_args("rda_nm_step_", params, grads, T, B, A, v, nm, hyper, inv_scale, device_hyper, found_inf);
  check_one_dtype_pair("rda_nm_step_", params, grads);
  check_max_A("rda_nm_step_", max_A, params);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor inv = device_f32(inv_scale, device);
  const RdaScalars s = make_rda_scalars(hyper.data(), 1.0f, maximize);
  const DeviceForm form(device_hyper, found_inf, device);
  const int64_t n = static_cast<int64_t>(params.size());
  NmCall call(params, grads, T, B, A, v, std::vector<double>(params.size(), 1.0));
  const at::Tensor maxes = max_A.has_value() ? device_f32(max_A, device) : per_tensor_max(params);
  auto counts = at::zeros({n}, params[0].options().dtype(at::kLong));
  const cuda::DType w_dtype = kernel_dtype(params[0].scalar_type());
  if (reweight && !max_A.has_value()) {
    check(cuda::launch_rda_max_A(call.tensors.data(), n, w_dtype, s, form.scalars(), maxes.data_ptr<float>(),
                                 stream));
  }
  check(cuda::launch_rda_nm_step(call.nm_tensors.data(), n, static_cast<int>(nm[0]), static_cast<int>(nm[1]),
                                 w_dtype, grads_float32(params, grads), s, form.scalars(), ptr_or_null(inv), reweight,
                                 maxes.data_ptr<float>(), counts_ptr(counts), stream));
  call.finish();
  return counts;
}

// A host scalar tensor's first value (the checks allow more than one), read on the host: no device involved.
double host_value(const at::Tensor& t) { return t.reshape({-1})[0].item<double>(); }

at::Tensor grda_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList acc, const at::Tensor& thresholds,
                          double lr, const std::optional<at::Tensor>& lr_device,
                          const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& found_inf) {
  TORCH_CHECK(!params.empty(), "grda_step_: params is empty");
  check_grda_args("grda_step_", params, grads, acc, thresholds, lr_device, inv_scale, found_inf);
  check_one_dtype_pair("grda_step_", params, grads);
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Host values travel by value in the launch arguments and device ones (capturable mode) are read by the kernels:
  // nothing is copied from the host (a copy from pageable memory per step would wait for the host).
  const bool host_l1 = thresholds.device().is_cpu();
  const at::Tensor l1 = thresholds.to(at::kFloat).contiguous();  // where it is
  const bool host_inv = inv_scale.has_value() && inv_scale->device().is_cpu();
  const bool host_skip = found_inf.has_value() && found_inf->device().is_cpu();
  const at::Tensor inv = host_inv ? at::Tensor() : device_f32(inv_scale, device);
  const at::Tensor skip = host_skip ? at::Tensor() : device_f32(found_inf, device);
  const at::Tensor lr_f32 = device_f32(lr_device, device);  // on the device (checked)
  const cuda::GrdaScalars scalars{static_cast<float>(lr),
                                  ptr_or_null(lr_f32),
                                  host_inv ? static_cast<float>(host_value(*inv_scale)) : 1.0f,
                                  ptr_or_null(inv),
                                  host_skip && host_value(*found_inf) != 0.0,
                                  ptr_or_null(skip),
                                  host_l1 ? nullptr : l1.data_ptr<float>()};
  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<Flat> flats;
  flats.reserve(n * 2);
  std::vector<at::Tensor> grads_read;  // alive until the kernels are queued
  std::vector<cuda::GrdaTensor> tensors;
  for (int64_t i = 0; i < n; ++i) {
    flats.emplace_back(params[i]);
    flats.emplace_back(acc[i]);
    Flat* f = &flats[flats.size() - 2];
    grads_read.push_back(grad_for(params[i], grads[i]));
    tensors.push_back({f[0].flat.data_ptr(), grads_read.back().data_ptr(), f[1].flat.data_ptr<float>(),
                       f[0].flat.numel(), host_l1 ? l1.data_ptr<float>()[i] : 0.0f});
  }
  auto counts = at::zeros({n}, params[0].options().dtype(at::kLong));
  check(cuda::launch_grda_step(tensors.data(), n, kernel_dtype(params[0].scalar_type()), grads_float32(params, grads),
                               scalars, counts_ptr(counts), stream));
  for (Flat& f : flats) f.finish();
  return counts;
}

}  // namespace
#endif

// max_A: a given per-tensor max of A (a sharded tensor's, over every rank) replacing the step's own max pass;
// rda_max_A / rda_block_max_A run that pass alone (the steps' arguments, nothing written). rda_nm_step_ (granularity
// ("nm", N, M), nm = [N, M]) steps penalized tensors only, each element-wise before its groups' selection: its max
// pass is rda_max_A's with factors 1 and no group means.
TORCH_LIBRARY(sparse_rda, m) {
  m.def(
      "rda_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] T, Tensor(c!)[] B, Tensor(d!)[] A, "
      "Tensor(e!)[] v, Tensor?[] group_means, float[] factors, float[] hyper, bool reweight, bool maximize, "
      "Tensor? inv_scale, Tensor? device_hyper, Tensor? found_inf, Tensor? max_A=None) -> Tensor");
  m.def(
      "rda_block_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] T, Tensor(c!)[] B, Tensor(d!)[] A, "
      "Tensor(e!)[] v, Tensor(f!)[] occupancy, int[] block, float[] hyper, bool reweight, bool maximize, "
      "Tensor? inv_scale, Tensor? device_hyper, Tensor? found_inf, Tensor? max_A=None) -> Tensor");
  m.def(
      "rda_nm_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] T, Tensor(c!)[] B, Tensor(d!)[] A, "
      "Tensor(e!)[] v, int[] nm, float[] hyper, bool reweight, bool maximize, Tensor? inv_scale, "
      "Tensor? device_hyper, Tensor? found_inf, Tensor? max_A=None) -> Tensor");
  m.def(
      "rda_max_A(Tensor[] params, Tensor[] grads, Tensor[] T, Tensor[] B, Tensor[] A, Tensor[] v, "
      "Tensor?[] group_means, float[] factors, float[] hyper, bool reweight, bool maximize, Tensor? inv_scale, "
      "Tensor? device_hyper, Tensor? found_inf) -> Tensor");
  m.def(
      "rda_block_max_A(Tensor[] params, Tensor[] grads, Tensor[] T, Tensor[] B, Tensor[] A, Tensor[] v, "
      "Tensor[] occupancy, int[] block, float[] hyper, bool reweight, bool maximize, Tensor? inv_scale, "
      "Tensor? device_hyper, Tensor? found_inf) -> Tensor");
  m.def(
      "grda_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] acc, Tensor thresholds, float lr, "
      "Tensor? lr_device, Tensor? inv_scale, Tensor? found_inf) -> Tensor");
  // inference: y = x W^T + b from W's nonzeros by output row (sparse_rda.csr packs them)
  m.def("csr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparse_rda, CPU, m) {
  m.impl("rda_step_", &rda_step_cpu);
  m.impl("rda_block_step_", &rda_block_step_cpu);
  m.impl("rda_nm_step_", &rda_nm_step_cpu);
  m.impl("rda_max_A", &rda_max_A_cpu);
  m.impl("rda_block_max_A", &rda_block_max_A_cpu);
  m.impl("grda_step_", &grda_step_cpu);
  m.impl("csr_linear", &csr_linear_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(sparse_rda, CUDA, m) {
  m.impl("rda_step_", &rda_step_cuda);
  m.impl("rda_block_step_", &rda_block_step_cuda);
  m.impl("rda_nm_step_", &rda_nm_step_cuda);
  m.impl("rda_max_A", &rda_max_A_cuda);
  m.impl("rda_block_max_A", &rda_block_max_A_cuda);
  m.impl("grda_step_", &grda_step_cuda);
}
#endif

}  // namespace sparse_rda
