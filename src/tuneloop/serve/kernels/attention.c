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
#include <math.h>
#include <stdint.h>
#include <string.h>

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

void tl_decode_attention(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                         float *k_cache, float *v_cache, const int64_t *slots, const int64_t *pos, float *out,
                         int64_t B, int64_t H, int64_t KV, int64_t D, int64_t capacity, float scale) {
    const int64_t group = H / KV;
#pragma omp parallel
    {
        /* every new key and value first (a short prefill's tokens share a slot and see each other's) */
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * KV; task++) {
            const int64_t b = task / KV, h = task % KV, at = (slots[b] * KV + h) * capacity + pos[b];
            rope(k + task * D, cos + b * D, sin + b * D, k_cache + at * D, D);
            memcpy(v_cache + at * D, v + task * D, (size_t)D * sizeof(float));
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * KV; task++) {
            const int64_t b = task / KV, h = task % KV, length = pos[b] + 1;
            const float *keys = k_cache + (slots[b] * KV + h) * capacity * D;
            const float *values = v_cache + (slots[b] * KV + h) * capacity * D;
            float query[D], acc[D], scores[length];
            for (int64_t g = 0; g < group; g++) {
                const int64_t head = h * group + g;
                rope(q + (b * H + head) * D, cos + b * D, sin + b * D, query, D);
                float top = -INFINITY;
                for (int64_t t = 0; t < length; t++) {
                    const float *key = keys + t * D;
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int64_t i = 0; i < D; i++) dot += query[i] * key[i];
                    scores[t] = dot * scale;
                    top = scores[t] > top ? scores[t] : top;
                }
                float total = 0.0f;
#pragma omp simd reduction(+ : total)
                for (int64_t t = 0; t < length; t++) {
                    scores[t] = exp_nonpositive(scores[t] - top);
                    total += scores[t];
                }
                memset(acc, 0, sizeof(acc));
                for (int64_t t = 0; t < length; t++) {
                    const float *value = values + t * D, weight = scores[t];
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) acc[i] += weight * value[i];
                }
                float *o = out + (b * H + head) * D;
                const float inverse = 1.0f / total;
#pragma omp simd
                for (int64_t i = 0; i < D; i++) o[i] = acc[i] * inverse;
            }
        }
    }
}
