/* LoRA updates of one projection for a batch whose rows use different adapters.
 *
 *     y[m, :] += (x[m, :] @ At_g) @ Bt_g        for every row m of group g
 *
 * x [M, K], y [M, N] (float32, row-major). Rows of group g are row_start[g] .. row_start[g + 1] - 1;
 * rows outside every group (the base model's) are left alone. The factors come from a table,
 * [groups, entries, 3] int64: for entry ``entry`` (a layer's projection) of group g, the addresses of
 * At_g [K, r] and Bt_g [r, N] (PEFT's A and B transposed, B pre-scaled) and the rank r, a multiple
 * of 8 (0: the adapter leaves this projection alone). ``t`` is scratch space for [M, largest rank].
 *
 * Two stages in one parallel region, both on blocks of up to 4 of a group's rows so that each
 * factor element loaded serves 4 rows: t = x @ At (8 of a row's r values at a time accumulate in
 * registers: no horizontal sums), then y += t @ Bt over blocks of 64 output columns. Each
 * adapter's factors are read once per call, and every row is computed with the same operations
 * whatever the batch holds.
 */
#include <stdint.h>
#include <string.h>

#define ROWS 4   /* rows per block */
#define CHUNK 8  /* rank values per accumulator of the first stage (ranks are multiples of it) */
#define BLOCK 64 /* output columns per task of the second stage */
#define INLINE static inline __attribute__((always_inline))

/* t[r, j0 : j0 + CHUNK] = x[r] @ At[:, j0 : j0 + CHUNK] for ``rows`` rows (a constant once inlined) */
INLINE void down(const float *x, const float *at, float *t, int64_t K, int64_t rank, int64_t R, int64_t j0,
                 int rows) {
    float acc[ROWS][CHUNK] = {{0}};
    for (int64_t k = 0; k < K; k++) {
        const float *a = at + k * rank + j0;
        for (int r = 0; r < rows; r++) {
            const float xk = x[r * K + k];
#pragma omp simd
            for (int j = 0; j < CHUNK; j++) acc[r][j] += xk * a[j];
        }
    }
    for (int r = 0; r < rows; r++) memcpy(t + r * R + j0, acc[r], sizeof(acc[r]));
}

/* y[r, :width] += t[r] @ Bt[:, :width] for ``rows`` rows and ``width`` columns (constants once inlined) */
INLINE void up(const float *t, const float *bt, float *y, int64_t N, int64_t rank, int64_t R, int rows,
               int width) {
    float acc[ROWS][BLOCK] = {{0}};
    for (int64_t j = 0; j < rank; j++) {
        const float *b = bt + j * N;
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

static void down_rows(const float *x, const float *at, float *t, int64_t K, int64_t rank, int64_t R, int rows) {
    for (int64_t j0 = 0; j0 < rank; j0 += CHUNK) switch (rows) {
            case 4: down(x, at, t, K, rank, R, j0, 4); break;
            case 3: down(x, at, t, K, rank, R, j0, 3); break;
            case 2: down(x, at, t, K, rank, R, j0, 2); break;
            default: down(x, at, t, K, rank, R, j0, 1);
        }
}

static void up_rows(const float *t, const float *bt, float *y, int64_t N, int64_t rank, int64_t R, int rows,
                    int width) {
    if (width < BLOCK) { /* the last, partial block of columns */
        up(t, bt, y, N, rank, R, rows, width);
        return;
    }
    switch (rows) {
        case 4: up(t, bt, y, N, rank, R, 4, BLOCK); break;
        case 3: up(t, bt, y, N, rank, R, 3, BLOCK); break;
        case 2: up(t, bt, y, N, rank, R, 2, BLOCK); break;
        default: up(t, bt, y, N, rank, R, 1, BLOCK);
    }
}

void tl_lora(const float *x, float *y, int64_t M, int64_t K, int64_t N, int64_t groups, const int64_t *row_start,
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
            down_rows(x + m0 * K, (const float *)factors[g][0], t + m0 * R, K, factors[g][2], R,
                      left < ROWS ? (int)left : ROWS);
        }
#pragma omp for schedule(static)
        for (int64_t block = 0; block < blocks; block++) {
            const int64_t n0 = block * BLOCK, width = N - n0 < BLOCK ? N - n0 : BLOCK;
            for (int64_t g = 0; g < groups; g++) {
                if (!factors[g][2]) continue;
                if (n0 + BLOCK < N) { /* the next block's factor rows: one stream per rank value and
                                         * adapter is more than the hardware prefetcher follows */
                    const float *next = (const float *)factors[g][1] + n0 + BLOCK;
                    for (int64_t j = 0; j < factors[g][2]; j++)
                        for (int l = 0; l < BLOCK; l += 16) __builtin_prefetch(next + j * N + l);
                }
                for (int64_t m0 = row_start[g]; m0 < row_start[g + 1]; m0 += ROWS) {
                    const int64_t left = row_start[g + 1] - m0;
                    up_rows(t + m0 * R, (const float *)factors[g][1] + n0, y + m0 * N + n0, N, factors[g][2], R,
                            left < ROWS ? (int)left : ROWS, (int)width);
                }
            }
        }
    }
}
