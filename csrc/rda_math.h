// Per-element RDA and gRDA math (docs/ALGORITHMS.md sections 1 and 2), shared by the CPU step and the CUDA
// kernels. The order of operations follows sparse_rda/reference.py, the definition every backend is tested
// against. Torch-free: plain floats, so nvcc compiles the .cu files that include it in seconds.
#pragma once

#include <float.h>
#include <math.h>

#if defined(__CUDACC__)
#define SPARSE_RDA_HD __host__ __device__ __forceinline__
#else
#define SPARSE_RDA_HD inline
#endif

namespace sparse_rda {

// Step-wide scalars: the RDA ops' hyper values rounded to float once (the caller computed the decays), the
// 1 - x values computed in double on the host, as the reference does, and rounded once.
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
  float grad_factor;   // 1 / GradScaler scale (1 without one), negated to maximize
};

// The ops' `float[] hyper`, in this order (the length is checked by check_args.h).
enum HyperIndex : int { kLr, kLam, kBeta, kBetaB, kAveraging, kWeightDecay, kMaxFactor, kHyperSize };

// The step's scalars from hyper (kHyperSize host doubles) and the grad factor: the inverse scale's value where
// the kernel gets no pointer to it, else 1.
inline RdaScalars make_rda_scalars(const double* hyper, float grad_factor, bool maximize) {
  return {static_cast<float>(hyper[kLr]),
          static_cast<float>(hyper[kLam]),
          static_cast<float>(hyper[kBeta]),
          static_cast<float>(1.0 - hyper[kBeta]),
          static_cast<float>(hyper[kBetaB]),
          static_cast<float>(1.0 - hyper[kBetaB]),
          static_cast<float>(hyper[kAveraging]),
          static_cast<float>(1.0 - hyper[kAveraging]),
          static_cast<float>(hyper[kWeightDecay]),
          static_cast<float>(hyper[kMaxFactor]),
          maximize ? -grad_factor : grad_factor};
}

// The device form's values (capturable mode, and steps traced by torch.compile), in this order: a float32 tensor
// of kDeviceHyperSize on the params' device (sparse_rda/scalars.py builds it; check_args.h checks the length).
// The 1 - x values come computed in double and rounded once, as make_rda_scalars computes them: 1 - beta in float
// from a rounded beta would be off by up to 6e-8 / (1 - beta) relative (3e-5 at lr 0.02, tau 9.5).
enum DeviceHyperIndex : int {
  kDeviceLr,
  kDeviceAveraging,
  kDeviceBeta,
  kDeviceBetaB,
  kDeviceLam,
  kDeviceOneMinusAveraging,
  kDeviceOneMinusBeta,
  kDeviceOneMinusBetaB,
  kDeviceHyperSize
};

// The device form: the values that change read from device memory (a CUDA graph replays with new values), from
// the kDeviceHyperSize values at x (host or device memory).
SPARSE_RDA_HD RdaScalars with_device_hyper(RdaScalars s, const float* x) {
  s.lr = x[kDeviceLr];
  s.lam = x[kDeviceLam];
  s.alpha = x[kDeviceAveraging];
  s.beta = x[kDeviceBeta];
  s.beta_b = x[kDeviceBetaB];
  s.one_minus_alpha = x[kDeviceOneMinusAveraging];
  s.one_minus_beta = x[kDeviceOneMinusBeta];
  s.one_minus_beta_b = x[kDeviceOneMinusBetaB];
  return s;
}

// sign(x) * max(|x| - t, 0); NaN stays NaN. Branch-free (selects), so loops over it vectorize.
SPARSE_RDA_HD float soft_threshold(float x, float t) {
  const float shrunk = fabsf(x) - t;
  const float kept = shrunk > 0.0f ? shrunk : 0.0f;
  return copysignf(shrunk != shrunk ? shrunk : kept, x);
}

// A = beta_b A + (1 - beta_b) a, with a = |w| or the mean |w| of the element's group.
SPARSE_RDA_HD float new_A(float A, float a, const RdaScalars& s) {
  return s.beta_b * A + s.one_minus_beta_b * a;
}

// Whether x is neither NaN nor +-inf.
SPARSE_RDA_HD bool is_finite(float x) { return fabsf(x) <= FLT_MAX; }

// The value a max of A takes in: the reweighting's max A is over the finite values only, so one NaN or inf
// element cannot switch the reweighting off for its whole tensor (ALGORITHMS.md, non-finite values).
SPARSE_RDA_HD float finite_or_zero(float x) { return is_finite(x) ? x : 0.0f; }

// om = M / (1 + (M - 1) A / max A) = M max A / (max A + (M - 1) A): one division instead of two (the
// reference's form differs by rounding only). When max A == 0 every A is 0 and om = M: a max of 1 gives that.
// om = 0 where A is not finite (that magnitude is unknown: the element goes unpenalized, as with SGD).
SPARSE_RDA_HD float reweight_factor(float A, float max_A, float max_factor) {
  const float m = max_A > 0.0f ? max_A : 1.0f;
  const float denominator = m + (max_factor - 1.0f) * A;
  // NaN -> inf (one vector min), so om = 0 where A is NaN or inf. A select on om instead kept GCC from
  // vectorizing the step loop (measured: 2.5x slower on ResNet-18's tensors).
  return (max_factor * m) / (denominator < INFINITY ? denominator : INFINITY);
}

// B = alpha B + s om_factor: the accumulated threshold weight (per element, or per tile in block mode).
SPARSE_RDA_HD float new_B(float B, float om_factor, const RdaScalars& s) { return s.alpha * B + s.lr * om_factor; }

// The dual average of one element, the same in every granularity: g = grad + weight_decay w,
// T = alpha T + (1 - alpha) w, v = beta v + (1 - beta) g, T -= s v. Updates T and v in place.
// The w term is added also when weight_decay is 0 (a non-finite w makes its own v non-finite, on every backend):
// a select skipping it kept GCC from vectorizing the step loop (measured: 2.5x slower on ResNet-18's tensors).
SPARSE_RDA_HD void dual_average(float w, float grad, float& T, float& v, const RdaScalars& s) {
  const float g = grad * s.grad_factor + s.weight_decay * w;
  T = s.alpha * T + s.one_minus_alpha * w;
  v = s.beta * v + s.one_minus_beta * g;
  T = T - s.lr * v;
}

// One element of the RDA step, after A: om_factor is om * sqrt(group size) for a penalized tensor (om = 1
// without reweighting) and 0 for an unpenalized one, whose B then stays 0 and threshold 0. Updates B, T, v in
// place and returns the new weight.
SPARSE_RDA_HD float rda_element(float w, float grad, float om_factor, float& B, float& T, float& v,
                                const RdaScalars& s) {
  B = new_B(B, om_factor, s);
  dual_average(w, grad, T, v, s);
  return soft_threshold(T, s.lam * B);
}

// One element of an unpenalized tensor: the dual average and no threshold, w = T, whatever B holds (a state
// loaded from a run that penalized the tensor keeps its B; the reference ignores it too).
SPARSE_RDA_HD float rda_unpenalized_element(float w, float grad, float& T, float& v, const RdaScalars& s) {
  dual_average(w, grad, T, v, s);
  return T;
}

// Block mode's group prox (ALGORITHMS.md section 3): the factor a tile of norm ||T_tile|| and threshold t is
// scaled by, max(0, 1 - t sqrt(n) / ||T_tile||); an all-zero tile stays zero (0, not NaN); a tile whose norm is
// NaN or inf is not shrunk (1: only its non-finite elements are non-finite); a NaN threshold gives NaN.
SPARSE_RDA_HD float group_shrink(float norm, float threshold, float sqrt_count) {
  const float shrink = 1.0f - (threshold * sqrt_count) / norm;
  const float kept = shrink > 0.0f || shrink != shrink ? shrink : 0.0f;
  return !is_finite(norm) ? 1.0f : norm > 0.0f ? kept : 0.0f;
}

// N:M granularity ("nm", N, M): at most N nonzeros in each group of M consecutive weights along a row, M at most
// kMaxNmGroup (sparse_rda/plan.py's MAX_NM_GROUP): a group's values are ranked against each other, in registers
// on the GPU.
constexpr int kMaxNmGroup = 32;

// A loop over a group's slots, unrolled in device code so that its arrays stay in registers (indexed by constants).
#if defined(__CUDA_ARCH__)
#define SPARSE_RDA_UNROLL _Pragma("unroll")
#else
#define SPARSE_RDA_UNROLL
#endif

// The rank key of a slot past a short group's end: below every weight's key (those are >= 0).
constexpr float kNmAbsent = -1.0f;

// The rank key of a soft-thresholded weight: |w|, NaN as +inf (a NaN ranks first, as in the reference).
SPARSE_RDA_HD float nm_key(float w) {
  const float magnitude = fabsf(w);
  return magnitude != magnitude ? INFINITY : magnitude;
}

// Whether slot j of a group ranks above slot i: a larger key, or an equal key at a lower index (the kept are the N
// largest, ties to the lower index). Bitwise, without branches: loops over it vectorize.
SPARSE_RDA_HD bool nm_ranks_above(float key_j, int j, float key_i, int i) {
  return (key_j > key_i) | ((key_j == key_i) & (j < i));
}

// The kept slots of a group as a bit mask (bit i: slot i), from the keys of its C slots (C <= 32, absent slots
// kNmAbsent): slot i is kept iff fewer than `keep` slots rank above it. One slot at a time: on the GPU one
// counter is live (the CPU step sums them in the other order, which vectorizes).
template <int C>
SPARSE_RDA_HD unsigned nm_keep_mask(const float (&key)[C], int keep) {
  static_assert(C >= 1 && C <= 32, "a group's mask is 32 bits");
  unsigned mask = 0;
  SPARSE_RDA_UNROLL
  for (int i = 0; i < C; ++i) {
    int above = 0;
    SPARSE_RDA_UNROLL
    for (int j = 0; j < C; ++j) above += nm_ranks_above(key[j], j, key[i], i);
    mask |= static_cast<unsigned>(above < keep) << i;
  }
  return mask;
}

// One element of the gRDA step: acc -= lr * grad; w = S_l1(acc).
SPARSE_RDA_HD float grda_element(float grad, float& acc, float lr, float l1, float inv_scale) {
  acc = acc - lr * (grad * inv_scale);
  return soft_threshold(acc, l1);
}

}  // namespace sparse_rda
