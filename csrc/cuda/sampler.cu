// The sampler chain on the device (core/sampler.h is the reference): one
// block of 1024 threads a row draws the row's next token where its logits
// are, so a sampled step downloads one id.
//
// penalties / logit bias / end-token mask (sparse changes the host lists)
// -> top-k -> typical-p -> top-p -> min-p -> temperature -> draw
//
// Every filter keeps the tokens whose (changed) logit passes a threshold:
// the k largest (the k-th largest value), those closest to the entropy up
// to typical_p of the mass (a distance), the most likely up to top_p of the
// mass (a value), those at least min_p times as likely as the best. Each
// threshold is found by bisection over the 32-bit order of floats, a block
// reduction an iteration, so the candidates are never sorted; tokens tied
// with a threshold stay together (the CPU chain keeps an arbitrary subset of
// an exact tie, which only a discrete tie can tell apart). The draw takes the
// host's uniform number (the sampler's own random stream, as on the CPU)
// and walks the candidates in index order.
#include <cfloat>
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.h"

namespace llmrt::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarpsPerBlock = kThreads / 32;

// floats -> unsigned integers of the same order (no NaN)
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// block-wide reductions (every thread gets the result); scratch: 32 slots
template <class T, class Op>
__device__ T block_reduce(T v, T* scratch, Op op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < kWarpsPerBlock; ++w) v = op(v, scratch[w]);
  return v;
}

struct Sum {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The candidate set: tokens whose logit l passes l >= lo and |l - c| <= d.
struct Cands {
  float lo = -INFINITY, c = 0.f, d = INFINITY;
  __device__ bool in(float l) const { return l >= lo && fabsf(l - c) <= d && l > -INFINITY; }
};

// One block's row of working logits and its reduction scratch (shared).
struct Row {
  float* w;
  int V;
  float* fs;
  double* ds;
  int* is;

  // mass of the candidates under temperature 1 (sum of e^(l - top)), and in
  // s1 the sum of e^(l - top) (l - top)
  __device__ double mass(const Cands& c, float top, double* s1) const {
    float s0 = 0.f, t1 = 0.f;  // a thread's few dozen terms in float, the block's in double
    for (int i = threadIdx.x; i < V; i += kThreads) {
      const float l = w[i];
      if (!c.in(l)) continue;
      const float e = expf(l - top);
      s0 += e;
      t1 += e > 0.f ? e * (l - top) : 0.f;  // 0, not 0 * -inf
    }
    const double total = block_reduce((double)s0, ds, Sum());
    if (s1) *s1 = block_reduce((double)t1, ds, Sum());
    return total;
  }
  __device__ float max_of(const Cands& c) const {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += kThreads)
      if (c.in(w[i])) m = fmaxf(m, w[i]);
    return block_reduce(m, fs, Max());
  }
};

// Penalties (one entry per distinct token in the window), then bias, then
// the end tokens' mask, in the CPU chain's order.
__device__ void apply_mods(const Row& r, const DeviceDraw& q, const LogitMod* __restrict__ mods) {
  for (int kind = 0; kind < 3; ++kind) {
    for (int m = q.mods_begin + threadIdx.x; m < q.mods_end; m += kThreads) {
      const LogitMod md = mods[m];
      if (md.kind != kind || md.token < 0 || md.token >= r.V) continue;
      float& l = r.w[md.token];
      if (kind == 0) {
        if (q.repetition_penalty != 1.f)
          l = l > 0.f ? l / q.repetition_penalty : l * q.repetition_penalty;
        l -= q.presence_penalty + q.frequency_penalty * md.value;
      } else if (kind == 1) {
        l += md.value;
      } else {
        l = -INFINITY;
      }
    }
    __syncthreads();
  }
}

// The first index of the largest logit mx.
__device__ int first_argmax(const Row& r, float mx) {
  int first = 0x7fffffff;
  for (int i = threadIdx.x; i < r.V; i += kThreads)
    if (r.w[i] == mx) {
      first = i;
      break;
    }
  return block_reduce(first, r.is, [](int a, int b) { return min(a, b); });
}

// top-k: the k-th largest value, the largest key with >= k tokens at or above it
__device__ float top_k_threshold(const Row& r, int k, float mx) {
  // count(>= key_float(lo)) = every token (lo: -inf); count(>= mx) >= 1
  uint32_t lo = order_key(-INFINITY), hi = order_key(mx);
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    const float t = key_float(mid);
    int n = 0;
    for (int i = threadIdx.x; i < r.V; i += kThreads) n += r.w[i] >= t ? 1 : 0;
    n = block_reduce(n, r.is, Sum());
    if (n >= k) lo = mid;
    else hi = mid - 1;
  }
  return key_float(lo);
}

// typical-p: the tokens whose surprise is closest to the entropy, up to
// typical_p of the mass; -log p - H = center - l with center = top + s1 / s0
__device__ Cands typical_p_filter(const Row& r, const Cands& C, float top, float typical_p) {
  double s1 = 0.0;
  const double z = r.mass(C, top, &s1);
  Cands T = C;
  T.c = top + (float)(s1 / z);
  const double need = (double)typical_p * z;
  uint32_t lo = 0, hi = __float_as_uint(INFINITY);  // distances >= 0: key order = bit order
  while (lo < hi) {  // the smallest distance d with mass(|l - center| <= d) >= need
    const uint32_t mid = lo + (hi - lo) / 2;
    T.d = __uint_as_float(mid);
    if (r.mass(T, top, nullptr) >= need) hi = mid;
    else lo = mid + 1;
  }
  T.d = __uint_as_float(lo);
  return T;
}

// top-p: the largest threshold keeping top_p of the candidates' mass
__device__ float top_p_threshold(const Row& r, const Cands& C, float top, float top_p) {
  const double need = (double)top_p * r.mass(C, top, nullptr);
  uint32_t lo = order_key(-FLT_MAX), hi = order_key(top);
  Cands T = C;
  while (lo < hi) {  // the largest threshold with mass(l >= t) >= need
    const uint32_t mid = lo + (hi - lo + 1) / 2;
    T.lo = fmaxf(C.lo, key_float(mid));
    if (r.mass(T, top, nullptr) >= need) lo = mid;
    else hi = mid - 1;
  }
  return fmaxf(C.lo, key_float(lo));
}

// Temperature, then the draw: the candidates' weights exp((l - top) / T) in
// index order, each thread a contiguous range; u in [0, 1) picks the token.
__device__ int draw_candidate(const Row& r, const Cands& C, float top, float temperature,
                              double u, int32_t& pick) {
  const float* w = r.w;
  const int V = r.V;
  const float inv_t = 1.f / temperature;
  const int per = (V + kThreads - 1) / kThreads;
  const int b = threadIdx.x * per, e = min(V, b + per);
  double part = 0.0;
  for (int i = b; i < e; ++i)
    if (C.in(w[i])) part += exp((double)((w[i] - top) * inv_t));
  // exclusive prefix of the threads' sums (warp scans, then over the warps)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double incl = part;
  for (int o = 1; o < 32; o <<= 1) {
    const double v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  __syncthreads();
  if (lane == 31) r.ds[warp] = incl;
  if (threadIdx.x == 0) pick = -1;
  __syncthreads();
  double before = 0.0, total = 0.0;
  for (int k = 0; k < kWarpsPerBlock; ++k) {
    if (k < warp) before += r.ds[k];
    total += r.ds[k];
  }
  before += incl - part;
  const double target = u * total;
  if (target >= before && target < before + part) {
    double cum = before;
    for (int i = b; i < e; ++i) {
      if (!C.in(w[i])) continue;
      cum += exp((double)((w[i] - top) * inv_t));
      if (target < cum) {
        pick = i;
        break;
      }
    }
  }
  __syncthreads();
  if (pick < 0) {  // rounding at the top end: the last candidate with any weight
    int last = -1;
    for (int i = threadIdx.x; i < V; i += kThreads)
      if (C.in(w[i]) && exp((double)((w[i] - top) * inv_t)) > 0.0) last = max(last, i);
    last = block_reduce(last, r.is, [](int x, int y) { return max(x, y); });
    if (threadIdx.x == 0) pick = last;
    __syncthreads();
  }
  return pick;
}

__global__ void __launch_bounds__(kThreads)
sample_kernel(const float* __restrict__ logits, int V, const DeviceDraw* __restrict__ draws,
              const LogitMod* __restrict__ mods, float* __restrict__ work,
              int32_t* __restrict__ out) {
  __shared__ float fs[32];
  __shared__ double ds[32];
  __shared__ int is[32];
  __shared__ int32_t pick;
  const DeviceDraw q = draws[blockIdx.x];
  const float* src = logits + (size_t)q.row * V;
  const Row r{work + (size_t)blockIdx.x * V, V, fs, ds, is};
  for (int i = threadIdx.x; i < V; i += kThreads) r.w[i] = src[i];
  __syncthreads();
  apply_mods(r, q, mods);

  // the largest logit (and, for greedy, its first index)
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += kThreads) mx = fmaxf(mx, r.w[i]);
  mx = block_reduce(mx, fs, Max());
  if (!(mx > -INFINITY)) {  // every token masked, or NaN logits
    if (threadIdx.x == 0) out[blockIdx.x] = -1;
    return;
  }
  if (q.temperature == 0.f || q.top_k == 1) {
    const int first = first_argmax(r, mx);
    if (threadIdx.x == 0) out[blockIdx.x] = first;
    return;
  }

  Cands C;
  const bool any_filter = (q.top_k > 0 && q.top_k < V) || q.typical_p < 1.f || q.top_p < 1.f ||
                          q.min_p > 0.f;
  if (q.top_k > 0 && q.top_k < V) C.lo = top_k_threshold(r, q.top_k, mx);
  float top = mx;  // the largest candidate (always kept by top-k and top-p)
  if (q.typical_p < 1.f) {
    C = typical_p_filter(r, C, top, q.typical_p);
    top = r.max_of(C);
  }
  if (q.top_p < 1.f) C.lo = top_p_threshold(r, C, top, q.top_p);
  // min-p: at least min_p times as likely as the best candidate
  if (q.min_p > 0.f) C.lo = fmaxf(C.lo, top + logf(q.min_p));
  if (!any_filter) C = Cands{};
  const int chosen = draw_candidate(r, C, top, q.temperature, q.u, pick);
  if (threadIdx.x == 0) out[blockIdx.x] = chosen;
}

}  // namespace

void sample(const float* logits, int V, const DeviceDraw* draws, int n, const LogitMod* mods,
            float* work, int32_t* out, cudaStream_t stream) {
  sample_kernel<<<n, kThreads, 0, stream>>>(logits, V, draws, mods, work, out);
  LLMRT_CUDA_LAUNCHED("sample");
}

}  // namespace llmrt::cuda
