/* For the including body's ELEMENT type (float, or _Float16 with HALF 1), once per type:
 * NAME(as_float): p[0 .. n) as float32, p itself or its float16 values converted into buf;
 * LOAD16(p) (AVX-512 builds): 16 elements as a float32 vector. */
static inline const float *NAME(as_float)(const ELEMENT *p, float *buf, int64_t n) {
#if HALF
    half_to_float(p, buf, n);
    return buf;
#else
    (void)buf, (void)n;
    return p;
#endif
}

#if defined(__AVX512F__)
#undef LOAD16
#if HALF
#define LOAD16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#else
#define LOAD16(p) _mm512_loadu_ps(p)
#endif
#endif
