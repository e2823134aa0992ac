// Fused causal, packed-document attention for XLA:CPU, called through the XLA FFI
// (latentlm_jax/kernels/cpu_attention.py builds and registers it; docs/attention.md).
//
// Why: on XLA:CPU the attention of a training step is a chain of small batched matmuls, layout
// transposes, a softmax and masks, each a pass over memory; at 8 layers × 512 on a 2-core CPU it
// took 18% of the text-only step for 5% of its FLOPs (docs/benchmarks.md, profile finding 22).
// Here one call does a whole (example, head): its keys, values and a block of score rows stay in
// the core's L2 cache, the causal upper triangle is skipped, and q, k, v, o are read and written
// in the model's own [B, L, heads, D] layout, so no transposes.
//
// Maths (float32 throughout): s = q·kᵀ·scale, masked where key j is after query i or in another
// document (segment ids; segment 0 is padding and sees nothing); p = softmax(s); o = p·v; the
// forward also returns lse = log Σ exp(s) per row (1e30 for a row that sees nothing, so that
// exp(s − lse) = 0 in the backward). Backward, from the saved o and lse: p = exp(s − lse),
// dp = do·vᵀ, δ = rowsum(do ⊙ o), ds = p ⊙ (dp − δ) · scale, dq = ds·k, dk = dsᵀ·q, dv = pᵀ·do.
//
// Work is split over (example, head) items (forward) and (example, KV head) items (backward:
// the query heads sharing a KV head add into the same dk, dv), run by the calling thread and by
// helpers on XLA's intra-op thread pool, which take items from a shared counter.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * 4)));
typedef int32_t vi __attribute__((vector_size(kLanes * 4)));
typedef float vf_unaligned __attribute__((vector_size(kLanes * 4), aligned(4)));
typedef int32_t vi_unaligned __attribute__((vector_size(kLanes * 4), aligned(4)));

constexpr float kNeg = -1e30f;        // masked score
constexpr float kEmptyLse = 1e30f;    // lse of a row that sees no key: exp(s − lse) = 0
constexpr int64_t kRowBlock = 64;     // query rows per block

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }
inline vi load_i(const int32_t* p) { return *reinterpret_cast<const vi_unaligned*>(p); }
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vi splat_i(int32_t x) { return vi{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vi iota(int32_t x) {
  return vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + x;
}
inline float hsum(vf v) {
  float t = 0.0f;
  for (int l = 0; l < kLanes; ++l) t += v[l];
  return t;
}
inline float hmax(vf v) {
  float t = v[0];
  for (int l = 1; l < kLanes; ++l) t = std::max(t, v[l]);
  return t;
}

// exp(x) for x ≤ 0 (scores minus their row max or lse), vectorised: 2^(x·log2 e) = 2^n · 2^f
// with n = floor(t + 1/2), |f| ≤ 1/2, 2^f by its degree-6 Taylor polynomial (relative error
// ~1e-7). x is clamped at −87 (e^−87 ≈ 1.6e−38, the smallest normal float's order); the callers
// select 0 for masked entries.
inline vf exp_neg(vf x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const vf t = x * 1.44269504088896341f + splat(0.5f);
  vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf);  // toward zero
  n = n > t ? n - splat(1.0f) : n;                                      // floor(t)
  const vf f = t - splat(0.5f) - n;
  vf p = splat(1.5403530e-4f);
  p = p * f + splat(1.3333558e-3f);
  p = p * f + splat(9.6181291e-3f);
  p = p * f + splat(5.5504109e-2f);
  p = p * f + splat(2.4022651e-1f);
  p = p * f + splat(6.9314718e-1f);
  p = p * f + splat(1.0f);
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// One register tile of C (R rows × NV vectors) += A(R rows, k) · B(k, NV vectors). A(i, p) is
// a[i·lda + p], or a[p·lda + i] when kTransA (then a points at column i0's first element).
template <bool kAccumulate, bool kTransA, int R, int NV>
inline void tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc) {
  vf acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = kAccumulate ? load(c + r * ldc + v * kLanes) : splat(0.0f);
  for (int64_t p = 0; p < k; ++p) {
    vf bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(b + p * ldb + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const vf x = splat(kTransA ? a[p * lda + r] : a[r * lda + p]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(c + r * ldc + v * kLanes, acc[r][v]);
}

// The tiles of rows [i, i + R) across all n columns: 4-vector tiles, then 2, 1, then scalars.
template <bool kAccumulate, bool kTransA, int R>
inline void row_tiles(int64_t i, int64_t n, int64_t k, const float* a, int64_t lda,
                      const float* b, int64_t ldb, float* c, int64_t ldc) {
  const float* ai = kTransA ? a + i : a + i * lda;
  float* ci = c + i * ldc;
  int64_t j = 0;
  for (; j + 4 * kLanes <= n; j += 4 * kLanes)
    tile<kAccumulate, kTransA, R, 4>(k, ai, lda, b + j, ldb, ci + j, ldc);
  for (; j + 2 * kLanes <= n; j += 2 * kLanes)
    tile<kAccumulate, kTransA, R, 2>(k, ai, lda, b + j, ldb, ci + j, ldc);
  for (; j + kLanes <= n; j += kLanes)
    tile<kAccumulate, kTransA, R, 1>(k, ai, lda, b + j, ldb, ci + j, ldc);
  for (; j < n; ++j) {
    for (int r = 0; r < R; ++r) {
      float t = kAccumulate ? ci[r * ldc + j] : 0.0f;
      for (int64_t p = 0; p < k; ++p)
        t += (kTransA ? ai[p * lda + r] : ai[r * lda + p]) * b[p * ldb + j];
      ci[r * ldc + j] = t;
    }
  }
}

// C[m, n] (= or +=) A[m, k] · B[k, n]; B and C row-major with row strides ldb, ldc; A row-major
// with row stride lda, or (kTransA) given as Aᵀ [k, m] with row stride lda. Rows go 6 at a time
// (24 accumulators of 16 floats: on AVX-512 +20% over 4 rows for this kernel's shapes, one core),
// then 4, then 1.
template <bool kAccumulate, bool kTransA = false>
void matmul(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
            int64_t ldb, float* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + 6 <= m; i += 6) row_tiles<kAccumulate, kTransA, 6>(i, n, k, a, lda, b, ldb, c, ldc);
  for (; i + 4 <= m; i += 4) row_tiles<kAccumulate, kTransA, 4>(i, n, k, a, lda, b, ldb, c, ldc);
  for (; i < m; ++i) row_tiles<kAccumulate, kTransA, 1>(i, n, k, a, lda, b, ldb, c, ldc);
}

// dst[c, r] = src[r, c] for r < rows, c < cols (src row stride lds, dst row stride ldd).
void transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst,
               int64_t ldd) {
  constexpr int64_t kT = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kT) {
    for (int64_t c0 = 0; c0 < cols; c0 += kT) {
      const int64_t r1 = std::min(rows, r0 + kT), c1 = std::min(cols, c0 + kT);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * ldd + r] = src[r * lds + c];
    }
  }
}

struct Dims {
  int64_t batch, length, heads, kv_heads, dim;
  float scale;
  int64_t group() const { return heads / kv_heads; }
};

// The sizes of q [B, L, H, D] and k, v [B, L, K, D], or false when they are not self-attention
// shapes with H % K == 0 (the Python side checks first; this guards the raw pointers).
bool dims_of(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, float scale,
             Dims& d) {
  const auto qd = q.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || qd[2] % kd[2] != 0 || qd[1] != kd[1]) return false;
  d = Dims{qd[0], qd[1], qd[2], kd[2], qd[3], scale};
  return true;
}
constexpr const char* kShapeError = "cpu attention: q [B, L, H, D], k, v [B, L, K, D]";

// Lanes j .. j+15 of query `row`'s visible keys: j ≤ row and the row's own segment (the caller
// has checked that the row is not padding, segment 0).
inline vi visible(const int32_t* seg, int32_t row_seg, int64_t row, int64_t j) {
  return (load_i(seg + j) == splat_i(row_seg)) & (iota(static_cast<int32_t>(j)) <=
                                                  splat_i(static_cast<int32_t>(row)));
}
inline bool visible1(const int32_t* seg, int32_t row_seg, int64_t row, int64_t j) {
  return seg[j] == row_seg && j <= row;
}

// Runs body(item) for item in [0, items) on the calling thread and on up to (threads − 1)
// helpers from XLA's intra-op pool; returns when every item is done. A helper that starts late
// finds no item left and returns, so the call never waits on a busy pool.
template <typename Body>
void parallel_items(ffi::ThreadPool& pool, int64_t items, const Body& body) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, items, &body]() {
    int64_t finished = 0;
    for (int64_t i; (i = shared->next.fetch_add(1)) < items;) {
      body(i);
      ++finished;
    }
    if (finished && shared->done.fetch_add(finished) + finished == items) {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->cv.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work]() { work(); });
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == items; });
}

// Forward of one (example b, head h).
void forward_item(const Dims& d, const float* q, const float* k, const float* v,
                  const int32_t* seg, float* o, float* lse, int64_t b, int64_t h,
                  std::vector<float>& kt, std::vector<float>& s) {
  const int64_t L = d.length, D = d.dim, kh = h / d.group();
  const int64_t q_ld = d.heads * D, kv_ld = d.kv_heads * D;
  const float* qb = q + b * L * q_ld + h * D;
  const float* kb = k + b * L * kv_ld + kh * D;
  const float* vb = v + b * L * kv_ld + kh * D;
  float* ob = o + b * L * q_ld + h * D;
  float* lb = lse + (b * d.heads + h) * L;
  const int32_t* sb = seg + b * L;
  transpose(L, D, kb, kv_ld, kt.data(), L);  // kᵀ [D, L]
  float inv_sum[kRowBlock];
  for (int64_t r0 = 0; r0 < L; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, L - r0), end = r0 + rows;  // keys [0, end)
    const int64_t lds = end;
    matmul<false>(rows, end, D, qb + r0 * q_ld, q_ld, kt.data(), L, s.data(), lds);
    for (int64_t r = 0; r < rows; ++r) {
      float* srow = s.data() + r * lds;
      const int64_t row = r0 + r;
      const int32_t row_seg = sb[row];
      if (row_seg <= 0) {  // padding: sees nothing, outputs 0
        std::fill(srow, srow + end, 0.0f);
        lb[row] = kEmptyLse;
        inv_sum[r] = 0.0f;
        continue;
      }
      const int64_t vend = end - end % kLanes;
      vf vmax = splat(kNeg);
      for (int64_t j = 0; j < vend; j += kLanes) {
        const vf x = visible(sb, row_seg, row, j) ? load(srow + j) * d.scale : splat(kNeg);
        store(srow + j, x);
        vmax = vmax > x ? vmax : x;
      }
      float mx = hmax(vmax);
      for (int64_t j = vend; j < end; ++j) {
        srow[j] = visible1(sb, row_seg, row, j) ? srow[j] * d.scale : kNeg;
        mx = std::max(mx, srow[j]);
      }
      vf vsum = splat(0.0f);
      for (int64_t j = 0; j < vend; j += kLanes) {
        const vf x = load(srow + j);
        const vf e = x > splat(0.5f * kNeg) ? exp_neg(x - splat(mx)) : splat(0.0f);
        store(srow + j, e);
        vsum += e;
      }
      float sum = hsum(vsum);
      for (int64_t j = vend; j < end; ++j) {
        srow[j] = srow[j] > 0.5f * kNeg ? std::exp(srow[j] - mx) : 0.0f;
        sum += srow[j];
      }
      inv_sum[r] = 1.0f / sum;
      lb[row] = mx + std::log(sum);
    }
    // o = (exp(s − max) · v) / Σ exp(s − max): the division on D columns, not on end of them.
    float* o_rows = ob + r0 * q_ld;
    matmul<false>(rows, D, end, s.data(), lds, vb, kv_ld, o_rows, q_ld);
    const int64_t vd = D - D % kLanes;
    for (int64_t r = 0; r < rows; ++r) {
      float* orow = o_rows + r * q_ld;
      const vf vinv = splat(inv_sum[r]);
      for (int64_t c = 0; c < vd; c += kLanes) store(orow + c, load(orow + c) * vinv);
      for (int64_t c = vd; c < D; ++c) orow[c] *= inv_sum[r];
    }
  }
}

ffi::Error forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg,
                   ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse, float scale) {
  Dims d;
  if (!dims_of(q, k, scale, d)) return ffi::Error::InvalidArgument(kShapeError);
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const int32_t* sp = seg.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  parallel_items(pool, d.batch * d.heads, [&](int64_t item) {
    thread_local std::vector<float> kt, s;
    kt.resize(d.dim * d.length);
    s.resize(kRowBlock * d.length);
    forward_item(d, qp, kp, vp, sp, op, lp, item / d.heads, item % d.heads, kt, s);
  });
  return ffi::Error::Success();
}

struct Scratch {
  std::vector<float> kt, vt, s, dp, dk, dv;
  void size(const Dims& d) {
    const int64_t L = d.length, D = d.dim;
    kt.resize(D * L); vt.resize(D * L);
    s.resize(kRowBlock * L); dp.resize(kRowBlock * L);
    dk.resize(L * D); dv.resize(L * D);
  }
};

// Backward of one (example b, KV head kh): every query head of its group.
void backward_item(const Dims& d, const float* q, const float* k, const float* v,
                   const int32_t* seg, const float* o, const float* lse, const float* dout,
                   float* dq, float* dk, float* dv, int64_t b, int64_t kh, Scratch& w) {
  const int64_t L = d.length, D = d.dim;
  const int64_t q_ld = d.heads * D, kv_ld = d.kv_heads * D;
  const float* kb = k + b * L * kv_ld + kh * D;
  const float* vb = v + b * L * kv_ld + kh * D;
  const int32_t* sb = seg + b * L;
  transpose(L, D, kb, kv_ld, w.kt.data(), L);
  transpose(L, D, vb, kv_ld, w.vt.data(), L);
  std::fill(w.dk.begin(), w.dk.end(), 0.0f);
  std::fill(w.dv.begin(), w.dv.end(), 0.0f);
  for (int64_t g = 0; g < d.group(); ++g) {
    const int64_t h = kh * d.group() + g;
    const float* qb = q + b * L * q_ld + h * D;
    const float* ob = o + b * L * q_ld + h * D;
    const float* dob = dout + b * L * q_ld + h * D;
    float* dqb = dq + b * L * q_ld + h * D;
    const float* lb = lse + (b * d.heads + h) * L;
    for (int64_t r0 = 0; r0 < L; r0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, L - r0), end = r0 + rows, lds = end;
      float* s = w.s.data();
      float* dp = w.dp.data();
      matmul<false>(rows, end, D, qb + r0 * q_ld, q_ld, w.kt.data(), L, s, lds);
      matmul<false>(rows, end, D, dob + r0 * q_ld, q_ld, w.vt.data(), L, dp, lds);
      const int64_t vd = D - D % kLanes;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = r0 + r;
        const int32_t row_seg = sb[row];
        float* srow = s + r * lds;
        float* dprow = dp + r * lds;
        if (row_seg <= 0) {  // padding: no gradient
          std::fill(srow, srow + end, 0.0f);
          std::fill(dprow, dprow + end, 0.0f);
          continue;
        }
        const float* orow = ob + row * q_ld;
        const float* dorow = dob + row * q_ld;
        vf vdot = splat(0.0f);
        for (int64_t c = 0; c < vd; c += kLanes) vdot += load(orow + c) * load(dorow + c);
        float delta = hsum(vdot);
        for (int64_t c = vd; c < D; ++c) delta += orow[c] * dorow[c];
        const float l = lb[row];
        const int64_t vend = end - end % kLanes;
        const vf vscale = splat(d.scale), vl = splat(l), vdelta = splat(delta);
        for (int64_t j = 0; j < vend; j += kLanes) {
          const vf x = load(srow + j) * vscale - vl;
          const vf p = visible(sb, row_seg, row, j) ? exp_neg(x) : splat(0.0f);
          store(srow + j, p);
          store(dprow + j, p * (load(dprow + j) - vdelta) * vscale);
        }
        for (int64_t j = vend; j < end; ++j) {
          const float p = visible1(sb, row_seg, row, j) ? std::exp(srow[j] * d.scale - l) : 0.0f;
          srow[j] = p;
          dprow[j] = p * (dprow[j] - delta) * d.scale;
        }
      }
      // dq = ds·k (rows × D), dv += pᵀ·do, dk += dsᵀ·q (keys [0, end) × D).
      matmul<false>(rows, D, end, dp, lds, kb, kv_ld, dqb + r0 * q_ld, q_ld);
      matmul<true, true>(end, D, rows, s, lds, dob + r0 * q_ld, q_ld, w.dv.data(), D);
      matmul<true, true>(end, D, rows, dp, lds, qb + r0 * q_ld, q_ld, w.dk.data(), D);
    }
  }
  float* dkb = dk + b * L * kv_ld + kh * D;
  float* dvb = dv + b * L * kv_ld + kh * D;
  for (int64_t r = 0; r < L; ++r) {
    std::memcpy(dkb + r * kv_ld, w.dk.data() + r * D, D * sizeof(float));
    std::memcpy(dvb + r * kv_ld, w.dv.data() + r * D, D * sizeof(float));
  }
}

ffi::Error backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg,
                    ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                    float scale) {
  Dims d;
  if (!dims_of(q, k, scale, d)) return ffi::Error::InvalidArgument(kShapeError);
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *op = o.typed_data(), *lp = lse.typed_data(), *dop = dout.typed_data();
  const int32_t* sp = seg.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  parallel_items(pool, d.batch * d.kv_heads, [&](int64_t item) {
    thread_local Scratch w;
    w.size(d);
    backward_item(d, qp, kp, vp, sp, op, lp, dop, dqp, dkp, dvp, item / d.kv_heads,
                  item % d.kv_heads, w);
  });
  return ffi::Error::Success();
}

}  // namespace

// Both directions take the thread pool, q, k, v and the segment ids first.
namespace {
using F32Buffer = ffi::Buffer<ffi::F32>;
auto bind_q_k_v_segments() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<ffi::Buffer<ffi::S32>>();
}
}  // namespace

// Forward: → o, lse.
XLA_FFI_DEFINE_HANDLER_SYMBOL(LatentlmCpuAttentionForward, forward,
                              bind_q_k_v_segments()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Attr<float>("scale"));

// Backward: o, lse, do → dq, dk, dv.
XLA_FFI_DEFINE_HANDLER_SYMBOL(LatentlmCpuAttentionBackward, backward,
                              bind_q_k_v_segments()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Attr<float>("scale"));
