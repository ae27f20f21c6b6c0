/* The attention kernel's body, included by attention.c once per cache type: CACHE (float, or
 * _Float16 with HALF 1) and NAME(x) (the name of x for that type). */

#define ELEMENT CACHE
#include "as_float.h"
#undef ELEMENT

/* dst[0 .. n) = src, rounded to float16 for a float16 cache (nearest even). */
static inline void NAME(store)(const float *src, CACHE *dst, int64_t n) {
#if HALF
    float_to_half(src, dst, n);
#else
    memcpy(dst, src, (size_t)n * sizeof(float));
#endif
}

#if defined(__AVX512F__)
/* One (token, key/value head) of the attention with 16-float lanes, for D = 16 * CHUNKS and GROUP
 * query heads per key/value head: each key and each value is loaded (and converted) once for all
 * the group's query heads; the queries (rotated, scaled) score 16 keys at a time, reduced by sum16;
 * the weighted sum of the values keeps GROUP * CHUNKS independent sums. Inlined with constant sizes,
 * every sum stays in a register. */
static inline __attribute__((always_inline)) void NAME(attend_group)(const float *query, const CACHE *keys,
                                                                     const CACHE *values, float *out, int64_t length,
                                                                     float *scores, const int GROUP, const int CHUNKS) {
    const int64_t D = 16 * CHUNKS;
    for (int64_t t0 = 0; t0 < length; t0 += 16) {
        const int64_t n = length - t0 < 16 ? length - t0 : 16;
        __m512 p[GROUP][16];
        for (int64_t t = 0; t < 16; t++) {
            __m512 acc[GROUP];
            for (int g = 0; g < GROUP; g++) acc[g] = _mm512_setzero_ps();
            if (t < n)
                for (int c = 0; c < CHUNKS; c++) {
                    const __m512 key = LOAD16(keys + (t0 + t) * D + 16 * c);
                    for (int g = 0; g < GROUP; g++)
                        acc[g] = _mm512_fmadd_ps(_mm512_loadu_ps(query + g * D + 16 * c), key, acc[g]);
                }
            for (int g = 0; g < GROUP; g++) p[g][t] = acc[g];
        }
        for (int g = 0; g < GROUP; g++)
            _mm512_mask_storeu_ps(scores + g * length + t0, (__mmask16)((1u << n) - 1u), sum16(p[g]));
    }
    float inverse[GROUP];
    for (int g = 0; g < GROUP; g++) inverse[g] = softmax(scores + g * length, length);
    __m512 acc[GROUP][CHUNKS];
    for (int g = 0; g < GROUP; g++)
        for (int c = 0; c < CHUNKS; c++) acc[g][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < length; t++)
        for (int c = 0; c < CHUNKS; c++) {
            const __m512 value = LOAD16(values + t * D + 16 * c);
            for (int g = 0; g < GROUP; g++)
                acc[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * length + t]), value, acc[g][c]);
        }
    for (int g = 0; g < GROUP; g++)
        for (int c = 0; c < CHUNKS; c++)
            _mm512_storeu_ps(out + g * D + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inverse[g])));
}

/* attend_group for D a multiple of 16: constant sizes for D = 64 and up to 4 query heads per key/value
 * head (SmolLM2, Llama 3.2 and most small models: warm, 41 -> 27 us a layer), any other as given. */
static void NAME(attend16)(const float *query, const CACHE *keys, const CACHE *values, float *out, int64_t group,
                     int64_t D, int64_t length, float *scores) {
    if (D == 64) switch (group) {
            case 1: NAME(attend_group)(query, keys, values, out, length, scores, 1, 4); return;
            case 2: NAME(attend_group)(query, keys, values, out, length, scores, 2, 4); return;
            case 3: NAME(attend_group)(query, keys, values, out, length, scores, 3, 4); return;
            case 4: NAME(attend_group)(query, keys, values, out, length, scores, 4, 4); return;
        }
    NAME(attend_group)(query, keys, values, out, length, scores, (int)group, (int)(D / 16));
}
#undef LOAD16
#endif

void NAME(tl_decode_attention)(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                         CACHE *k_cache, CACHE *v_cache, const int64_t *slots, const int64_t *pos, float *out,
                         int64_t B, int64_t H, int64_t KV, int64_t D, int64_t capacity, float scale) {
    const int64_t group = H / KV;
#pragma omp parallel
    {
        /* every new key and value first (a short prefill's tokens share a slot and see each other's) */
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * KV; task++) {
            const int64_t b = task / KV, h = task % KV, at = (slots[b] * KV + h) * capacity + pos[b];
            float key[D];
            rope(k + task * D, cos + b * D, sin + b * D, key, D);
            NAME(store)(key, k_cache + at * D, D);
            NAME(store)(v + task * D, v_cache + at * D, D);
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * KV; task++) {
            const int64_t b = task / KV, h = task % KV, length = pos[b] + 1;
            const CACHE *keys = k_cache + (slots[b] * KV + h) * capacity * D;
            const CACHE *values = v_cache + (slots[b] * KV + h) * capacity * D;
            if (task + 1 < B * KV) { /* the next task's keys and values, fetched while this one computes
                                       * (each task's cache rows start a new stream: cold caches 63 -> 53 us) */
                const int64_t nb = (task + 1) / KV, at = (slots[nb] * KV + (task + 1) % KV) * capacity * D;
                const int64_t bytes = (pos[nb] + 1) * D * (int64_t)sizeof(CACHE);
                for (int64_t l = 0; l < bytes; l += 64) {
                    _mm_prefetch((const char *)(k_cache + at) + l, _MM_HINT_T0);
                    _mm_prefetch((const char *)(v_cache + at) + l, _MM_HINT_T0);
                }
            }
#if defined(__AVX512F__)
            if (D % 16 == 0) {
                float query[group * D], scores[group * length];
                for (int64_t g = 0; g < group; g++) {
                    rope(q + (b * H + h * group + g) * D, cos + b * D, sin + b * D, query + g * D, D);
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) query[g * D + i] *= scale;
                }
                NAME(attend16)(query, keys, values, out + (b * H + h * group) * D, group, D, length, scores);
                continue;
            }
#endif
            float query[D], acc[D], scores[length], wide[D];
            for (int64_t g = 0; g < group; g++) {
                const int64_t head = h * group + g;
                rope(q + (b * H + head) * D, cos + b * D, sin + b * D, query, D);
                for (int64_t t = 0; t < length; t++) {
                    const float *key = NAME(as_float)(keys + t * D, wide, D);
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int64_t i = 0; i < D; i++) dot += query[i] * key[i];
                    scores[t] = dot * scale;
                }
                const float inverse = softmax(scores, length);
                memset(acc, 0, sizeof(acc));
                for (int64_t t = 0; t < length; t++) {
                    const float *value = NAME(as_float)(values + t * D, wide, D), weight = scores[t];
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
