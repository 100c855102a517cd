// The fused RDA / gRDA steps on CPU: per tensor, one pass over the elements (two for RDA with reweighting:
// the exact per-tensor max of this step's A comes first, unless given; rda_max_A runs it alone), split across
// threads with ATen's parallel_reduce, fp32 math on fp32/bf16/fp16 parameters, fp32 state. Returns each tensor's
// nonzero count.
#include "step_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>

#include "../check_args.h"
#include "../flat.h"
#include "../rda_math.h"

namespace sparse_rda {
namespace {

constexpr int64_t kGrain = 1 << 15;

// A scalar tensor's first value, on the host (the checks allow more than one value).
double first_value(const at::Tensor& t) { return t.reshape({-1})[0].item<double>(); }

// a for element i: |w_i| in element mode, the mean |w| of its contiguous group in the structured modes.
template <typename param_t>
struct Magnitude {
  const param_t* w;
  const float* group_means;  // null in element mode
  int64_t group_size;
};

template <bool GROUPED, typename param_t>
inline float magnitude(const Magnitude<param_t>& a, int64_t i) {
  if constexpr (GROUPED) return a.group_means[i / a.group_size];
  return std::fabs(static_cast<float>(a.w[i]));
}

// The element loop over [begin, end), specialised so that the per-tensor choices are not branches inside it
// (restrict pointers and selects let the compiler vectorize it).
template <bool PENALIZED, bool REWEIGHT, bool GROUPED, typename param_t, typename grad_t>
SPARSE_RDA_CPU_CLONES int64_t rda_range(param_t* __restrict__ w, const grad_t* __restrict__ g, float* __restrict__ T, float* __restrict__ B,
                  float* __restrict__ A, float* __restrict__ v, const Magnitude<param_t> a, int64_t begin, int64_t end,
                  const RdaScalars s, float factor, float max_A) {
  int64_t count = 0;
  for (int64_t i = begin; i < end; ++i) {
    const float wi = static_cast<float>(w[i]);
    float om_factor = 0.0f;
    if constexpr (PENALIZED) {
      const float A_next = new_A(A[i], magnitude<GROUPED>(a, i), s);
      A[i] = A_next;
      om_factor = (REWEIGHT ? reweight_factor(A_next, max_A, s.max_factor) : 1.0f) * factor;
    }
    float Ti = T[i], vi = v[i];
    param_t stored;
    if constexpr (PENALIZED) {
      float Bi = B[i];
      stored = static_cast<param_t>(rda_element(wi, static_cast<float>(g[i]), om_factor, Bi, Ti, vi, s));
      B[i] = Bi;
    } else {  // no threshold whatever B holds, as the reference (B is not read)
      stored = static_cast<param_t>(rda_unpenalized_element(wi, static_cast<float>(g[i]), Ti, vi, s));
    }
    T[i] = Ti;
    v[i] = vi;
    w[i] = stored;
    count += static_cast<float>(stored) != 0.0f;
  }
  return count;
}

// A max reduction is a serial dependency chain unless split into independent lanes (the compiler may not
// reorder float max itself); 16 lanes become vector max instructions.
template <bool GROUPED, typename param_t>
SPARSE_RDA_CPU_CLONES float max_A_range(const float* __restrict__ A, const Magnitude<param_t> a, int64_t begin, int64_t end,
                  const RdaScalars s, float running) {
  constexpr int kLanes = 16;
  float lanes[kLanes];
  for (float& lane : lanes) lane = running;
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      lanes[k] = std::max(lanes[k], finite_or_zero(new_A(A[i + k], magnitude<GROUPED>(a, i + k), s)));
    }
  }
  for (; i < end; ++i) running = std::max(running, finite_or_zero(new_A(A[i], magnitude<GROUPED>(a, i), s)));
  for (float lane : lanes) running = std::max(running, lane);
  return running;
}

// The max pass alone: the max of this step's finite A over the tensor (the step's, or the rda_max_A op's).
template <bool GROUPED, typename param_t>
float tensor_max_A(const float* A, const Magnitude<param_t> a, int64_t n, const RdaScalars& s) {
  return at::parallel_reduce(
      0, n, kGrain, 0.0f,
      [&](int64_t begin, int64_t end, float running) { return max_A_range<GROUPED>(A, a, begin, end, s, running); },
      [](float x, float y) { return std::max(x, y); });
}

template <typename param_t>
float tensor_max_A(bool grouped, const float* A, const Magnitude<param_t> a, int64_t n, const RdaScalars& s) {
  return grouped ? tensor_max_A<true>(A, a, n, s) : tensor_max_A<false>(A, a, n, s);
}

// The step pass; max_A (read with reweighting only) from tensor_max_A or given.
template <bool GROUPED, typename param_t, typename grad_t>
int64_t rda_tensor(param_t* w, const grad_t* g, float* T, float* B, float* A, float* v, Magnitude<param_t> a,
                   int64_t n, const RdaScalars& s, float factor, bool reweight, float max_A) {
  const bool penalized = factor > 0.0f;
  return at::parallel_reduce(
      0, n, kGrain, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t count) {
        if (!penalized) return count + rda_range<false, false, GROUPED>(w, g, T, B, A, v, a, begin, end, s, factor, max_A);
        if (reweight) return count + rda_range<true, true, GROUPED>(w, g, T, B, A, v, a, begin, end, s, factor, max_A);
        return count + rda_range<true, false, GROUPED>(w, g, T, B, A, v, a, begin, end, s, factor, max_A);
      },
      std::plus<int64_t>());
}

template <typename param_t, typename grad_t>
SPARSE_RDA_CPU_CLONES int64_t grda_range(param_t* __restrict__ w, const grad_t* __restrict__ g, float* __restrict__ acc,
                                         int64_t begin, int64_t end, float lr, float l1, float inv_scale) {
  int64_t count = 0;
  for (int64_t i = begin; i < end; ++i) {
    const param_t stored = static_cast<param_t>(grda_element(static_cast<float>(g[i]), acc[i], lr, l1, inv_scale));
    w[i] = stored;
    count += static_cast<float>(stored) != 0.0f;
  }
  return count;
}

template <typename param_t, typename grad_t>
int64_t grda_tensor(param_t* w, const grad_t* g, float* acc, int64_t n, float lr, float l1, float inv_scale) {
  return at::parallel_reduce(
      0, n, kGrain, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t count) { return count + grda_range(w, g, acc, begin, end, lr, l1, inv_scale); },
      std::plus<int64_t>());
}

}  // namespace

// Grads in the param's dtype are read as they are; any other dtype is read as float32.
at::Tensor grad_for(const at::Tensor& param, const at::Tensor& grad) {
  return grad.scalar_type() == param.scalar_type() ? grad.contiguous() : grad.contiguous().to(at::kFloat);
}

bool found_inf_set(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && first_value(*found_inf) != 0.0;
}

at::Tensor count_nonzeros(at::TensorList params) {
  auto nnz = at::empty({static_cast<int64_t>(params.size())}, at::TensorOptions().dtype(at::kLong));
  for (size_t t = 0; t < params.size(); ++t) nnz.data_ptr<int64_t>()[t] = params[t].count_nonzero().item<int64_t>();
  return nnz;
}

at::Tensor given_max_A(const std::optional<at::Tensor>& max_A) {
  return max_A.has_value() ? max_A->to(at::kFloat).contiguous() : at::Tensor();
}

float element_max_A(const at::Tensor& w, const at::Tensor& A, const RdaScalars& s) {
  float result = 0.0f;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "element_max_A", [&] {
    const Magnitude<scalar_t> a{w.data_ptr<scalar_t>(), nullptr, 1};
    result = tensor_max_A<false>(A.data_ptr<float>(), a, w.numel(), s);
  });
  return result;
}

float host_inv_scale(const std::optional<at::Tensor>& inv_scale) {
  return inv_scale.has_value() ? static_cast<float>(first_value(*inv_scale)) : 1.0f;
}

RdaScalars with_device_form(const RdaScalars& s, const std::optional<at::Tensor>& device_hyper) {
  if (!device_hyper.has_value()) return s;
  // read as float, as the CUDA kernels read them
  const at::Tensor values = device_hyper->to(at::kCPU, at::kFloat).contiguous();
  return with_device_hyper(s, values.data_ptr<float>());
}

at::Tensor rda_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                        at::TensorList A, at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means,
                        at::ArrayRef<double> factors, at::ArrayRef<double> hyper, bool reweight, bool maximize,
                        const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& device_hyper,
                        const std::optional<at::Tensor>& found_inf, const std::optional<at::Tensor>& max_A) {
  check_rda_args("rda_step_", params, grads, T, B, A, v, group_means, factors, hyper, inv_scale, device_hyper,
                 found_inf);
  check_max_A("rda_step_", max_A, params);
  if (found_inf_set(found_inf)) return count_nonzeros(params);
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto nnz = at::empty({n_tensors}, at::TensorOptions().dtype(at::kLong));
  auto* counts = nnz.data_ptr<int64_t>();
  const RdaScalars s =
      with_device_form(make_rda_scalars(hyper.data(), host_inv_scale(inv_scale), maximize), device_hyper);
  const at::Tensor given = given_max_A(max_A);
  for (int64_t t = 0; t < n_tensors; ++t) {
    Flat w(params[t]), Ts(T[t]), Bs(B[t]), As(A[t]), vs(v[t]);
    const at::Tensor g = grad_for(params[t], grads[t]);
    const float factor = static_cast<float>(factors[t]);
    at::Tensor means;  // structured modes, penalized: the caller's mean |w| per contiguous group
    if (factor > 0.0f) means = group_means.get(t).value_or(at::Tensor());
    const int64_t group_size = means.defined() ? group_size_of(params[t], means) : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.flat.scalar_type(), "rda_step_cpu", [&] {
      Magnitude<scalar_t> a{w.flat.data_ptr<scalar_t>(), means.defined() ? means.data_ptr<float>() : nullptr,
                            group_size};
      auto* args_w = w.flat.data_ptr<scalar_t>();
      float *T_ = Ts.flat.data_ptr<float>(), *B_ = Bs.flat.data_ptr<float>(), *A_ = As.flat.data_ptr<float>(),
            *v_ = vs.flat.data_ptr<float>();
      const int64_t n = w.flat.numel();
      float max_A_t = 0.0f;
      if (factor > 0.0f && reweight) {
        max_A_t = given.defined() ? given.data_ptr<float>()[t] : tensor_max_A(means.defined(), A_, a, n, s);
      }
      auto run = [&](auto* grad) {
        return means.defined() ? rda_tensor<true>(args_w, grad, T_, B_, A_, v_, a, n, s, factor, reweight, max_A_t)
                               : rda_tensor<false>(args_w, grad, T_, B_, A_, v_, a, n, s, factor, reweight, max_A_t);
      };
      counts[t] = g.scalar_type() == w.flat.scalar_type() ? run(g.data_ptr<scalar_t>()) : run(g.data_ptr<float>());
    });
    for (Flat* f : {&w, &Ts, &Bs, &As, &vs}) f->finish();
  }
  return nnz;
}

// The step's max pass alone; writes nothing. A skipped step (found_inf set) gives zeros, as the CUDA max kernel.
at::Tensor rda_max_A_cpu(at::TensorList params, at::TensorList grads, at::TensorList T, at::TensorList B,
                         at::TensorList A, at::TensorList v, const c10::List<std::optional<at::Tensor>>& group_means,
                         at::ArrayRef<double> factors, at::ArrayRef<double> hyper, bool /*reweight*/, bool maximize,
                         const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& device_hyper,
                         const std::optional<at::Tensor>& found_inf) {
  check_rda_args("rda_max_A", params, grads, T, B, A, v, group_means, factors, hyper, inv_scale, device_hyper,
                 found_inf);
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto out = at::zeros({n_tensors}, at::TensorOptions().dtype(at::kFloat));
  if (found_inf_set(found_inf)) return out;
  auto* maxes = out.data_ptr<float>();
  const RdaScalars s = with_device_form(make_rda_scalars(hyper.data(), 1.0f, maximize), device_hyper);
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (!(static_cast<float>(factors[t]) > 0.0f)) continue;  // unpenalized: 0, as the step's
    const at::Tensor w = params[t].contiguous(), As = A[t].contiguous();
    const at::Tensor means = group_means.get(t).value_or(at::Tensor());
    const int64_t group_size = means.defined() ? group_size_of(params[t], means) : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "rda_max_A_cpu", [&] {
      const Magnitude<scalar_t> a{w.data_ptr<scalar_t>(), means.defined() ? means.data_ptr<float>() : nullptr,
                                  group_size};
      maxes[t] = tensor_max_A(means.defined(), As.data_ptr<float>(), a, w.numel(), s);
    });
  }
  return out;
}

at::Tensor grda_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList acc, const at::Tensor& thresholds,
                         double lr, const std::optional<at::Tensor>& lr_device,
                         const std::optional<at::Tensor>& inv_scale, const std::optional<at::Tensor>& found_inf) {
  check_grda_args("grda_step_", params, grads, acc, thresholds, lr_device, inv_scale, found_inf);
  if (found_inf_set(found_inf)) return count_nonzeros(params);
  if (lr_device.has_value()) lr = first_value(*lr_device);
  const at::Tensor l1s = thresholds.to(at::kCPU, at::kFloat).contiguous();
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  auto nnz = at::empty({n_tensors}, at::TensorOptions().dtype(at::kLong));
  auto* counts = nnz.data_ptr<int64_t>();
  const float grad_factor = host_inv_scale(inv_scale);
  for (int64_t t = 0; t < n_tensors; ++t) {
    Flat w(params[t]), accs(acc[t]);
    const at::Tensor g = grad_for(params[t], grads[t]);
    const float l1 = l1s.data_ptr<float>()[t];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.flat.scalar_type(), "grda_step_cpu", [&] {
      auto run = [&](auto* grad) {
        return grda_tensor(w.flat.data_ptr<scalar_t>(), grad, accs.flat.data_ptr<float>(), w.flat.numel(),
                           static_cast<float>(lr), l1, grad_factor);
      };
      counts[t] = g.scalar_type() == w.flat.scalar_type() ? run(g.data_ptr<scalar_t>()) : run(g.data_ptr<float>());
    });
    w.finish();
    accs.finish();
  }
  return nnz;
}

}  // namespace sparse_rda
