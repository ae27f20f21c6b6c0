/* Group-quantized matrix product for the serving engine (AVX2 + FMA, or AVX-512 where the
 * compiler is told so; OpenMP over output rows).
 *
 * The weight W [N, K] is stored as int8 codes q [N, K] with one scale (and optionally one offset)
 * per group of 32 consecutive inputs of a row:  W[n, k] = scale[n, k/32] * q[n, k] + offset[n, k/32].
 * This holds GGUF's Q8_0, Q4_0 and Q4_1 blocks exactly. ``tl_qmatmul`` reads int8 codes, one per
 * byte; ``tl_qmatmul4`` 4-bit codes (0..15) two per byte, as GGUF packs them: byte j of a group
 * holds code j in its low nibble and code j + 16 in its high one (16 bytes per 32 codes).
 *
 *     y[m, n] = sum_k W[n, k] * x[m, k]        for M rows of x (float32, row-major)
 *
 * Each weight group is dequantized once into registers and used for every row of x, so the weight
 * is read once per call whatever M is: decode is bound by int8 bytes instead of float32 bytes.
 * Every y[m, n] is computed with the same sequence of operations whatever M is and whichever other
 * rows x holds, so a sequence's result never depends on the batch it is computed in.
 */
#include <immintrin.h>
#include <stdint.h>

#include "tuneloop.h"

#define GROUP 32

#if defined(__AVX512F__)
/* 512-bit lanes: one group of 32 inputs is two vectors. */
typedef __m512 vec;
#define LANES 16
#define VZERO() _mm512_setzero_ps()
#define VSET(v) _mm512_set1_ps(v)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VCODES(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VSUM(v) _mm512_reduce_add_ps(v)
#define MB_MAX 8 /* 32 registers: tiles up to 2 rows x 8 inputs of accumulators */
#else
/* 256-bit lanes (AVX2): one group is four vectors. */
typedef __m256 vec;
#define LANES 8
#define VZERO() _mm256_setzero_ps()
#define VSET(v) _mm256_set1_ps(v)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VCODES(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
static inline float hsum256(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
#define VSUM(v) hsum256(v)
#define MB_MAX 2 /* 16 registers: 4 rows x 2 inputs of accumulators, 4 of weights */
#endif
#define PARTS (GROUP / LANES)

/* One group of 32 weights of a row, dequantized into PARTS vectors: w = scale * code + offset. */
static inline void dequant8(const int8_t *q, vec s, vec o, vec *w) { /* 32 bytes */
    for (int j = 0; j < PARTS; j++) w[j] = VFMA(s, VCODES(q + LANES * j), o);
}

static inline void dequant4(const int8_t *q, vec s, vec o, vec *w) { /* 16 bytes */
    const __m128i bytes = _mm_loadu_si128((const __m128i *)q), mask = _mm_set1_epi8(0x0F);
    const __m128i low = _mm_and_si128(bytes, mask), high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
#if defined(__AVX512F__)
    w[0] = VFMA(s, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)), o);
    w[1] = VFMA(s, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), o);
#else
    w[0] = VFMA(s, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low)), o);
    w[1] = VFMA(s, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(low, 8))), o);
    w[2] = VFMA(s, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high)), o);
    w[3] = VFMA(s, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(high, 8))), o);
#endif
}

/* R consecutive output rows times MB consecutive rows of x, over all K inputs, for codes of BITS
 * bits. Every tile adds the same products in the same order, so y[m, n] does not depend on the
 * tile that computed it. */
#define TILE(R, MB, BITS)                                                                            \
    static inline void tile_##R##_##MB##_##BITS(const int8_t *q, const float *s, const float *o,     \
                                                const float *x, float *y, int64_t N, int64_t K) {    \
        const int64_t G = K / GROUP, row_bytes = K * BITS / 8;                                       \
        vec acc[R][MB];                                                                              \
        for (int r = 0; r < R; r++)                                                                  \
            for (int b = 0; b < MB; b++) acc[r][b] = VZERO();                                        \
        for (int64_t g = 0; g < G; g++) {                                                            \
            for (int r = 0; r < R; r++) {                                                            \
                const vec sg = VSET(s[r * G + g]), og = o ? VSET(o[r * G + g]) : VZERO();            \
                vec w[PARTS];                                                                        \
                dequant##BITS(q + r * row_bytes + g * (GROUP * BITS / 8), sg, og, w);                \
                for (int b = 0; b < MB; b++) {                                                       \
                    const float *xg = x + b * K + g * GROUP;                                         \
                    for (int j = 0; j < PARTS; j++) acc[r][b] = VFMA(w[j], VLOAD(xg + LANES * j), acc[r][b]); \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int b = 0; b < MB; b++) y[b * N + r] = VSUM(acc[r][b]);                             \
    }

#if MB_MAX == 8
#define TILES(BITS) TILE(4, 1, BITS) TILE(4, 2, BITS) TILE(1, 1, BITS) TILE(1, 2, BITS) \
                    TILE(4, 4, BITS) TILE(1, 4, BITS) TILE(2, 8, BITS) TILE(1, 8, BITS)
#else
#define TILES(BITS) TILE(4, 1, BITS) TILE(4, 2, BITS) TILE(1, 1, BITS) TILE(1, 2, BITS)
#endif
TILES(8)
TILES(4)

/* The tile for ``rows`` (4 or 1) output rows and ``mb`` rows of x, then the whole product: OpenMP
 * over blocks of 4 output rows. y [M, N] = x [M, K] @ W.T; offset may be NULL (symmetric codes);
 * K must be a multiple of 32. */
#if MB_MAX == 8
#define WIDE_TILES(BITS)                                                                             \
    if (mb == 8) { /* measured: 2 x 8 tiles beat 4 x 4 ones by ~40% at 8 inputs (fewer dequantizations) */ \
        if (rows == 4) {                                                                             \
            tile_2_8_##BITS(q, s, o, x, y, N, K);                                                    \
            tile_2_8_##BITS(q + 2 * (K * BITS / 8), s + 2 * (K / GROUP), o ? o + 2 * (K / GROUP) : 0, x, y + 2, N, K); \
        } else tile_1_8_##BITS(q, s, o, x, y, N, K);                                                 \
        return;                                                                                      \
    }                                                                                                \
    if (mb == 4) {                                                                                   \
        if (rows == 4) tile_4_4_##BITS(q, s, o, x, y, N, K);                                         \
        else tile_1_4_##BITS(q, s, o, x, y, N, K);                                                   \
        return;                                                                                      \
    }
#else
#define WIDE_TILES(BITS)
#endif

#define QMATMUL(NAME, BITS)                                                                          \
    static inline void tile_##BITS(int rows, int mb, const int8_t *q, const float *s, const float *o, \
                                   const float *x, float *y, int64_t N, int64_t K) {                 \
        WIDE_TILES(BITS)                                                                             \
        if (mb == 2) {                                                                               \
            if (rows == 4) tile_4_2_##BITS(q, s, o, x, y, N, K);                                     \
            else tile_1_2_##BITS(q, s, o, x, y, N, K);                                               \
        } else {                                                                                     \
            if (rows == 4) tile_4_1_##BITS(q, s, o, x, y, N, K);                                     \
            else tile_1_1_##BITS(q, s, o, x, y, N, K);                                               \
        }                                                                                            \
    }                                                                                                \
    void NAME(const int8_t *q, const float *scale, const float *offset, const float *x, float *y,    \
              int64_t M, int64_t N, int64_t K) {                                                     \
        const int64_t G = K / GROUP, blocks = (N + 3) / 4, row_bytes = K * BITS / 8;                 \
        _Pragma("omp parallel for schedule(static)")                                                 \
        for (int64_t block = 0; block < blocks; block++) {                                           \
            const int64_t first = block * 4, rows = N - first < 4 ? N - first : 4;                   \
            for (int64_t n = first; n < first + rows; n += rows == 4 ? 4 : 1) {                      \
                const int8_t *qn = q + n * row_bytes;                                                \
                const float *sn = scale + n * G, *on = offset ? offset + n * G : 0;                  \
                for (int64_t m = 0; m < M;) {                                                        \
                    const int mb = M - m >= MB_MAX ? MB_MAX : (MB_MAX > 4 && M - m >= 4) ? 4 : M - m >= 2 ? 2 : 1; \
                    tile_##BITS(rows == 4 ? 4 : 1, mb, qn, sn, on, x + m * K, y + m * N + n, N, K);  \
                    m += mb;                                                                         \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }

QMATMUL(tl_qmatmul, 8)
QMATMUL(tl_qmatmul4, 4)
