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

/* One (token, key/value head) of the attention with 16-float lanes (D a multiple of 16): the
 * group's queries (rotated, scaled) score 16 keys at a time, and each value is loaded once for
 * every query head of the group. */
static void attend16(const float *query, const float *keys, const float *values, float *out, int64_t group,
                     int64_t D, int64_t length, float *scores) {
    const int64_t chunks = D / 16;
    for (int64_t g = 0; g < group; g++) {
        const float *qg = query + g * D;
        float *sg = scores + g * length;
        for (int64_t t0 = 0; t0 < length; t0 += 16) {
            const int64_t n = length - t0 < 16 ? length - t0 : 16;
            __m512 p[16];
            for (int64_t t = 0; t < 16; t++) {
                __m512 acc = _mm512_setzero_ps();
                if (t < n)
                    for (int64_t c = 0; c < chunks; c++)
                        acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), _mm512_loadu_ps(keys + (t0 + t) * D + 16 * c), acc);
                p[t] = acc;
            }
            _mm512_mask_storeu_ps(sg + t0, (__mmask16)((1u << n) - 1u), sum16(p));
        }
    }
    float inverse[group];
    for (int64_t g = 0; g < group; g++) inverse[g] = softmax(scores + g * length, length);
    for (int64_t c = 0; c < chunks; c++) {
        __m512 acc[group];
        for (int64_t g = 0; g < group; g++) acc[g] = _mm512_setzero_ps();
        for (int64_t t = 0; t < length; t++) {
            const __m512 value = _mm512_loadu_ps(values + t * D + 16 * c);
            for (int64_t g = 0; g < group; g++)
                acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * length + t]), value, acc[g]);
        }
        for (int64_t g = 0; g < group; g++) _mm512_storeu_ps(out + g * D + 16 * c, _mm512_mul_ps(acc[g], _mm512_set1_ps(inverse[g])));
    }
}
#endif

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
#if defined(__AVX512F__)
            if (D % 16 == 0) {
                float query[group * D], scores[group * length];
                for (int64_t g = 0; g < group; g++) {
                    rope(q + (b * H + h * group + g) * D, cos + b * D, sin + b * D, query + g * D, D);
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) query[g * D + i] *= scale;
                }
                attend16(query, keys, values, out + (b * H + h * group) * D, group, D, length, scores);
                continue;
            }
#endif
            float query[D], acc[D], scores[length];
            for (int64_t g = 0; g < group; g++) {
                const int64_t head = h * group + g;
                rope(q + (b * H + head) * D, cos + b * D, sin + b * D, query, D);
                for (int64_t t = 0; t < length; t++) {
                    const float *key = keys + t * D;
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int64_t i = 0; i < D; i++) dot += query[i] * key[i];
                    scores[t] = dot * scale;
                }
                const float inverse = softmax(scores, length);
                memset(acc, 0, sizeof(acc));
                for (int64_t t = 0; t < length; t++) {
                    const float *value = values + t * D, weight = scores[t];
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) acc[i] += weight * value[i];
                }
                float *o = out + (b * H + head) * D;
#pragma omp simd
                for (int64_t i = 0; i < D; i++) o[i] = acc[i] * inverse;
            }
        }
    }
}
