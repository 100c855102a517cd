// Hand-computed cases of the shared per-element math (csrc/rda_math.h), the same worked examples as
// tests/test_hand_computed.py. Run by ctest.
#include <cmath>
#include <cstdio>

#include "../rda_math.h"

using namespace sparse_rda;

static int failures = 0, checks = 0;

static void expect_near(const char* what, double actual, double expected, double tol = 1e-6) {
  ++checks;
  if (!(std::fabs(actual - expected) <= tol * std::fmax(1.0, std::fabs(expected)))) {
    ++failures;
    std::printf("FAIL %s: got %.9g, expected %.9g\n", what, actual, expected);
  }
}

static void expect_nan(const char* what, double actual) {
  ++checks;
  if (!std::isnan(actual)) {
    ++failures;
    std::printf("FAIL %s: got %.9g, expected NaN\n", what, actual);
  }
}

static void soft_threshold_cases() {
  expect_near("S(-3, 1)", soft_threshold(-3.0f, 1.0f), -2.0);
  expect_near("S(-1, 1)", soft_threshold(-1.0f, 1.0f), 0.0);
  expect_near("S(0.5, 1)", soft_threshold(0.5f, 1.0f), 0.0);
  expect_near("S(2, 1)", soft_threshold(2.0f, 1.0f), 1.0);
  expect_near("S(x, 0) = x", soft_threshold(-0.25f, 0.0f), -0.25);
  ++checks;
  if (!std::isnan(soft_threshold(NAN, 1.0f))) {
    ++failures;
    std::printf("FAIL S(NaN, 1) is not NaN\n");
  }
}

static void reweight_cases() {
  expect_near("om(A = 0)", reweight_factor(0.0f, 4.0f, 5.0f), 5.0);
  expect_near("om(A = 1)", reweight_factor(1.0f, 4.0f, 5.0f), 2.5);
  expect_near("om(A = max)", reweight_factor(4.0f, 4.0f, 5.0f), 1.0);
  expect_near("om(max A = 0) = M", reweight_factor(0.0f, 0.0f, 500.0f), 500.0);
}

// docs/ALGORITHMS.md "Non-finite values": max A over finite values, om = 0 where A is not finite, a tile of
// non-finite norm not shrunk, a NaN threshold kept.
static void nonfinite_cases() {
  expect_near("finite_or_zero(NaN)", finite_or_zero(NAN), 0.0);
  expect_near("finite_or_zero(inf)", finite_or_zero(INFINITY), 0.0);
  expect_near("finite_or_zero(FLT_MAX)", finite_or_zero(FLT_MAX), FLT_MAX);
  expect_near("om(A = NaN)", reweight_factor(NAN, 4.0f, 5.0f), 0.0);
  expect_near("om(A = inf)", reweight_factor(INFINITY, 4.0f, 5.0f), 0.0);
  expect_near("shrink of a NaN tile", group_shrink(NAN, 0.5f, 2.0f), 1.0);
  expect_near("shrink of an inf tile", group_shrink(INFINITY, 0.5f, 2.0f), 1.0);
  expect_nan("shrink with a NaN threshold", group_shrink(5.0f, NAN, 2.0f));
  expect_near("shrink of a zero tile, NaN threshold", group_shrink(0.0f, NAN, 2.0f), 0.0);
  expect_nan("S(1, NaN)", soft_threshold(1.0f, NAN));
}

static void group_shrink_cases() {
  // a 2x2 tile of norm 5, threshold .5: 1 - .5 * 2 / 5 = .8 (tests/test_block_rda.py's worked example)
  expect_near("shrink(5, .5, 2)", group_shrink(5.0f, 0.5f, 2.0f), 0.8);
  expect_near("shrink below the threshold", group_shrink(0.5f, 0.5f, 2.0f), 0.0);
  expect_near("shrink at the threshold", group_shrink(1.0f, 0.5f, 2.0f), 0.0);
  expect_near("shrink of a zero tile", group_shrink(0.0f, 0.0f, 2.0f), 0.0);
  expect_near("shrink without a threshold", group_shrink(3.0f, 0.0f, 2.0f), 1.0);
}

// lr 0.5, no momentum, A = |w| (beta_b = 0), M = 5, alpha = 0.5, lam = 0.4; w0 = [2, -1, .5, 0].
static void rda_two_steps() {
  float w[4] = {2.0f, -1.0f, 0.5f, 0.0f};
  float T[4], B[4] = {0, 0, 0, 0}, A[4] = {0, 0, 0, 0}, v[4] = {0, 0, 0, 0};
  for (int i = 0; i < 4; ++i) T[i] = w[i];
  const double hyper[kHyperSize] = {0.5, 0.4, 0.0, 0.0, 0.5, 0.0, 5.0};  // lr, lam, beta, beta_b, alpha, wd, M
  const RdaScalars s = make_rda_scalars(hyper, 1.0f, false);
  const float grads[2][4] = {{1.0f, 1.0f, -1.0f, 0.5f}, {0.2f, -0.4f, 0.0f, 1.0f}};
  for (int step = 0; step < 2; ++step) {
    float A_next[4], max_A = 0.0f;
    for (int i = 0; i < 4; ++i) max_A = std::fmax(max_A, A_next[i] = new_A(A[i], std::fabs(w[i]), s));
    for (int i = 0; i < 4; ++i) {
      A[i] = A_next[i];
      w[i] = rda_element(w[i], grads[step][i], reweight_factor(A_next[i], max_A, s.max_factor), B[i], T[i], v[i], s);
    }
    if (step == 0) {  // B = .5 om = [.5, 5/6, 1.25, 2.5]; T = [1.5, -1.5, 1, -.25]; w1 = [1.3, -7/6, .5, 0]
      const double B1[4] = {0.5, 5.0 / 6, 1.25, 2.5}, T1[4] = {1.5, -1.5, 1.0, -0.25}, w1[4] = {1.3, -7.0 / 6, 0.5, 0.0};
      for (int i = 0; i < 4; ++i) {
        expect_near("step 1 B", B[i], B1[i]);
        expect_near("step 1 T", T[i], T1[i]);
        expect_near("step 1 w", w[i], w1[i]);
      }
    }
  }
  // step 2: om_i = 5 / (1 + 4 |w1_i| / 1.3); B = .5 B1 + .5 om; T = .5 T1 + .5 w1 - .5 g2; w = S_{.4 B}(T)
  const double w1[4] = {1.3, -7.0 / 6, 0.5, 0.0}, B1[4] = {0.5, 5.0 / 6, 1.25, 2.5}, T1[4] = {1.5, -1.5, 1.0, -0.25};
  for (int i = 0; i < 4; ++i) {
    const double om = 5.0 / (1.0 + 4.0 * std::fabs(w1[i]) / 1.3);
    const double B2 = 0.5 * B1[i] + 0.5 * om;
    const double T2 = 0.5 * T1[i] + 0.5 * w1[i] - 0.5 * grads[1][i];
    const double w2 = std::copysign(std::fmax(std::fabs(T2) - 0.4 * B2, 0.0), T2);
    expect_near("step 2 B", B[i], B2);
    expect_near("step 2 T", T[i], T2);
    expect_near("step 2 w", w[i], w2);
  }
}

// beta = 1/2 exactly, alpha = 0, lam = 0, wd = .1: momentum SGD on T.
static void momentum_and_weight_decay() {
  float w = 1.0f, T = 1.0f, B = 0.0f, v = 0.0f;
  const double hyper[kHyperSize] = {0.25, 0.0, 0.5, 0.0, 0.0, 0.1, 500.0};
  const RdaScalars s = make_rda_scalars(hyper, 1.0f, false);
  w = rda_element(w, 0.5f, 1.0f, B, T, v, s);  // g = .6, v = .3, w = 1 - .075
  expect_near("momentum v1", v, 0.3);
  expect_near("momentum w1", w, 0.925);
  w = rda_element(w, 0.0f, 1.0f, B, T, v, s);  // g = .0925, v = .19625, w = .925 - .0490625
  expect_near("momentum v2", v, 0.19625);
  expect_near("momentum w2", w, 0.925 - 0.0490625);
  // maximize: the gradient's sign flips (and a GradScaler's 1/scale multiplies it)
  float w3 = 1.0f, T3 = 1.0f, B3 = 0.0f, v3 = 0.0f;
  const double up_hyper[kHyperSize] = {0.25, 0.0, 0.5, 0.0, 0.0, 0.0, 500.0};
  const RdaScalars up = make_rda_scalars(up_hyper, 0.5f, true);
  w3 = rda_element(w3, 1.0f, 1.0f, B3, T3, v3, up);  // g = -.5, v = -.25, w = 1 + .0625
  expect_near("maximize w", w3, 1.0625);
}

// hyper's order, and the device form's values replacing lr, averaging, the decays (with their 1 - x) and lam.
static void scalars_from_hyper() {
  const double hyper[kHyperSize] = {0.5, 0.4, 0.25, 0.75, 0.125, 0.01, 5.0};
  const RdaScalars s = make_rda_scalars(hyper, 0.5f, true);
  expect_near("lr", s.lr, 0.5);
  expect_near("lam", s.lam, 0.4);
  expect_near("beta", s.beta, 0.25);
  expect_near("1 - beta", s.one_minus_beta, 0.75);
  expect_near("beta_b", s.beta_b, 0.75);
  expect_near("1 - beta_b", s.one_minus_beta_b, 0.25);
  expect_near("alpha", s.alpha, 0.125);
  expect_near("1 - alpha", s.one_minus_alpha, 0.875);
  expect_near("weight_decay", s.weight_decay, 0.01);
  expect_near("max_factor", s.max_factor, 5.0);
  expect_near("grad_factor, maximize", s.grad_factor, -0.5);
  // lr, averaging, beta, beta_b, lam and the 1 - x values as given (not recomputed: the caller rounds them once)
  const float device_hyper[kDeviceHyperSize] = {0.25f, 0.5f, 0.0f, 0.5f, 0.125f, 0.5f, 1.0f, 0.5f};
  const RdaScalars d = with_device_hyper(s, device_hyper);
  expect_near("device lr", d.lr, 0.25);
  expect_near("device alpha", d.alpha, 0.5);
  expect_near("device 1 - alpha", d.one_minus_alpha, 0.5);
  expect_near("device beta (none)", d.beta, 0.0);
  expect_near("device 1 - beta", d.one_minus_beta, 1.0);
  expect_near("device beta_b", d.beta_b, 0.5);
  expect_near("device 1 - beta_b", d.one_minus_beta_b, 0.5);
  expect_near("device lam", d.lam, 0.125);
  expect_near("device keeps weight_decay", d.weight_decay, 0.01);
  expect_near("device keeps max_factor", d.max_factor, 5.0);
  expect_near("device keeps grad_factor", d.grad_factor, -0.5);
}

// mu = 1, c = .1: l1 = .0008 after lr .04; acc = 1 - .04 = .96, w = .9592.
static void grda_step() {
  float acc = 1.0f;
  expect_near("grda w1", grda_element(1.0f, acc, 0.04f, 0.0008f, 1.0f), 0.9592);
  expect_near("grda acc1", acc, 0.96);
  expect_near("grda unscale", grda_element(2048.0f, acc, 0.01f, 0.0009f, 1.0f / 1024), 0.96 - 0.02 - 0.0009);
}

static void expect_mask(const char* what, unsigned actual, unsigned expected) {
  ++checks;
  if (actual != expected) {
    ++failures;
    std::printf("FAIL %s: got mask 0x%x, expected 0x%x\n", what, actual, expected);
  }
}

// N:M mode's selection: the `keep` largest |w| of a group, ties to the lower index, NaN first, absent slots never.
static void nm_selection_cases() {
  expect_near("key(-2)", nm_key(-2.0f), 2.0);
  expect_near("key(-0)", nm_key(-0.0f), 0.0);
  ++checks;
  if (!(nm_key(NAN) == INFINITY)) {
    ++failures;
    std::printf("FAIL key(NaN) is not +inf\n");
  }
  const float ties[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  expect_mask("2:4 of equals: the lowest two", nm_keep_mask(ties, 2), 0x3u);
  expect_mask("1:4 of equals", nm_keep_mask(ties, 1), 0x1u);
  const float mixed[4] = {0.5f, 3.0f, 0.5f, 2.0f};
  expect_mask("2:4 largest", nm_keep_mask(mixed, 2), 0xau);
  expect_mask("3:4, tie to the lower index", nm_keep_mask(mixed, 3), 0xbu);
  const float nan_first[4] = {nm_key(5.0f), nm_key(-NAN), nm_key(INFINITY), nm_key(0.0f)};
  expect_mask("1:4 NaN first", nm_keep_mask(nan_first, 1), 0x2u);
  expect_mask("2:4 NaN, then inf (tie to the lower index)", nm_keep_mask(nan_first, 2), 0x6u);
  const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  expect_mask("2:4 of zeros: the lowest two", nm_keep_mask(zeros, 2), 0x3u);
  // a ragged group of 2 in a capacity of 4: both present slots kept, even zeros, the absent ones ranked last
  const float ragged[4] = {0.0f, 0.0f, kNmAbsent, kNmAbsent};
  expect_mask("2:4, 2 present", nm_keep_mask(ragged, 2) & 0x3u, 0x3u);
  expect_mask("1:4, 2 present", nm_keep_mask(ragged, 1) & 0x3u, 0x1u);
  float wide[32];
  for (int k = 0; k < 32; ++k) wide[k] = static_cast<float>(k % 8);  // 7 at slots 7, 15, 23, 31
  expect_mask("3:32", nm_keep_mask(wide, 3), (1u << 7) | (1u << 15) | (1u << 23));
  expect_mask("31:32: all but the last of the four zeros", nm_keep_mask(wide, 31), ~(1u << 24));
}

int main() {
  soft_threshold_cases();
  reweight_cases();
  group_shrink_cases();
  nonfinite_cases();
  rda_two_steps();
  momentum_and_weight_decay();
  scalars_from_hyper();
  grda_step();
  nm_selection_cases();
  std::printf("%d passed, %d failed\n", checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
