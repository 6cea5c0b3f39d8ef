// Native CPU kernels for bf16 training: causal softmax attention (AMX tiles) and the
// cross-entropy of bf16 logits (AVX-512), forward and backward.
//
// Attention.
//
// Why a kernel of our own: at the shapes small models train with (head size 32-128, a few
// hundred positions) PyTorch's CPU flash-attention reaches about a tenth of what the AMX
// units can do, and its backward is slower still, so attention was a third of a training
// step. Here every matrix product is an AMX tile product (16x16 fp32 += 16x32 bf16 times
// 32x16 bf16) and the softmax work runs in AVX-512 registers.
//
// Layout: q, k, v, out, grads are (heads, T, D) bf16 contiguous, lse is (heads, T) fp32,
// the log-sum-exp of each query's scaled scores. T and D must be multiples of 32.
//
// Forward, per head and per block of 16 queries: S = Q K^T for the causal keys only
// (16 x keys fp32), then the exact softmax of each row (no online rescaling: a whole row of
// scores fits in L1), then O = P V with P in bf16, divided by the row sums at the end.
//
// Backward, per head and per block of 32 keys (the FlashAttention-2 order): recompute
// S^T = K Q^T and dP^T = V dO^T for the queries that see these keys, P^T = exp(S^T s - lse),
// dS^T = P^T (dP^T - rowsum(dO o O)) s; then dV = P^T dO and dK = dS^T Q are final for the
// block, and dQ^T += K^T dS^T accumulates in fp32 across blocks. Computing the transposed
// scores means every product reads its operands in a layout packed once per head, and no
// score block is ever transposed.
//
// AMX operands: A tiles are row-major 16 rows x 32 bf16; B tiles are "VNNI" 16 rows x 16
// pairs, i.e. for B (32 x 16), row p holds (B[2p][n], B[2p+1][n]) for n = 0..15.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>


typedef uint16_t bf16;

namespace {

constexpr int kTileRows = 16;

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile register is 16 rows x 64 bytes; tmm0 accumulates, tmm1 is A, tmm2 is B.
void configure_tiles() {
  TileConfig cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = kTileRows;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// C (16 x 16 fp32, row stride ldc bytes) = [C +] sum over kb of A_kb (16 x 32 bf16) B_kb (VNNI).
inline void tile_gemm(float* c, int ldc, bool accumulate, const bf16* a, int lda, long a_step, const bf16* b,
                      int ldb, long b_step, int kblocks) {
  if (accumulate) {
    _tile_loadd(0, c, ldc);
  } else {
    _tile_zero(0);
  }
  for (int kb = 0; kb < kblocks; ++kb) {
    _tile_loadd(1, a + kb * a_step, lda);
    _tile_loadd(2, b + kb * b_step, ldb);
    _tile_dpbf16ps(0, 1, 2);
  }
  _tile_stored(0, c, ldc);
}

// Two outputs sharing the A operand: C0 = A B0, C1 = A B1 (one K block, no accumulation).
inline void tile_gemm2(float* c0, float* c1, int ldc, const bf16* a, int lda, const bf16* b0, const bf16* b1,
                       int ldb, long a_step, long b_step, int kblocks) {
  _tile_zero(0);
  _tile_zero(3);
  for (int kb = 0; kb < kblocks; ++kb) {
    _tile_loadd(1, a + kb * a_step, lda);
    _tile_loadd(2, b0 + kb * b_step, ldb);
    _tile_loadd(4, b1 + kb * b_step, ldb);
    _tile_dpbf16ps(0, 1, 2);
    _tile_dpbf16ps(3, 1, 4);
  }
  _tile_stored(0, c0, ldc);
  _tile_stored(3, c1, ldc);
}

// exp(x) for x <= 0 (scores minus their maximum or log-sum-exp): 2^n * p(r), |r| <= ln2/2.
// Inputs below -87 give exp(-87) ~ 1.6e-38, the smallest normal float (see parallel_split on denormals).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m256i to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

inline __m512 load_bf16(const bf16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// Transpose of a 16 x 16 matrix of 32-bit elements held in 16 registers, in place.
inline void transpose16x16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_i32x4(r[j], r[j + 4], 0x88);
    t[j + 4] = _mm512_shuffle_i32x4(r[j], r[j + 4], 0xdd);
    t[j + 8] = _mm512_shuffle_i32x4(r[j + 8], r[j + 12], 0x88);
    t[j + 12] = _mm512_shuffle_i32x4(r[j + 8], r[j + 12], 0xdd);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    r[j + 4] = _mm512_shuffle_i32x4(t[j + 4], t[j + 12], 0x88);
    r[j + 12] = _mm512_shuffle_i32x4(t[j + 4], t[j + 12], 0xdd);
  }
}

// Loads the 16 x 16 block of 32-bit pairs at row n, pair p of src (T x D bf16) and transposes it:
// r[j] then holds pair p + j of rows n .. n + 15. (Register transposes: gathers were a sixth of
// the backward.)
inline void load_pairs_transposed(const bf16* src, int D, int n, int p, __m512i* r) {
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + (long)(n + i) * D + 2 * p);
  transpose16x16(r);
}

// dst (D/2 x T pairs) [p][n] = src (T x D) pair p of row n: the VNNI form of src^T.
void pack_pairs_transposed(const bf16* src, bf16* dst, int T, int D) {
  uint32_t* d = (uint32_t*)dst;
  __m512i r[16];
  for (int n = 0; n < T; n += 16) {
    for (int p = 0; p < D / 2; p += 16) {
      load_pairs_transposed(src, D, n, p, r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(d + (long)(p + j) * T + n, r[j]);
    }
  }
}

// dst (D x T) = src (T x D)^T, plain transpose (for A operands that read src by columns).
void transpose(const bf16* src, bf16* dst, int T, int D) {
  __m512i r[16];
  for (int n = 0; n < T; n += 16) {
    for (int p = 0; p < D / 2; p += 16) {
      load_pairs_transposed(src, D, n, p, r);
      for (int j = 0; j < 16; ++j) {
        _mm256_storeu_si256((__m256i*)(dst + (long)(2 * (p + j)) * T + n), _mm512_cvtepi32_epi16(r[j]));
        _mm256_storeu_si256((__m256i*)(dst + (long)(2 * (p + j) + 1) * T + n),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(r[j], 16)));
      }
    }
  }
}

// dst (T/2 x D pairs) [p][n] = (src[2p][n], src[2p+1][n]): the VNNI form of src itself.
void pack_row_pairs(const bf16* src, bf16* dst, int T, int D) {
  alignas(64) static const uint16_t lo_index[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(lo_index);  // element n of row 2p, then of row 2p+1
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int p = 0; p < T / 2; ++p) {
    const bf16* even = src + (long)(2 * p) * D;
    const bf16* odd = even + D;
    bf16* out = dst + (long)p * 2 * D;
    for (int n = 0; n < D; n += 32) {
      const __m512i a = _mm512_loadu_si512(even + n), b = _mm512_loadu_si512(odd + n);
      _mm512_storeu_si512(out + 2 * n, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(out + 2 * n + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

struct Buffer {
  void* ptr = nullptr;
  explicit Buffer(size_t bytes) { ptr = aligned_alloc(64, (bytes + 63) / 64 * 64); }
  ~Buffer() { free(ptr); }
  template <class T>
  T* as() { return (T*)ptr; }
};

// Lanes of keys j .. j + 15 that a query seeing keys 0 .. last may attend to.
inline __mmask16 visible_keys(int j, int last) {
  if (j > last) return 0;
  return j + 15 <= last ? (__mmask16)0xFFFF : (__mmask16)((1u << (last - j + 1)) - 1);
}

void forward_heads(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int h0, int h1, int T,
                   int D, float scale) {
  configure_tiles();
  Buffer kt(sizeof(bf16) * T * D), vp(sizeof(bf16) * T * D), s_buf(sizeof(float) * 16 * T),
      p_buf(sizeof(bf16) * 16 * T), o_buf(sizeof(float) * 16 * D);
  float* S = s_buf.as<float>();
  bf16* P = p_buf.as<bf16>();
  float* O = o_buf.as<float>();
  const int kd = D / 32;
  for (int h = h0; h < h1; ++h) {
    const long base = (long)h * T * D;
    pack_pairs_transposed(k + base, kt.as<bf16>(), T, D);
    pack_row_pairs(v + base, vp.as<bf16>(), T, D);
    for (int row0 = 0; row0 < T; row0 += 16) {
      const int keys = (row0 + 16 + 31) / 32 * 32;  // causal keys, rounded up to the PV block
      const bf16* qa = q + base + (long)row0 * D;
      for (int kt_i = 0; kt_i < keys / 16; kt_i += 2) {
        tile_gemm2(S + kt_i * 16, S + kt_i * 16 + 16, T * 4, qa, D * 2, kt.as<bf16>() + kt_i * 16 * 2,
                   kt.as<bf16>() + (kt_i + 1) * 16 * 2, T * 4, 32, 16L * T * 2, kd);
      }
      // Softmax of each row, four rows at a time: their horizontal reductions (max, sum) are
      // latency-bound, and four independent chains keep the vector units busy meanwhile.
      float inv_sum[16];
      const __m512 vscale = _mm512_set1_ps(scale);
      for (int r0 = 0; r0 < 16; r0 += 4) {
        const int first_last = row0 + r0;  // row r0 + i sees keys 0 .. first_last + i
        __m512 vmax[4];
        for (int i = 0; i < 4; ++i) vmax[i] = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j <= first_last + 3; j += 16) {
          for (int i = 0; i < 4; ++i) {
            vmax[i] = _mm512_mask_max_ps(vmax[i], visible_keys(j, first_last + i), vmax[i],
                                         _mm512_loadu_ps(S + (long)(r0 + i) * T + j));
          }
        }
        __m512 vmx[4], vsum[4];
        float mx[4];
        for (int i = 0; i < 4; ++i) {
          mx[i] = _mm512_reduce_max_ps(vmax[i]) * scale;
          vmx[i] = _mm512_set1_ps(mx[i]);
          vsum[i] = _mm512_setzero_ps();
        }
        for (int j = 0; j < keys; j += 16) {
          if (j > first_last + 3) {  // past every row's last key: zeros for the P V product
            for (int i = 0; i < 4; ++i) _mm256_storeu_si256((__m256i*)(P + (long)(r0 + i) * T + j), _mm256_setzero_si256());
            continue;
          }
          for (int i = 0; i < 4; ++i) {
            const __m512 x = _mm512_fmsub_ps(_mm512_loadu_ps(S + (long)(r0 + i) * T + j), vscale, vmx[i]);
            const __m512 e = _mm512_maskz_mov_ps(visible_keys(j, first_last + i), exp_ps(x));
            vsum[i] = _mm512_add_ps(vsum[i], e);
            _mm256_storeu_si256((__m256i*)(P + (long)(r0 + i) * T + j), to_bf16(e));
          }
        }
        for (int i = 0; i < 4; ++i) {
          const float sum = _mm512_reduce_add_ps(vsum[i]);
          inv_sum[r0 + i] = 1.0f / sum;
          lse[(long)h * T + row0 + r0 + i] = mx[i] + logf(sum);
        }
      }
      for (int dt = 0; dt < D / 16; ++dt) {
        tile_gemm(O + dt * 16, D * 4, false, P, T * 2, 32, vp.as<bf16>() + dt * 16 * 2, D * 4, 16L * D * 2,
                  keys / 32);
      }
      for (int r = 0; r < 16; ++r) {
        const __m512 inv = _mm512_set1_ps(inv_sum[r]);
        bf16* orow = out + base + (long)(row0 + r) * D;
        for (int d = 0; d < D; d += 16) {
          _mm256_storeu_si256((__m256i*)(orow + d), to_bf16(_mm512_mul_ps(_mm512_loadu_ps(O + r * D + d), inv)));
        }
      }
    }
  }
  _tile_release();
}

void backward_heads(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                    const bf16* dout, bf16* dq, bf16* dk, bf16* dv, int h0, int h1, int T, int D, float scale) {
  configure_tiles();
  const long TD = (long)T * D;
  Buffer qt(2 * TD), dot(2 * TD), qp(2 * TD), dop(2 * TD), ktr(2 * TD), drow_b(4L * T), st_b(4L * 32 * T),
      dpt_b(4L * 32 * T), pt_b(2L * 32 * T), dst_b(2L * 32 * T), dsv_b(2L * 32 * T), dqt_b(4 * TD),
      acc_b(4L * 16 * D);
  float* drow = drow_b.as<float>();
  float* ST = st_b.as<float>();
  float* dPT = dpt_b.as<float>();
  bf16* PT = pt_b.as<bf16>();
  bf16* dST = dst_b.as<bf16>();
  bf16* dSV = dsv_b.as<bf16>();  // dS^T in VNNI form over key pairs: [pair][query][2]
  float* dQT = dqt_b.as<float>();
  float* acc = acc_b.as<float>();
  const int kd = D / 32;
  alignas(64) static const uint16_t interleave_index[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                            8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(interleave_index);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int h = h0; h < h1; ++h) {
    const long base = (long)h * TD;
    const float* hl = lse + (long)h * T;
    pack_pairs_transposed(q + base, qt.as<bf16>(), T, D);
    pack_pairs_transposed(dout + base, dot.as<bf16>(), T, D);
    pack_row_pairs(q + base, qp.as<bf16>(), T, D);
    pack_row_pairs(dout + base, dop.as<bf16>(), T, D);
    transpose(k + base, ktr.as<bf16>(), T, D);
    for (int i = 0; i < T; ++i) {
      __m512 acc_v = _mm512_setzero_ps();
      for (int d = 0; d < D; d += 16) {
        acc_v = _mm512_fmadd_ps(load_bf16(dout + base + (long)i * D + d), load_bf16(out + base + (long)i * D + d),
                                acc_v);
      }
      drow[i] = _mm512_reduce_add_ps(acc_v);
    }
    memset(dQT, 0, 4 * TD);
    for (int j0 = 0; j0 < T; j0 += 32) {
      const int nq = T - j0;  // queries j0..T-1 see some of keys j0..j0+31
      for (int s = 0; s < 2; ++s) {
        const bf16* ka = k + base + (long)(j0 + 16 * s) * D;
        const bf16* va = v + base + (long)(j0 + 16 * s) * D;
        for (int t = 0; t < nq / 16; t += 2) {
          const long col = (long)(j0 + 16 * t) * 2;
          tile_gemm2(ST + 16 * s * T + 16 * t, ST + 16 * s * T + 16 * t + 16, T * 4, ka, D * 2, qt.as<bf16>() + col,
                     qt.as<bf16>() + col + 32, T * 4, 32, 16L * T * 2, kd);
          tile_gemm2(dPT + 16 * s * T + 16 * t, dPT + 16 * s * T + 16 * t + 16, T * 4, va, D * 2,
                     dot.as<bf16>() + col, dot.as<bf16>() + col + 32, T * 4, 32, 16L * T * 2, kd);
        }
      }
      // P^T and dS^T, two key rows at a time so dS^T can also be written in VNNI form.
      for (int r = 0; r < 32; r += 2) {
        for (int c = 0; c < nq; c += 16) {
          const __m512i query = _mm512_add_epi32(lane, _mm512_set1_epi32(j0 + c));
          const __m512 l = _mm512_loadu_ps(hl + j0 + c), dr = _mm512_loadu_ps(drow + j0 + c);
          __m256i ds_half[2];
          for (int e = 0; e < 2; ++e) {
            const long at = (long)(r + e) * T + c;
            const __mmask16 visible = _mm512_cmpge_epi32_mask(query, _mm512_set1_epi32(j0 + r + e));
            const __m512 p =
                _mm512_maskz_mov_ps(visible, exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(ST + at), vscale, l)));
            const __m512 ds = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dPT + at), dr)), vscale);
            _mm256_storeu_si256((__m256i*)(PT + at), to_bf16(p));
            ds_half[e] = to_bf16(ds);
            _mm256_storeu_si256((__m256i*)(dST + at), ds_half[e]);
          }
          const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(ds_half[0]), ds_half[1], 1);
          _mm512_storeu_si512(dSV + (long)(r / 2) * T * 2 + 2L * c, _mm512_permutexvar_epi16(interleave, both));
        }
      }
      for (int s = 0; s < 2; ++s) {
        const int key = j0 + 16 * s;
        for (int dt = 0; dt < D / 16; ++dt) {  // dV = P^T dO over queries j0..T-1
          tile_gemm(acc + dt * 16, D * 4, false, PT + 16 * s * T, T * 2, 32,
                    dop.as<bf16>() + (long)(j0 / 2) * D * 2 + dt * 32, D * 4, 16L * D * 2, nq / 32);
        }
        for (int r = 0; r < 16; ++r) {
          for (int d = 0; d < D; d += 16) {
            _mm256_storeu_si256((__m256i*)(dv + base + (long)(key + r) * D + d), to_bf16(_mm512_loadu_ps(acc + r * D + d)));
          }
        }
        for (int dt = 0; dt < D / 16; ++dt) {  // dK = dS^T Q
          tile_gemm(acc + dt * 16, D * 4, false, dST + 16 * s * T, T * 2, 32,
                    qp.as<bf16>() + (long)(j0 / 2) * D * 2 + dt * 32, D * 4, 16L * D * 2, nq / 32);
        }
        for (int r = 0; r < 16; ++r) {
          for (int d = 0; d < D; d += 16) {
            _mm256_storeu_si256((__m256i*)(dk + base + (long)(key + r) * D + d), to_bf16(_mm512_loadu_ps(acc + r * D + d)));
          }
        }
      }
      for (int dt = 0; dt < D / 16; ++dt) {  // dQ^T += K^T dS^T, one K block of these 32 keys
        for (int t = 0; t < nq / 16; ++t) {
          tile_gemm(dQT + (long)dt * 16 * T + j0 + 16 * t, T * 4, true, ktr.as<bf16>() + (long)dt * 16 * T + j0,
                    T * 2, 0, dSV + 32L * t, T * 4, 0, 1);
        }
      }
    }
    for (int i = 0; i < T; i += 16) {  // dq = (dQ^T)^T in bf16, 16 x 16 blocks
      for (int d = 0; d < D; d += 16) {
        __m512i r[16];
        for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_si512(dQT + (long)(d + j) * T + i);
        transpose16x16(r);
        for (int j = 0; j < 16; ++j) {
          _mm256_storeu_si256((__m256i*)(dq + base + (long)(i + j) * D + d), to_bf16(_mm512_castsi512_ps(r[j])));
        }
      }
    }
  }
  _tile_release();
}


// Cross-entropy of bf16 logits, one row per thread step: the row is read in bf16 and
// every sum is fp32. Forward: lse and (lse - logit of the target) per row; backward:
// (softmax - onehot) * scale per row written straight into a bf16 gradient. One pass over
// the logits each way where PyTorch's blocked version makes four.
inline __mmask16 tail_mask(long n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

inline __m512 load_bf16_masked(const bf16* p, __mmask16 m) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

inline float bf16_to_float(bf16 x) {
  uint32_t bits = (uint32_t)x << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

void ce_forward_rows(const bf16* logits, long ld, const int64_t* targets, int r0, int r1, int V, float* lse,
                     float* terms) {
  for (int r = r0; r < r1; ++r) {
    const bf16* row = logits + (long)r * ld;
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < V; j += 16) {
      const __mmask16 m = tail_mask(V - j);
      vmax = _mm512_mask_max_ps(vmax, m, vmax, load_bf16_masked(row + j, m));
    }
    const float mx = _mm512_reduce_max_ps(vmax);
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 vsum = _mm512_setzero_ps();
    for (int j = 0; j < V; j += 16) {
      const __mmask16 m = tail_mask(V - j);
      vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(load_bf16_masked(row + j, m), vmx))));
    }
    lse[r] = mx + logf(_mm512_reduce_add_ps(vsum));
    const int64_t t = targets[r];
    terms[r] = (t >= 0 && t < V) ? lse[r] - bf16_to_float(row[t]) : 0.0f;
  }
}

void ce_backward_rows(const bf16* logits, long ld, const int64_t* targets, const float* lse, const float* scale,
                      bf16* grad, long ldg, int r0, int r1, int V) {
  for (int r = r0; r < r1; ++r) {
    const bf16* row = logits + (long)r * ld;
    bf16* out = grad + (long)r * ldg;
    const __m512 l = _mm512_set1_ps(lse[r]), s = _mm512_set1_ps(scale[r]);
    const int64_t t = targets[r];
    for (int j = 0; j < V; j += 16) {
      const __mmask16 m = tail_mask(V - j);
      __m512 g = _mm512_mul_ps(exp_ps(_mm512_sub_ps(load_bf16_masked(row + j, m), l)), s);
      if (t >= j && t < j + 16) {  // subtract the one-hot target
        g = _mm512_mask_sub_ps(g, (__mmask16)(1u << (t - j)), g, s);
      }
      _mm256_mask_storeu_epi16(out + j, m, to_bf16(g));
    }
  }
}

// SwiGLU's activation, h = silu(gate) * up, where gate and up are the two halves of each row of
// one (rows, 2F) product. Inductor computes the sigmoid with a full-precision exp and a true
// division, twice in the backward; here one fast exp and a reciprocal with one Newton step
// (relative error ~1e-7, far below bf16's 4e-3), one pass each way.
inline __m512 sigmoid_ps(__m512 x) {
  const __m512 minus_x = _mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), _mm512_set1_ps(80.0f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(minus_x));
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

inline void store_bf16_masked(bf16* p, __mmask16 m, __m512 x) { _mm256_mask_storeu_epi16(p, m, to_bf16(x)); }

void swiglu_forward_rows(const bf16* gu, bf16* h, int r0, int r1, int F) {
  for (int r = r0; r < r1; ++r) {
    const bf16* gate = gu + 2L * F * r;
    const bf16* up = gate + F;
    bf16* out = h + (long)F * r;
    for (int j = 0; j < F; j += 16) {
      const __mmask16 m = tail_mask(F - j);
      const __m512 a = load_bf16_masked(gate + j, m), b = load_bf16_masked(up + j, m);
      store_bf16_masked(out + j, m, _mm512_mul_ps(_mm512_mul_ps(a, sigmoid_ps(a)), b));
    }
  }
}

// d gate = dh * up * s * (1 + gate * (1 - s)), d up = dh * gate * s, with s = sigmoid(gate).
void swiglu_backward_rows(const bf16* gu, const bf16* dh, bf16* dgu, int r0, int r1, int F) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int r = r0; r < r1; ++r) {
    const bf16* gate = gu + 2L * F * r;
    const bf16* up = gate + F;
    const bf16* g = dh + (long)F * r;
    bf16* dgate = dgu + 2L * F * r;
    bf16* dup = dgate + F;
    for (int j = 0; j < F; j += 16) {
      const __mmask16 m = tail_mask(F - j);
      const __m512 a = load_bf16_masked(gate + j, m), b = load_bf16_masked(up + j, m);
      const __m512 dy = load_bf16_masked(g + j, m);
      const __m512 s = sigmoid_ps(a);
      const __m512 gs = _mm512_mul_ps(dy, s);
      const __m512 slope = _mm512_fmadd_ps(a, _mm512_sub_ps(one, s), one);
      store_bf16_masked(dgate + j, m, _mm512_mul_ps(_mm512_mul_ps(gs, b), slope));
      store_bf16_masked(dup + j, m, _mm512_mul_ps(gs, a));
    }
  }
}

// The optimizer step of fp32 training on a CPU in one pass: gradient clipping (a scale on every
// gradient), AdamW with decoupled weight decay (PyTorch's formulas), and the EMA of the weights.
// After the gradients' norm (foundry_sum_squares), one pass where PyTorch makes three more
// (clip's multiply, AdamW, the EMA's lerp), each over tens of MiB that no cache holds. The work
// over all tensors is split evenly by element, whatever their sizes.
//
// Per tensor, hyper[6 i ...] = (lr * weight_decay, beta1, beta2, eps, lr / (1 - beta1^step),
// 1 / sqrt(1 - beta2^step)).
template <class F>
void for_each_slice(const long* sizes, int n, int part, int parts, F&& work) {
  long total = 0;
  for (int i = 0; i < n; ++i) total += sizes[i];
  const long begin = total * part / parts, end = total * (part + 1) / parts;
  long offset = 0;
  for (int i = 0; i < n && offset < end; offset += sizes[i], ++i) {
    const long lo = begin > offset ? begin - offset : 0, hi = end - offset < sizes[i] ? end - offset : sizes[i];
    if (lo < hi) work(i, lo, hi);
  }
}

void adamw_ema_slice(float* p, const float* g, float* m, float* v, float* ema, const float* hp, long lo, long hi,
                     float grad_scale, float ema_weight) {
  const __m512 decay = _mm512_set1_ps(1.0f - hp[0]), avg_weight = _mm512_set1_ps(1.0f - hp[1]),
               b2 = _mm512_set1_ps(hp[2]), one_minus_b2 = _mm512_set1_ps(1.0f - hp[2]), eps = _mm512_set1_ps(hp[3]),
               step_size = _mm512_set1_ps(hp[4]), inv_bc2 = _mm512_set1_ps(hp[5]), scale = _mm512_set1_ps(grad_scale),
               w = _mm512_set1_ps(ema_weight);
  for (long j = lo; j < hi; j += 16) {
    const __mmask16 k = tail_mask(hi - j);
    const __m512 grad = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + j), scale);
    __m512 param = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + j), decay);
    __m512 avg = _mm512_maskz_loadu_ps(k, m + j);
    avg = _mm512_fmadd_ps(avg_weight, _mm512_sub_ps(grad, avg), avg);  // lerp toward the gradient
    __m512 sq = _mm512_maskz_loadu_ps(k, v + j);
    sq = _mm512_fmadd_ps(sq, b2, _mm512_mul_ps(one_minus_b2, _mm512_mul_ps(grad, grad)));
    const __m512 denom = _mm512_fmadd_ps(_mm512_sqrt_ps(sq), inv_bc2, eps);
    param = _mm512_fnmadd_ps(step_size, _mm512_div_ps(avg, denom), param);
    _mm512_mask_storeu_ps(p + j, k, param);
    _mm512_mask_storeu_ps(m + j, k, avg);
    _mm512_mask_storeu_ps(v + j, k, sq);
    if (ema) {
      const __m512 old = _mm512_maskz_loadu_ps(k, ema + j);
      _mm512_mask_storeu_ps(ema + j, k, _mm512_fmadd_ps(w, _mm512_sub_ps(param, old), old));
    }
  }
}

// Work (heads, rows) split evenly over OpenMP threads. The library links libgomp.so.1, which resolves to the
// copy PyTorch has already loaded, so these are PyTorch's own worker threads: a thread of our
// own would compete for a core with a PyTorch worker still spinning after its last op.
//
// Each thread flushes denormals to zero while it works (MXCSR FTZ and DAZ, restored after): an
// operation with a denormal result costs a microcode assist, and the softmax of very confident
// logits makes such values by the million (a 5-10x slower cross-entropy); in bf16 they are zero anyway.
template <class F>
void parallel_split(int n, int threads, F&& work) {
  threads = threads < 1 ? 1 : (threads > n ? n : threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int t = 0; t < threads; ++t) {
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  // flush-to-zero | denormals-are-zero
    work(n * t / threads, n * (t + 1) / threads);
    _mm_setcsr(csr);
  }
}

}  // namespace

extern "C" {

// 0 when this process may use the AMX tile registers (Linux asks each process to request them).
int foundry_amx_init() {
  const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

void foundry_attention_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int heads, int T,
                               int D, float scale, int threads) {
  parallel_split(heads, threads, [&](int h0, int h1) { forward_heads(q, k, v, out, lse, h0, h1, T, D, scale); });
}

void foundry_attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const float* lse,
                                const bf16* dout, bf16* dq, bf16* dk, bf16* dv, int heads, int T, int D, float scale,
                                int threads) {
  parallel_split(heads, threads, [&](int h0, int h1) {
    backward_heads(q, k, v, out, lse, dout, dq, dk, dv, h0, h1, T, D, scale);
  });
}

// Per row: lse and lse - logit[target] (0 for a target outside [0, V), e.g. an ignored -100).
void foundry_cross_entropy_forward(const bf16* logits, long ld, const int64_t* targets, int rows, int V, float* lse,
                                   float* terms, int threads) {
  parallel_split(rows, threads, [&](int r0, int r1) { ce_forward_rows(logits, ld, targets, r0, r1, V, lse, terms); });
}

// grad[r] = (softmax(logits[r]) - onehot(target[r])) * scale[r], in bf16.
void foundry_cross_entropy_backward(const bf16* logits, long ld, const int64_t* targets, const float* lse,
                                    const float* scale, bf16* grad, long ldg, int rows, int V, int threads) {
  parallel_split(rows, threads, [&](int r0, int r1) {
    ce_backward_rows(logits, ld, targets, lse, scale, grad, ldg, r0, r1, V);
  });
}

// h (rows, F) = silu(gu[:, :F]) * gu[:, F:], for gu (rows, 2F) bf16 contiguous.
void foundry_swiglu_forward(const bf16* gu, bf16* h, int rows, int F, int threads) {
  parallel_split(rows, threads, [&](int r0, int r1) { swiglu_forward_rows(gu, h, r0, r1, F); });
}

// dgu (rows, 2F): the gradient of the forward with respect to gu, given dh (rows, F).
void foundry_swiglu_backward(const bf16* gu, const bf16* dh, bf16* dgu, int rows, int F, int threads) {
  parallel_split(rows, threads, [&](int r0, int r1) { swiglu_backward_rows(gu, dh, dgu, r0, r1, F); });
}

// Sum of the squares of n fp32 tensors (the squared global norm of the gradients).
double foundry_sum_squares(float* const* tensors, const long* sizes, int n, int threads) {
  double partial[256] = {0};
  threads = threads < 1 ? 1 : (threads > 256 ? 256 : threads);
  parallel_split(threads, threads, [&](int t, int) {
    for_each_slice(sizes, n, t, threads, [&](int i, long lo, long hi) {
      __m512 acc = _mm512_setzero_ps();
      for (long j = lo; j < hi; j += 16) {
        const __m512 x = _mm512_maskz_loadu_ps(tail_mask(hi - j), tensors[i] + j);
        acc = _mm512_fmadd_ps(x, x, acc);
      }
      partial[t] += _mm512_reduce_add_ps(acc);
    });
  });
  double total = 0;
  for (int t = 0; t < threads; ++t) total += partial[t];
  return total;
}

// One AdamW step of n fp32 tensors with gradients scaled by grad_scale, then ema += ema_weight *
// (param - ema) where emas[i] is not null.
void foundry_adamw_ema_step(float* const* params, float* const* grads, float* const* exp_avgs,
                            float* const* exp_avg_sqs, float* const* emas, const long* sizes, const float* hyper,
                            int n, float grad_scale, float ema_weight, int threads) {
  threads = threads < 1 ? 1 : threads;
  parallel_split(threads, threads, [&](int t, int) {
    for_each_slice(sizes, n, t, threads, [&](int i, long lo, long hi) {
      adamw_ema_slice(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], emas ? emas[i] : nullptr, hyper + 6 * i, lo,
                      hi, grad_scale, ema_weight);
    });
  });
}

}  // extern "C"
