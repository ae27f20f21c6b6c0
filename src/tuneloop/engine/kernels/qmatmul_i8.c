/* Group-quantized matrix product with int8 activations (AVX-512 VNNI, or AVX2).
 *
 * The same weights as ``qmatmul.c`` (W[n, k] = scale[n, g] * q[n, k] + offset[n, g], g = k / 32),
 * multiplied by activations rounded to int8 per block of 32 inputs, as llama.cpp does on CPU:
 *
 *     x[m, k] ~ d[m, g] * xq[m, k],  d = max|x[m, block]| / 127,  xq = round(x * (1 / d))
 *     y[m, n] = sum_g d[m, g] * (scale[n, g] * A + offset[n, g] * X),
 *     A = sum_{k in g} (q[n, k] - zero) * xq[m, k] (exact, int32),  X = sum_{k in g} xq[m, k]
 *
 * ``vpdpbusd`` multiplies 64 unsigned code bytes by 64 signed activation bytes per instruction, four
 * times the products of a float32 FMA, so a step of many rows costs far fewer instructions than
 * with float32 activations. Codes are unsigned: 4-bit codes 0..15, 8-bit codes stored + 128 with
 * ``zero`` = 128 (``zero`` = 8 also turns Q4_0's ``s * (q - 8)`` into an integer correction).
 *
 * Layout (``quantized.Int8ActivationCodes``): output rows in blocks of 16, one int32 lane each.
 * For block b and group g, 64-byte chunks whose byte 4 i + j is row 16 b + i's code for input
 * j of the chunk's 4 inputs: 8-bit, chunk c holds inputs 4c..4c+3 of the group; 4-bit, chunk c
 * holds inputs 8c..8c+3 in its low nibbles and 8c+4..8c+7 in its high ones. Scales and offsets
 * are [blocks, groups, 16]. Every y[m, n] is computed by the same operations in the same order
 * whatever M is, so a sequence's result never depends on the batch it is computed in.
 *
 * The AVX2 build reads the same layout as two halves of 8 rows (32 bytes of each chunk) and forms
 * each 4-input sum with ``vpmaddubsw`` (unsigned x signed bytes into 16-bit pairs) and ``vpmaddwd``
 * by ones, as llama.cpp's AVX2 path does. A 16-bit pair must not saturate: 4-bit codes (<= 15) meet
 * the activations as they are; 8-bit codes are made signed (code - 128) and their sign moved onto
 * the activation (``vpsignb``), |code - 128| <= 128, and ``start`` adds back (128 - zero) * X. The
 * integer sums are exact and the float operations the same, in the same order, as AVX-512's: both
 * builds give bit-identical results.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tuneloop.h"

#if defined(__AVX2__)
#define GROUP 32
#define LANES 16

static inline int32_t four_bytes(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* the integer correction each group's dot product starts from, per unit of X = sum xq */
#define START_BIAS(bits, zero) (-(zero))

/* Round each row of x [M, K] to int8 per block of 32: codes xq, and per (row, block) d, d * X and
 * bias * X (the integer correction the dot product starts from). */
static void quantize_rows(const float *x, int64_t M, int64_t K, int32_t bias, int8_t *xq, float *d, float *dx,
                          int32_t *start) {
    const int64_t G = K / GROUP;
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            const float *p = x + m * K + g * GROUP;
            const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            const float scale = amax / 127.0f; /* GGUF's Q8_0 rule, as quantized.round_groups */
            const __m512 inverse = _mm512_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
            const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));  /* nearest, ties to even */
            const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
            _mm_storeu_si128((__m128i *)(xq + m * K + g * GROUP), _mm512_cvtsepi32_epi8(qa));
            _mm_storeu_si128((__m128i *)(xq + m * K + g * GROUP + 16), _mm512_cvtsepi32_epi8(qb));
            const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
            d[m * G + g] = scale;
            dx[m * G + g] = scale * (float)sum;
            start[m * G + g] = bias * sum;
        }
}

/* One group's codes for a block of 16 rows, as 8 vectors of 16 lanes x 4 consecutive inputs. */
static inline void codes8(const uint8_t *w, __m512i *v) { /* 512 bytes */
    for (int c = 0; c < 8; c++) v[c] = _mm512_loadu_si512(w + 64 * c);
}

static inline void codes4(const uint8_t *w, __m512i *v) { /* 256 bytes */
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 4; c++) {
        const __m512i bytes = _mm512_loadu_si512(w + 64 * c);
        v[2 * c] = _mm512_and_si512(bytes, mask);
        v[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), mask);
    }
}

/* MB rows of x times one block of 16 output rows, over all K inputs; OFF: the weight has offsets
 * (and then no zero point: ``from_codes`` folds it into the offsets). The row loops are unrolled
 * so that the MB sums stay in registers, and each chunk of codes meets every row in turn: MB
 * independent dot products in flight (16 rows, 1536 x 576, one core: 282 -> 299 GMAC/s). */
#define TILE(MB, BITS, OFF)                                                                          \
    static inline void tile_##MB##_##BITS##_##OFF(const uint8_t *w, const float *s, const float *o,  \
                                                  const int8_t *xq, const float *d, const float *dx, \
                                                  const int32_t *start, float *y, int64_t N,         \
                                                  int64_t K, __mmask16 valid, const uint8_t *next) { \
        const int64_t G = K / GROUP;                                                                 \
        __m512 acc[MB];                                                                              \
        for (int r = 0; r < MB; r++) acc[r] = _mm512_setzero_ps();                                   \
        for (int64_t g = 0; g < G; g++) {                                                            \
            __m512i v[8];                                                                            \
            codes##BITS(w + g * (LANES * GROUP * BITS / 8), v);                                      \
            if (next)                                                                                \
                for (int l = 0; l < LANES * GROUP * BITS / 8; l += 64)                               \
                    _mm_prefetch((const char *)next + g * (LANES * GROUP * BITS / 8) + l, _MM_HINT_T1); \
            const __m512 sg = _mm512_loadu_ps(s + g * LANES);                                        \
            const __m512 og = OFF ? _mm512_loadu_ps(o + g * LANES) : _mm512_setzero_ps();            \
            /* chunk by chunk over the rows: MB independent sums in flight */                      \
            __m512i dot[MB];                                                                         \
            for (int r = 0; r < MB; r++) dot[r] = _mm512_set1_epi32(start[r * G + g]);                \
            _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++)                                      \
                _Pragma("GCC unroll 8") for (int r = 0; r < MB; r++)                                 \
                    dot[r] = _mm512_dpbusd_epi32(dot[r], v[c], _mm512_set1_epi32(four_bytes(xq + r * K + g * GROUP + 4 * c))); \
            _Pragma("GCC unroll 8") for (int r = 0; r < MB; r++) {                                   \
                const __m512 sd = _mm512_mul_ps(sg, _mm512_set1_ps(d[r * G + g]));                   \
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), sd, acc[r]);                    \
                if (OFF) acc[r] = _mm512_fmadd_ps(og, _mm512_set1_ps(dx[r * G + g]), acc[r]);        \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < MB; r++) _mm512_mask_storeu_ps(y + r * N, valid, acc[r]);                \
    }

#define TILES(BITS, OFF) TILE(8, BITS, OFF) TILE(4, BITS, OFF) TILE(2, BITS, OFF) TILE(1, BITS, OFF)
TILES(8, 0)
TILES(8, 1)
TILES(4, 0)
TILES(4, 1)

/* The tile for mb (8, 4, 2 or 1) rows. */
#define DISPATCH(BITS, OFF)                                                                          \
    static inline void tile_##BITS##_##OFF(int64_t mb, const uint8_t *w, const float *s, const float *o, \
                                          const int8_t *xq, const float *d, const float *dx,         \
                                          const int32_t *start, float *y, int64_t N, int64_t K,      \
                                          __mmask16 valid, const uint8_t *next) {                    \
        if (mb == 8) tile_8_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid, next);         \
        else if (mb == 4) tile_4_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid, next);    \
        else if (mb == 2) tile_2_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid, next);    \
        else tile_1_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid, next);                \
    }
DISPATCH(8, 0)
DISPATCH(8, 1)
DISPATCH(4, 0)
DISPATCH(4, 1)


/* One block of 16 output rows: y[:, n .. n + 16] for every row of x, tile by tile of up to 8 rows. */
static void block_product(int64_t b, const uint8_t *codes, const float *scale, const float *offset,
                          const int8_t *xq, const float *d, const float *dx, const int32_t *start, float *y,
                          int64_t M, int64_t N, int64_t K, int64_t bits) {
    const int64_t G = K / GROUP, blocks = (N + LANES - 1) / LANES, block_bytes = G * LANES * GROUP * bits / 8;
    const int64_t n = b * LANES, rows = N - n < LANES ? N - n : LANES;
    const __mmask16 valid = (__mmask16)((1u << rows) - 1u);
    const uint8_t *w = codes + b * block_bytes;
    const float *s = scale + b * G * LANES, *o = offset ? offset + b * G * LANES : 0;
    for (int64_t m = 0; m < M;) {
        const int64_t left = M - m, mb = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const int8_t *xm = xq + m * K;
        const float *dm = d + m * G, *dxm = dx + m * G;
        const int32_t *sm = start + m * G;
        float *ym = y + m * N + n;
        /* the first tile of rows fetches the next block's codes (group by group, in the tile) and
         * its scales and offsets while it computes: at 16 rows a step's products ran 7.5 ms
         * without, 5.8 with the codes alone, 5.4 with all three (the hardware's prefetcher
         * does not keep up with the three streams) */
        const uint8_t *next = m == 0 && b + 1 < blocks ? w + block_bytes : 0;
        if (next)
            for (int64_t l = 0; l < G * LANES * (int64_t)sizeof(float); l += 64) {
                _mm_prefetch((const char *)(s + G * LANES) + l, _MM_HINT_T1);
                if (o) _mm_prefetch((const char *)(o + G * LANES) + l, _MM_HINT_T1);
            }
        if (bits == 4) {
            if (o) tile_4_1(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid, next);
            else tile_4_0(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid, next);
        } else {
            if (o) tile_8_1(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid, next);
            else tile_8_0(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid, next);
        }
        m += mb;
    }
}

#elif defined(__AVX2__)
/* 8-bit codes are made signed here (code - 128): the correction is (128 - zero) * X for them */
#define START_BIAS(bits, zero) ((bits) == 8 ? 128 - (zero) : -(zero))

/* As the AVX-512 build's, in scalar code: the same products and roundings (nearest, ties to even). */
static void quantize_rows(const float *x, int64_t M, int64_t K, int32_t bias, int8_t *xq, float *d, float *dx,
                          int32_t *start) {
    const int64_t G = K / GROUP;
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            const float *p = x + m * K + g * GROUP;
            float amax = 0.0f;
            for (int j = 0; j < GROUP; j++) amax = fmaxf(amax, fabsf(p[j]));
            const float scale = amax / 127.0f;
            const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
            int32_t sum = 0;
            for (int j = 0; j < GROUP; j++) {
                const int32_t q = (int32_t)nearbyintf(p[j] * inverse);
                xq[m * K + g * GROUP + j] = (int8_t)(q > 127 ? 127 : q < -128 ? -128 : q);
                sum += q;
            }
            d[m * G + g] = scale;
            dx[m * G + g] = scale * (float)sum;
            start[m * G + g] = bias * sum;
        }
}

/* sum over each 4 bytes of u (unsigned) times x (signed), as int32 lanes: vpdpbusd's products */
static inline __m256i dot4(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

/* MB rows of x times half ``half`` (8 rows) of a block of 16 output rows, over all K inputs. */
#define TILE(MB, BITS, OFF)                                                                          \
    static inline void tile_##MB##_##BITS##_##OFF(const uint8_t *w, const float *s, const float *o,  \
                                                  const int8_t *xq, const float *d, const float *dx, \
                                                  const int32_t *start, float *y, int64_t N,         \
                                                  int64_t K, __m256i valid) {                        \
        const int64_t G = K / GROUP;                                                                 \
        __m256 acc[MB];                                                                              \
        for (int r = 0; r < MB; r++) acc[r] = _mm256_setzero_ps();                                   \
        for (int64_t g = 0; g < G; g++) {                                                            \
            const uint8_t *wg = w + g * (LANES * GROUP * BITS / 8);                                  \
            const int8_t *xg = xq + g * GROUP;                                                       \
            /* 4-bit codes: the group's 16-bit pair sums add up in 16 bits (8 x 2 x 15 x 127 < 2^15) */ \
            __m256i dot[MB], pairs[MB];                                                              \
            for (int r = 0; r < MB; r++) {                                                           \
                dot[r] = _mm256_set1_epi32(start[r * G + g]);                                        \
                pairs[r] = _mm256_setzero_si256();                                                   \
            }                                                                                        \
            _Pragma("GCC unroll 8") for (int c = 0; c < LANES * GROUP * BITS / 512; c++) { /* chunks */ \
                const __m256i bytes = _mm256_loadu_si256((const __m256i *)(wg + 64 * c));            \
                if (BITS == 8) {                                                                     \
                    const __m256i ws = _mm256_xor_si256(bytes, _mm256_set1_epi8((char)0x80));        \
                    const __m256i u = _mm256_abs_epi8(ws);                                           \
                    _Pragma("GCC unroll 4") for (int r = 0; r < MB; r++) {                           \
                        const __m256i xb = _mm256_set1_epi32(four_bytes(xg + r * K + 4 * c));        \
                        dot[r] = _mm256_add_epi32(dot[r], dot4(u, _mm256_sign_epi8(xb, ws)));        \
                    }                                                                                \
                } else {                                                                             \
                    const __m256i mask = _mm256_set1_epi8(0x0F);                                     \
                    const __m256i lo = _mm256_and_si256(bytes, mask);                                \
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);          \
                    _Pragma("GCC unroll 4") for (int r = 0; r < MB; r++) {                           \
                        const int8_t *xr = xg + r * K + 8 * c;                                       \
                        const __m256i xlo = _mm256_set1_epi32(four_bytes(xr)), xhi = _mm256_set1_epi32(four_bytes(xr + 4)); \
                        pairs[r] = _mm256_add_epi16(pairs[r], _mm256_maddubs_epi16(lo, xlo));        \
                        pairs[r] = _mm256_add_epi16(pairs[r], _mm256_maddubs_epi16(hi, xhi));        \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
            if (BITS == 4)                                                                           \
                for (int r = 0; r < MB; r++)                                                         \
                    dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(pairs[r], _mm256_set1_epi16(1))); \
            const __m256 sg = _mm256_loadu_ps(s + g * LANES);                                        \
            const __m256 og = OFF ? _mm256_loadu_ps(o + g * LANES) : _mm256_setzero_ps();            \
            _Pragma("GCC unroll 4") for (int r = 0; r < MB; r++) {                                   \
                const __m256 sd = _mm256_mul_ps(sg, _mm256_set1_ps(d[r * G + g]));                   \
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), sd, acc[r]);                    \
                if (OFF) acc[r] = _mm256_fmadd_ps(og, _mm256_set1_ps(dx[r * G + g]), acc[r]);        \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < MB; r++) _mm256_maskstore_ps(y + r * N, valid, acc[r]);                 \
    }

#define TILES(BITS, OFF) TILE(4, BITS, OFF) TILE(2, BITS, OFF) TILE(1, BITS, OFF)
TILES(8, 0)
TILES(8, 1)
TILES(4, 0)
TILES(4, 1)

#define DISPATCH(BITS, OFF)                                                                          \
    static inline void tile_##BITS##_##OFF(int64_t mb, const uint8_t *w, const float *s, const float *o, \
                                          const int8_t *xq, const float *d, const float *dx,         \
                                          const int32_t *start, float *y, int64_t N, int64_t K,      \
                                          __m256i valid) {                                           \
        if (mb == 4) tile_4_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid);               \
        else if (mb == 2) tile_2_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid);          \
        else tile_1_##BITS##_##OFF(w, s, o, xq, d, dx, start, y, N, K, valid);                      \
    }
DISPATCH(8, 0)
DISPATCH(8, 1)
DISPATCH(4, 0)
DISPATCH(4, 1)

/* One block of 16 output rows, as two halves of 8 (their 32 bytes of each chunk, scales, offsets). */
static void block_product(int64_t b, const uint8_t *codes, const float *scale, const float *offset,
                          const int8_t *xq, const float *d, const float *dx, const int32_t *start, float *y,
                          int64_t M, int64_t N, int64_t K, int64_t bits) {
    const int64_t G = K / GROUP, block_bytes = G * LANES * GROUP * bits / 8;
    const int64_t n = b * LANES, rows = N - n < LANES ? N - n : LANES;
    for (int64_t half = 0; half < 2 && 8 * half < rows; half++) {
        const int64_t live = rows - 8 * half < 8 ? rows - 8 * half : 8;
        const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)live), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const uint8_t *w = codes + b * block_bytes + 32 * half;
        const float *s = scale + b * G * LANES + 8 * half;
        const float *o = offset ? offset + b * G * LANES + 8 * half : 0;
        for (int64_t m = 0; m < M;) {
            const int64_t left = M - m, mb = left >= 4 ? 4 : left >= 2 ? 2 : 1;
            const int8_t *xm = xq + m * K;
            const float *dm = d + m * G, *dxm = dx + m * G;
            const int32_t *sm = start + m * G;
            float *ym = y + m * N + n + 8 * half;
            if (bits == 4) {
                if (o) tile_4_1(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid);
                else tile_4_0(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid);
            } else {
                if (o) tile_8_1(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid);
                else tile_8_0(mb, w, s, o, xm, dm, dxm, sm, ym, N, K, valid);
            }
            m += mb;
        }
    }
}
#endif

#if defined(__AVX2__)
/* Scratch for the rounded activations, kept per calling thread and grown as needed. */
static _Thread_local void *scratch;
static _Thread_local size_t scratch_bytes;

static void *scratch_of(size_t bytes) {
    if (bytes > scratch_bytes) {
        free(scratch);
        scratch = malloc(bytes);
        scratch_bytes = scratch ? bytes : 0;
    }
    return scratch;
}

/* y [M, N] = x [M, K] @ W.T with x rounded to int8 per block of 32; offset may be NULL.
 * Returns 0, or -1 when the scratch cannot be allocated. OpenMP over blocks of 16 output rows. */
int tl_qmatmul_i8(const uint8_t *codes, const float *scale, const float *offset, const float *x, float *y,
                  int64_t M, int64_t N, int64_t K, int64_t bits, int64_t zero) {
    const int64_t G = K / GROUP, blocks = (N + LANES - 1) / LANES;
    char *buffer = scratch_of((size_t)(M * K + 3 * 4 * M * G));
    if (buffer == NULL) return -1;
    int8_t *xq = (int8_t *)buffer;
    float *d = (float *)(buffer + M * K), *dx = d + M * G;
    int32_t *start = (int32_t *)(dx + M * G);
    quantize_rows(x, M, K, (int32_t)START_BIAS(bits, zero), xq, d, dx, start);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) block_product(b, codes, scale, offset, xq, d, dx, start, y, M, N, K, bits);
    return 0;
}
#endif
