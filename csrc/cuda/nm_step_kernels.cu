// CUDA RDA step in N:M granularity (docs/ALGORITHMS.md section 3d), the native counterpart of
// csrc/cpu/nm_step_cpu.cpp: one thread per group of M consecutive weights along a row of a weight viewed as
// [rows, cols] (a row's last group shorter when M does not divide cols). A thread updates its group's elements as
// the element step does (rda_math.h, factor 1; A, B, T, v stored at once), keeps their soft-thresholded values and
// rank keys in registers (arrays of the group's capacity C, the smallest of 4, 8, 16, 32 holding M, indexed by
// constants only), then stores the N largest as w and +0 for the rest. The max pass of the reweighting is the
// element step's (launch_rda_max_A). Groups whose elements are whole aligned packs (M and cols multiples of 4,
// every array aligned) use 16-byte accesses of the fp32 state, 8-byte ones of 16-bit params and grads. The tensors
// travel by value in the kernel arguments (TensorBatch); in the device form the scalars are read in the kernels
// and a set found_inf makes them write nothing.
#include <type_traits>
#include <vector>

#include "device_common.cuh"

namespace sparse_rda {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // groups per thread block, one per thread

struct NmEntry {
  NmTensor t;
  int64_t per_row;  // groups per row
  bool vectorized;  // every group is whole aligned packs of kVec elements
};
using NmBatch = TensorBatch<NmEntry>;

struct NmShape {
  int keep, m;  // N, M
};

// A group: its first element and its length (M, less for a ragged row end).
struct Group {
  int64_t first;
  int length;
};

// Group number `index` (row-major over the tensor's groups).
__device__ __forceinline__ Group group_of(const NmEntry& e, int64_t index, int m) {
  const int64_t row = index / e.per_row, col = (index - row * e.per_row) * m;
  return {row * e.t.cols + col, static_cast<int>(min(static_cast<int64_t>(m), e.t.cols - col))};
}

// The element update of a group's elements in N-element packs (N = kVec: whole aligned packs; N = 1: element by
// element), A, B, T and v stored pack by pack: each present element's soft-thresholded value into ws, its rank key
// into key (absent slots keep theirs).
template <int C, int N, typename param_t, typename grad_t>
__device__ __forceinline__ void update_group(const NmTensor& t, const Group& group, const RdaScalars& s, bool reweight,
                                             float max_A, float (&ws)[C], float (&key)[C]) {
  const auto* __restrict__ w = static_cast<const param_t*>(t.w);
  const auto* __restrict__ g = static_cast<const grad_t*>(t.g);
#pragma unroll
  for (int p = 0; p < C / N; ++p) {
    if (p * N < group.length) {  // N divides the length when N > 1
      const int64_t i = group.first + p * N;
      const Pack<param_t, N> wp = load_pack<param_t, N>(w, i);
      const Pack<grad_t, N> gp = load_pack<grad_t, N>(g, i);
      Pack<float, N> Tp = load_pack<float, N>(t.T, i), vp = load_pack<float, N>(t.v, i);
      Pack<float, N> Ap = load_pack<float, N>(t.A, i), Bp = load_pack<float, N>(t.B, i);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float wi = to_float(wp.x[k]);
        Ap.x[k] = new_A(Ap.x[k], fabsf(wi), s);
        const float om_factor = reweight ? reweight_factor(Ap.x[k], max_A, s.max_factor) : 1.0f;
        ws[p * N + k] = rda_element(wi, to_float(gp.x[k]), om_factor, Bp.x[k], Tp.x[k], vp.x[k], s);
        key[p * N + k] = nm_key(ws[p * N + k]);
      }
      store_pack<float, N>(t.A, i, Ap);
      store_pack<float, N>(t.B, i, Bp);
      store_pack<float, N>(t.T, i, Tp);
      store_pack<float, N>(t.v, i, vp);
    }
  }
}

// A group's weights in N-element packs: ws where the mask keeps it, +0 elsewhere; returns the nonzeros as stored.
template <int C, int N, typename param_t>
__device__ __forceinline__ unsigned store_group(param_t* __restrict__ w, const Group& group, const float (&ws)[C],
                                                unsigned mask) {
  unsigned count = 0;
#pragma unroll
  for (int p = 0; p < C / N; ++p) {
    if (p * N < group.length) {
      Pack<param_t, N> wp;
#pragma unroll
      for (int k = 0; k < N; ++k) wp.x[k] = from_float<param_t>((mask >> (p * N + k)) & 1u ? ws[p * N + k] : 0.0f);
      store_pack<param_t, N>(w, group.first + p * N, wp);
      count += nonzeros(wp);
    }
  }
  return count;
}

// One group's step: the element update, then w: the `keep` largest ws by rank key, +0 for the rest (the ranking
// is shared by both pack widths: at C = 32 it is most of the code). Returns the group's nonzero count as stored.
template <int C, typename param_t, typename grad_t>
__device__ __forceinline__ unsigned step_group(const NmEntry& e, const Group& group, int keep, const RdaScalars& s,
                                               bool reweight, float max_A) {
  float ws[C], key[C];
#pragma unroll
  for (int k = 0; k < C; ++k) {
    ws[k] = 0.0f;
    key[k] = kNmAbsent;
  }
  if (e.vectorized) {
    update_group<C, kVec, param_t, grad_t>(e.t, group, s, reweight, max_A, ws, key);
  } else {
    update_group<C, 1, param_t, grad_t>(e.t, group, s, reweight, max_A, ws, key);
  }
  const unsigned mask = nm_keep_mask(key, keep);
  auto* w = static_cast<param_t*>(e.t.w);
  return e.vectorized ? store_group<C, kVec>(w, group, ws, mask) : store_group<C, 1>(w, group, ws, mask);
}

// The nonzeros of a group's weights as they are (a skipped step).
template <int C, int N, typename param_t>
__device__ __forceinline__ unsigned group_nonzeros(const param_t* __restrict__ w, const Group& group) {
  unsigned count = 0;
#pragma unroll
  for (int p = 0; p < C / N; ++p) {
    if (p * N < group.length) count += nonzeros(load_pack<param_t, N>(w, group.first + p * N));
  }
  return count;
}

// Resident blocks of kThreads per SM asked of ptxas: registers <= 64 for C <= 8, 85 for 16 and 128 for 32 (a
// group's values and keys take 2 C). Unbounded, ptxas picked 48 for fp32 at C = 4 and spilled a register.
constexpr int min_blocks(int C) { return C <= 8 ? 4 : C <= 16 ? 3 : 2; }

template <typename param_t, typename grad_t, int C>
__global__ void __launch_bounds__(kThreads, min_blocks(C))
    nm_step_kernel(const NmBatch b, NmShape shape, RdaScalars host, DeviceScalars d, const float* inv_scale,
                   bool reweight, const float* max_A, unsigned long long* nnz) {
  int64_t block;
  const int k = b.locate(block);
  const NmEntry& e = b.tensors[k];
  Resolved r = resolve(host, d);
  if (inv_scale != nullptr) r.s.grad_factor *= *inv_scale;  // host grad_factor is +-1 here
  const float m = reweight ? max_A[k] : 0.0f;
  const int64_t index = block * kThreads + threadIdx.x;
  unsigned count = 0;
  if (index < e.t.rows * e.per_row) {  // the last block's spare threads still join the reduction
    const Group group = group_of(e, index, shape.m);
    const bool vectorized = e.vectorized;  // block-uniform, as the skip flag
    if (r.skip) {  // GradScaler found infs: write nothing, count what is there
      const auto* w = static_cast<const param_t*>(e.t.w);
      count = vectorized ? group_nonzeros<C, kVec>(w, group) : group_nonzeros<C, 1>(w, group);
    } else {
      count = step_group<C, param_t, grad_t>(e, group, shape.keep, r.s, reweight, m);
    }
  }
  count = block_all_reduce(count, AddOp{});  // <= the block's elements: fits 32 bits
  if (threadIdx.x == 0) atomicAdd(nnz + k, static_cast<unsigned long long>(count));
}

bool aligned(const void* p, size_t element_size) { return reinterpret_cast<uintptr_t>(p) % (kVec * element_size) == 0; }

// Calls f with the group capacity for m as an integral constant: the smallest of 4, 8, 16, 32 holding m.
template <typename F>
cudaError_t with_capacity(int m, F&& f) {
  if (m <= 4) return f(std::integral_constant<int, 4>{});
  if (m <= 8) return f(std::integral_constant<int, 8>{});
  if (m <= 16) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, kMaxNmGroup>{});
}

}  // namespace

cudaError_t launch_rda_nm_step(const NmTensor* tensors, int64_t n, int keep, int group, DType w_dtype,
                               bool grad_is_float32, RdaScalars s, DeviceScalars d, const float* inv_scale,
                               bool reweight, const float* max_A, unsigned long long* nnz, cudaStream_t stream) {
  if (keep < 1 || keep >= group || group > kMaxNmGroup) return cudaErrorInvalidValue;
  const size_t w_size = w_dtype == DType::kFloat32 ? 4 : 2;
  const size_t g_size = grad_is_float32 ? 4 : w_size;
  std::vector<NmEntry> entries;
  entries.reserve(n);
  for (int64_t k = 0; k < n; ++k) {
    const NmTensor& t = tensors[k];
    // M and cols multiples of kVec: every group starts on a pack and is whole packs
    const bool vectorized = group % kVec == 0 && t.cols % kVec == 0 && aligned(t.w, w_size) && aligned(t.g, g_size) &&
                            aligned(t.T, 4) && aligned(t.B, 4) && aligned(t.A, 4) && aligned(t.v, 4);
    entries.push_back({t, (t.cols + group - 1) / group, vectorized});
  }
  const auto blocks_of = [](const NmEntry& e) { return (e.t.rows * e.per_row + kThreads - 1) / kThreads; };
  const NmShape shape{keep, group};
  return with_param_type(w_dtype, [&](auto param) {
    using param_t = decltype(param);
    return with_capacity(group, [&](auto capacity) {
      constexpr int C = decltype(capacity)::value;
      return for_each_batch(entries.data(), n, blocks_of, [&](const NmBatch& b, int64_t begin, unsigned grid) {
        if (grad_is_float32) {
          nm_step_kernel<param_t, float, C><<<grid, kThreads, 0, stream>>>(b, shape, s, d, inv_scale, reweight,
                                                                           max_A + begin, nnz + begin);
        } else {
          nm_step_kernel<param_t, param_t, C><<<grid, kThreads, 0, stream>>>(b, shape, s, d, inv_scale, reweight,
                                                                             max_A + begin, nnz + begin);
        }
        return cudaGetLastError();
      });
    });
  });
}

}  // namespace cuda
}  // namespace sparse_rda
