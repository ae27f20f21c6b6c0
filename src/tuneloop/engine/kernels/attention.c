/* Attention of B new tokens over their KV caches, one layer: one token for each of B sequences
 * (a decode step), or the tokens of a short prompt, all in one slot at consecutive positions.
 *
 * For token b (in KV-cache slot slots[b], at position pos[b]) and each key/value head h:
 *   1. rotate its key with RoPE (cos/sin of its position) and write key and value into the cache
 *      at pos[b] (every token's, before any attention);
 *   2. for each of the H / KV query heads that share h: rotate the query, score it against the
 *      pos[b] + 1 cached keys, softmax, and sum the cached values with those weights.
 *
 * One call replaces the ~15 small torch operations per layer that the same work takes otherwise
 * (cache writes, RoPE, a masked scaled-dot-product attention over the padded slot range, gathers);
 * their fixed costs were a fifth of a 16-sequence decode step. Every (b, h) is computed with the
 * same operations whatever else the batch holds, so results never depend on the batch.
 *
 * Layouts (float32, row-major): q [B, H, D], k and v [B, KV, D], cos and sin [B, D] (HF's
 * convention: rotate_half pairs i with i + D/2), caches [slots, KV, capacity, D], out [B, H, D].
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tuneloop.h"

#include "half.h"

#include "exp.h"

/* y = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[D/2:], x[:D/2]). */
static inline void rope(const float *x, const float *c, const float *s, float *y, int64_t D) {
    const int64_t half = D / 2;
#pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        y[i] = x[i] * c[i] - x[i + half] * s[i];
        y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
}

/* Softmax of scores[0 .. length) in place; returns 1 / (sum of the exponentials). */
static inline float softmax(float *scores, int64_t length) {
    float top = -INFINITY;
    for (int64_t t = 0; t < length; t++) top = scores[t] > top ? scores[t] : top;
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < length; t++) {
        scores[t] = exp_nonpositive(scores[t] - top);
        total += scores[t];
    }
    return 1.0f / total;
}

#if defined(__AVX512F__)
/* The sums of 16 vectors, as one vector (lane t: the sum of p[t]'s lanes): 45 shuffles and adds
 * instead of a horizontal sum per vector. */
static inline __m512 sum16(const __m512 *p) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)  /* lanes of each 128-bit quarter: [p0 0+2, p1 0+2, p0 1+3, p1 1+3] */
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(p[2 * i], p[2 * i + 1]), _mm512_unpackhi_ps(p[2 * i], p[2 * i + 1]));
    for (int i = 0; i < 4; i++)  /* quarter j: [p0, p1, p2, p3 summed over quarter j] */
        b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; i++)  /* quarters 0+1 and 2+3 of two such vectors */
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

#endif

#define CACHE float
#define HALF 0
#define NAME(x) x
#include "attention_impl.h"
#undef CACHE
#undef HALF
#undef NAME

/* The same over float16 caches (half the bytes to read: the engine's int8-activation mode). */
#define CACHE _Float16
#define HALF 1
#define NAME(x) x##_f16
#include "attention_impl.h"
#undef CACHE
#undef HALF
#undef NAME
