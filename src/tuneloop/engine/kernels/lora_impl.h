/* The LoRA kernel's body, included by lora.c once per factor type: FACTOR (float, or _Float16
 * with HALF 1) and NAME(x) (the name of x for that type). */

#define ELEMENT FACTOR
#include "as_float.h"
#undef ELEMENT
/* t[r, j0 : j0 + CHUNK] = x[r] @ At[:, j0 : j0 + CHUNK] for ``rows`` rows (a constant once inlined) */
INLINE void NAME(down)(const float *x, const FACTOR *at, float *t, int64_t K, int64_t rank, int64_t R, int64_t j0,
                 int rows) {
    float acc[ROWS][CHUNK] = {{0}};
    for (int64_t k = 0; k < K; k++) {
        float wide[CHUNK];
        const float *a = NAME(as_float)(at + k * rank + j0, wide, CHUNK);
        for (int r = 0; r < rows; r++) {
            const float xk = x[r * K + k];
#pragma omp simd
            for (int j = 0; j < CHUNK; j++) acc[r][j] += xk * (float)a[j];
        }
    }
    for (int r = 0; r < rows; r++) memcpy(t + r * R + j0, acc[r], sizeof(acc[r]));
}

/* y[r, :width] += t[r] @ b[:, :width] for ``rows`` rows and ``width`` columns (constants once
 * inlined); row j of b (Bt's block of columns, as float32) starts at b + j * ldb */
INLINE void NAME(up)(const float *t, const float *bt, int64_t ldb, float *y, int64_t N, int64_t rank, int64_t R,
                     int rows, int width) {
    float acc[ROWS][BLOCK] = {{0}};
    for (int64_t j = 0; j < rank; j++) {
        const float *b = bt + j * ldb;
        for (int r = 0; r < rows; r++) {
            const float tj = t[r * R + j];
#pragma omp simd
            for (int i = 0; i < width; i++) acc[r][i] += tj * b[i];
        }
    }
    for (int r = 0; r < rows; r++) {
#pragma omp simd
        for (int i = 0; i < width; i++) y[r * N + i] += acc[r][i];
    }
}

#if defined(__AVX512F__)
/* down for 16 rank values at a time (512-bit lanes; two accumulators per row over even and odd
 * inputs, so that the FMAs' latency overlaps); ``rows`` a constant once inlined */
INLINE void NAME(down16)(const float *x, const FACTOR *at, float *t, int64_t K, int64_t rank, int64_t R, int rows) {
    for (int64_t j0 = 0; j0 < rank; j0 += 16) {
        __m512 even[ROWS], odd[ROWS];
        for (int r = 0; r < rows; r++) even[r] = odd[r] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 1 < K; k += 2) {
            const __m512 a0 = LOAD16(at + k * rank + j0), a1 = LOAD16(at + (k + 1) * rank + j0);
            for (int r = 0; r < rows; r++) {
                even[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k]), a0, even[r]);
                odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k + 1]), a1, odd[r]);
            }
        }
        if (k < K) {
            const __m512 a0 = LOAD16(at + k * rank + j0);
            for (int r = 0; r < rows; r++) even[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k]), a0, even[r]);
        }
        for (int r = 0; r < rows; r++) _mm512_storeu_ps(t + r * R + j0, _mm512_add_ps(even[r], odd[r]));
    }
}

/* up for a whole block of 64 columns, the factor read (and converted) in registers; ``rows`` a
 * constant once inlined */
INLINE void NAME(up16)(const float *t, const FACTOR *bt, float *y, int64_t N, int64_t rank, int64_t R, int rows) {
    __m512 acc[ROWS][BLOCK / 16];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < BLOCK / 16; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < rank; j++) {
        __m512 b[BLOCK / 16];
        for (int c = 0; c < BLOCK / 16; c++) b[c] = LOAD16(bt + j * N + 16 * c);
        for (int r = 0; r < rows; r++) {
            const __m512 tj = _mm512_set1_ps(t[r * R + j]);
            for (int c = 0; c < BLOCK / 16; c++) acc[r][c] = _mm512_fmadd_ps(tj, b[c], acc[r][c]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < BLOCK / 16; c++) {
            float *out = y + r * N + 16 * c;
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), acc[r][c]));
        }
}
#undef LOAD16
#define HAS16 1
#else
#define HAS16 0
#endif

static void NAME(down_rows)(const float *x, const FACTOR *at, float *t, int64_t K, int64_t rank, int64_t R, int rows) {
#if HAS16
    if (rank % 16 == 0) {
        switch (rows) {
            case 4: NAME(down16)(x, at, t, K, rank, R, 4); break;
            case 3: NAME(down16)(x, at, t, K, rank, R, 3); break;
            case 2: NAME(down16)(x, at, t, K, rank, R, 2); break;
            default: NAME(down16)(x, at, t, K, rank, R, 1);
        }
        return;
    }
#endif
    for (int64_t j0 = 0; j0 < rank; j0 += CHUNK) switch (rows) {
            case 4: NAME(down)(x, at, t, K, rank, R, j0, 4); break;
            case 3: NAME(down)(x, at, t, K, rank, R, j0, 3); break;
            case 2: NAME(down)(x, at, t, K, rank, R, j0, 2); break;
            default: NAME(down)(x, at, t, K, rank, R, j0, 1);
        }
}

static void NAME(up_rows)(const float *t, const float *bt, int64_t ldb, float *y, int64_t N, int64_t rank,
                          int64_t R, int rows, int width) {
    if (width < BLOCK) { /* the last, partial block of columns */
        NAME(up)(t, bt, ldb, y, N, rank, R, rows, width);
        return;
    }
    switch (rows) {
        case 4: NAME(up)(t, bt, ldb, y, N, rank, R, 4, BLOCK); break;
        case 3: NAME(up)(t, bt, ldb, y, N, rank, R, 3, BLOCK); break;
        case 2: NAME(up)(t, bt, ldb, y, N, rank, R, 2, BLOCK); break;
        default: NAME(up)(t, bt, ldb, y, N, rank, R, 1, BLOCK);
    }
}

void NAME(tl_lora)(const float *x, float *y, int64_t M, int64_t K, int64_t N, int64_t groups, const int64_t *row_start,
             const int64_t *table, int64_t entries, int64_t entry, float *t) {
    const int64_t *factors[groups]; /* group g's (At, Bt, rank) for this projection */
    int64_t first[groups + 1], R = 0; /* first[g]: group g's first row block */
    first[0] = 0;
    for (int64_t g = 0; g < groups; g++) {
        factors[g] = table + (g * entries + entry) * 3;
        const int64_t rows = row_start[g + 1] - row_start[g];
        first[g + 1] = first[g] + (factors[g][2] ? (rows + ROWS - 1) / ROWS : 0);
        R = factors[g][2] > R ? factors[g][2] : R;
    }
    if (R == 0 || M == 0) return;
    const int64_t blocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t task = 0; task < first[groups]; task++) {
            int64_t g = 0;
            while (task >= first[g + 1]) g++;
            const int64_t m0 = row_start[g] + (task - first[g]) * ROWS, left = row_start[g + 1] - m0;
            NAME(down_rows)(x + m0 * K, (const FACTOR *)factors[g][0], t + m0 * R, K, factors[g][2], R,
                      left < ROWS ? (int)left : ROWS);
        }
#pragma omp for schedule(static)
        for (int64_t block = 0; block < blocks; block++) {
            const int64_t n0 = block * BLOCK, width = N - n0 < BLOCK ? N - n0 : BLOCK;
            for (int64_t g = 0; g < groups; g++) {
                if (!factors[g][2]) continue;
                if (n0 + BLOCK < N) { /* the next block's factor rows: one stream per rank value and
                                         * adapter is more than the hardware prefetcher follows */
                    const FACTOR *next = (const FACTOR *)factors[g][1] + n0 + BLOCK;
                    for (int64_t j = 0; j < factors[g][2]; j++)
                        for (int l = 0; l < BLOCK; l += 64 / (int)sizeof(FACTOR)) __builtin_prefetch(next + j * N + l);
                }
                const FACTOR *bt = (const FACTOR *)factors[g][1] + n0;
#if HAS16
                if (width == BLOCK) { /* read and converted in registers */
                    for (int64_t m0 = row_start[g]; m0 < row_start[g + 1]; m0 += ROWS) {
                        const int64_t left = row_start[g + 1] - m0, rank = factors[g][2];
                        float *ym = y + m0 * N + n0;
                        switch (left < ROWS ? (int)left : ROWS) {
                            case 4: NAME(up16)(t + m0 * R, bt, ym, N, rank, R, 4); break;
                            case 3: NAME(up16)(t + m0 * R, bt, ym, N, rank, R, 3); break;
                            case 2: NAME(up16)(t + m0 * R, bt, ym, N, rank, R, 2); break;
                            default: NAME(up16)(t + m0 * R, bt, ym, N, rank, R, 1);
                        }
                    }
                    continue;
                }
#endif
                /* the block of Bt as float32: in place, or float16 converted once for all the rows */
                const float *b = (const float *)bt;
                int64_t ldb = N;
#if HALF
                float wide[factors[g][2] * BLOCK];
                for (int64_t j = 0; j < factors[g][2]; j++) NAME(as_float)(bt + j * N, wide + j * BLOCK, (int)width);
                b = wide, ldb = BLOCK;
#endif
                for (int64_t m0 = row_start[g]; m0 < row_start[g + 1]; m0 += ROWS) {
                    const int64_t left = row_start[g + 1] - m0;
                    NAME(up_rows)(t + m0 * R, b, ldb, y + m0 * N + n0, N, factors[g][2], R,
                                  left < ROWS ? (int)left : ROWS, (int)width);
                }
            }
        }
    }
}
#undef HAS16
