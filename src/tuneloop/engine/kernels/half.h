/* float16 to float32 and back, 8 values at a time (F16C), for the float16 KV caches and LoRA factors. */
#ifndef TL_HALF_H
#define TL_HALF_H
#include <immintrin.h>
#include <stdint.h>

static inline void half_to_float(const _Float16 *p, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + i))));
    for (; i < n; i++) out[i] = (float)p[i];
}

/* rounded to nearest even */
static inline void float_to_half(const float *p, _Float16 *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(p + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) out[i] = (_Float16)p[i];
}

#endif
