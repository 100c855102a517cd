// Per-element RDA and gRDA math (docs/ALGORITHMS.md sections 1 and 2), shared by the CPU step and the CUDA
// kernels. The order of operations follows sparse_rda/reference.py, the definition every backend is tested
// against. Torch-free: plain floats, so nvcc compiles the .cu files that include it in seconds.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define SPARSE_RDA_HD __host__ __device__ __forceinline__
#else
#define SPARSE_RDA_HD inline
#endif

namespace sparse_rda {

// Step-wide scalars, computed on the host (float64 there, passed as float).
// The 1 - x values are computed in double on the host, as the reference does, and rounded once.
struct RdaScalars {
  float lr;            // s
  float lam;           // threshold scale
  float beta;          // momentum decay exp(-s / tau), 0 without momentum
  float one_minus_beta;
  float beta_b;        // decay of A, exp(-s / tau_b)
  float one_minus_beta_b;
  float alpha;         // averaging
  float one_minus_alpha;
  float weight_decay;
  float max_factor;    // M
  float inv_scale;     // 1 / GradScaler scale, 1 without one
  bool reweight;
  bool maximize;
};

// The step's scalars from the host's doubles.
inline RdaScalars make_rda_scalars(double lr, double lam, double beta, double beta_b, double alpha, double weight_decay,
                                   double max_factor, float inv_scale, bool reweight, bool maximize) {
  return {static_cast<float>(lr),         static_cast<float>(lam),
          static_cast<float>(beta),       static_cast<float>(1.0 - beta),
          static_cast<float>(beta_b),     static_cast<float>(1.0 - beta_b),
          static_cast<float>(alpha),      static_cast<float>(1.0 - alpha),
          static_cast<float>(weight_decay), static_cast<float>(max_factor),
          inv_scale,                      reweight,
          maximize};
}

// Per-tensor values.
struct RdaTensorScalars {
  float factor;  // sqrt(group size) when penalized, 0 when not (then A and B are left alone)
  float max_A;   // max over the tensor of this step's A (unused without reweighting)
};

// sign(x) * max(|x| - t, 0); NaN stays NaN.
SPARSE_RDA_HD float soft_threshold(float x, float t) {
  float shrunk = fabsf(x) - t;
  shrunk = shrunk > 0.0f ? shrunk : (shrunk != shrunk ? shrunk : 0.0f);
  return x < 0.0f ? -shrunk : shrunk;
}

// A = beta_b A + (1 - beta_b) a, with a = |w| or the mean |w| of the element's group.
SPARSE_RDA_HD float new_A(float A, float a, const RdaScalars& s) {
  return s.beta_b * A + s.one_minus_beta_b * a;
}

// om = M / (1 + (M - 1) A / max A), or M when max A == 0.
SPARSE_RDA_HD float reweight_factor(float A, float max_A, float max_factor) {
  if (!(max_A > 0.0f)) return max_factor;
  return max_factor / (1.0f + (max_factor - 1.0f) * (A / max_A));
}

// The gradient the update uses: unscaled, sign-flipped to maximize, plus weight decay.
SPARSE_RDA_HD float effective_grad(float grad, float w, const RdaScalars& s) {
  float g = grad * s.inv_scale;
  if (s.maximize) g = -g;
  return g + s.weight_decay * w;
}

// One element of the RDA step. A_next must be new_A(...) of this element (computed by the caller, which also
// took its max); updates B, T, v in place and returns the new weight.
SPARSE_RDA_HD float rda_element(float w, float grad, float A_next, float& B, float& T, float& v,
                                const RdaScalars& s, const RdaTensorScalars& t) {
  const float g = effective_grad(grad, w, s);
  float threshold = 0.0f;
  if (t.factor > 0.0f) {
    const float om = s.reweight ? reweight_factor(A_next, t.max_A, s.max_factor) : 1.0f;
    B = s.alpha * B + s.lr * (om * t.factor);
    threshold = s.lam * B;
  }
  T = s.alpha * T + s.one_minus_alpha * w;
  v = s.beta * v + s.one_minus_beta * g;
  T = T - s.lr * v;
  return soft_threshold(T, threshold);
}

// One element of the gRDA step: acc -= lr * grad; w = S_l1(acc).
SPARSE_RDA_HD float grda_element(float grad, float& acc, float lr, float l1, float inv_scale) {
  acc = acc - lr * (grad * inv_scale);
  return soft_threshold(acc, l1);
}

}  // namespace sparse_rda
