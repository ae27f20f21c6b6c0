/* Group-quantized matrix product for the serving engine (AVX2 + FMA, or AVX-512 where the
 * compiler is told so; OpenMP over output rows).
 *
 * The weight W [N, K] is stored as int8 codes q [N, K] with one scale (and optionally one offset)
 * per group of 32 consecutive inputs of a row:  W[n, k] = scale[n, k/32] * q[n, k] + offset[n, k/32].
 * This holds GGUF's Q8_0, Q4_0 and Q4_1 blocks exactly (4-bit codes are kept one per byte).
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

/* R consecutive output rows times MB consecutive rows of x, over all K inputs. Every tile adds the
 * same products in the same order, so y[m, n] does not depend on the tile that computed it. */
#define TILE(R, MB)                                                                                  \
    static inline void tile_##R##_##MB(const int8_t *q, const float *s, const float *o,              \
                                       const float *x, float *y, int64_t N, int64_t K) {             \
        const int64_t G = K / GROUP;                                                                 \
        vec acc[R][MB];                                                                              \
        for (int r = 0; r < R; r++)                                                                  \
            for (int b = 0; b < MB; b++) acc[r][b] = VZERO();                                        \
        for (int64_t g = 0; g < G; g++) {                                                            \
            for (int r = 0; r < R; r++) {                                                            \
                const int8_t *qg = q + r * K + g * GROUP;                                            \
                const vec sg = VSET(s[r * G + g]), og = o ? VSET(o[r * G + g]) : VZERO();            \
                vec w[PARTS];                                                                        \
                for (int j = 0; j < PARTS; j++) w[j] = VFMA(sg, VCODES(qg + LANES * j), og);         \
                for (int b = 0; b < MB; b++) {                                                       \
                    const float *xg = x + b * K + g * GROUP;                                         \
                    for (int j = 0; j < PARTS; j++) acc[r][b] = VFMA(w[j], VLOAD(xg + LANES * j), acc[r][b]); \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int b = 0; b < MB; b++) y[b * N + r] = VSUM(acc[r][b]);                             \
    }

TILE(4, 1)
TILE(4, 2)
TILE(1, 1)
TILE(1, 2)
#if MB_MAX == 8
TILE(4, 4)
TILE(1, 4)
TILE(2, 8)
TILE(1, 8)
#endif

static inline void tile(int rows, int mb, const int8_t *q, const float *s, const float *o, const float *x,
                        float *y, int64_t N, int64_t K) {
#if MB_MAX == 8
    if (mb == 8) { /* measured: 2 x 8 tiles beat 4 x 4 ones by ~40% at 8 inputs (fewer dequantizations) */
        if (rows == 4) {
            tile_2_8(q, s, o, x, y, N, K);
            tile_2_8(q + 2 * K, s + 2 * (K / GROUP), o ? o + 2 * (K / GROUP) : 0, x, y + 2, N, K);
        } else tile_1_8(q, s, o, x, y, N, K);
        return;
    }
    if (mb == 4) {
        if (rows == 4) tile_4_4(q, s, o, x, y, N, K);
        else tile_1_4(q, s, o, x, y, N, K);
        return;
    }
#endif
    if (mb == 2) {
        if (rows == 4) tile_4_2(q, s, o, x, y, N, K);
        else tile_1_2(q, s, o, x, y, N, K);
    } else {
        if (rows == 4) tile_4_1(q, s, o, x, y, N, K);
        else tile_1_1(q, s, o, x, y, N, K);
    }
}

/* y [M, N] = x [M, K] @ W.T; offset may be NULL (symmetric codes). K must be a multiple of 32. */
void tl_qmatmul(const int8_t *q, const float *scale, const float *offset, const float *x, float *y,
                int64_t M, int64_t N, int64_t K) {
    const int64_t G = K / GROUP;
    const int64_t blocks = (N + 3) / 4;
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t first = block * 4, rows = N - first < 4 ? N - first : 4;
        for (int64_t n = first; n < first + rows; n += rows == 4 ? 4 : 1) {
            const int8_t *qn = q + n * K;
            const float *sn = scale + n * G, *on = offset ? offset + n * G : 0;
            for (int64_t m = 0; m < M;) {
                const int mb = M - m >= MB_MAX ? MB_MAX : (MB_MAX > 4 && M - m >= 4) ? 4 : M - m >= 2 ? 2 : 1;
                tile(rows == 4 ? 4 : 1, mb, qn, sn, on, x + m * K, y + m * N + n, N, K);
                m += mb;
            }
        }
    }
}
