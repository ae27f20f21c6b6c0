/* Group-quantized matrix product for the serving engine (AVX2 + FMA, OpenMP over output rows).
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

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* R consecutive output rows times MB consecutive rows of x, over all K inputs. */
#define TILE(R, MB)                                                                                  \
    static inline void tile_##R##_##MB(const int8_t *q, const float *s, const float *o,              \
                                       const float *x, float *y, int64_t N, int64_t K) {             \
        const int64_t G = K / GROUP;                                                                 \
        __m256 acc[R][MB];                                                                           \
        for (int r = 0; r < R; r++)                                                                  \
            for (int b = 0; b < MB; b++) acc[r][b] = _mm256_setzero_ps();                            \
        for (int64_t g = 0; g < G; g++) {                                                            \
            for (int r = 0; r < R; r++) {                                                            \
                const int8_t *qg = q + r * K + g * GROUP;                                            \
                const __m256 sg = _mm256_set1_ps(s[r * G + g]);                                      \
                const __m256 og = o ? _mm256_set1_ps(o[r * G + g]) : _mm256_setzero_ps();            \
                __m256 w[4];                                                                         \
                for (int j = 0; j < 4; j++) {                                                        \
                    __m128i b8 = _mm_loadl_epi64((const __m128i *)(qg + 8 * j));                     \
                    w[j] = _mm256_fmadd_ps(sg, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b8)), og);    \
                }                                                                                    \
                for (int b = 0; b < MB; b++) {                                                       \
                    const float *xg = x + b * K + g * GROUP;                                         \
                    for (int j = 0; j < 4; j++)                                                      \
                        acc[r][b] = _mm256_fmadd_ps(w[j], _mm256_loadu_ps(xg + 8 * j), acc[r][b]);   \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int b = 0; b < MB; b++) y[b * N + r] = hsum(acc[r][b]);                             \
    }

TILE(4, 2)
TILE(4, 1)
TILE(1, 2)
TILE(1, 1)

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
            for (int64_t m = 0; m < M; m += 2) {
                const float *xm = x + m * K;
                float *ym = y + m * N + n;
                if (M - m >= 2) {
                    if (rows == 4) tile_4_2(qn, sn, on, xm, ym, N, K);
                    else tile_1_2(qn, sn, on, xm, ym, N, K);
                } else {
                    if (rows == 4) tile_4_1(qn, sn, on, xm, ym, N, K);
                    else tile_1_1(qn, sn, on, xm, ym, N, K);
                }
            }
        }
    }
}
