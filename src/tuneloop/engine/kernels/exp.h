/* A vectorizable e^x for the kernels' softmax and SiLU. */
#ifndef TL_EXP_H
#define TL_EXP_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x for x <= 0 (Cephes' single-precision polynomial; relative error below 1e-7 over [-87, 0]).
 * Vectorizable: n = round(x / ln 2) by the 1.5 * 2^23 trick (GCC does not vectorize floorf
 * without -ffast-math), 2^n from its bits. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    p = p * x * x + x + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n */
    float power;
    memcpy(&power, &bits, sizeof(power));
    return p * power;
}

#endif
