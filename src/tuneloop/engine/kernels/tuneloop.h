/* Every function the kernels export, called from Python through ctypes (``native.SIGNATURES``).
 *
 * Each .c file includes this header, so the compiler checks every definition against its
 * declaration here; tests/unit/test_kernel_header.py checks ``native.SIGNATURES`` against it.
 * Change an argument here, in its definition and in ``native.SIGNATURES`` together.
 * Pointers are tensors' data (``tensor.data_ptr()``); sizes and counts are int64_t.
 */
#ifndef TUNELOOP_KERNELS_H
#define TUNELOOP_KERNELS_H

#include <stdint.h>

/* qmatmul.c: y [M, N] = x [M, K] @ W.T, W group-quantized (int8 codes; 4-bit codes two per byte). */
void tl_qmatmul(const int8_t *q, const float *scale, const float *offset, const float *x, float *y, int64_t M,
                int64_t N, int64_t K);
void tl_qmatmul4(const int8_t *q, const float *scale, const float *offset, const float *x, float *y, int64_t M,
                 int64_t N, int64_t K);

/* qmatmul_i8.c: the same with x rounded to int8; 0, or -1 on no memory. */
int tl_qmatmul_i8(const uint8_t *codes, const float *scale, const float *offset, const float *x, float *y,
                  int64_t M, int64_t N, int64_t K, int64_t bits, int64_t zero);

/* attention.c: one layer's RoPE, KV-cache write and attention for B new tokens (float32 or float16 caches). */
void tl_decode_attention(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                         float *k_cache, float *v_cache, const int64_t *slots, const int64_t *pos, float *out,
                         int64_t B, int64_t H, int64_t KV, int64_t D, int64_t capacity, float scale);
void tl_decode_attention_f16(const float *q, const float *k, const float *v, const float *cos, const float *sin,
                             _Float16 *k_cache, _Float16 *v_cache, const int64_t *slots, const int64_t *pos,
                             float *out, int64_t B, int64_t H, int64_t KV, int64_t D, int64_t capacity, float scale);

/* lora.c: y += the LoRA updates of one projection for rows in groups of one adapter each
 * (float32 factors; float16 ones). */
void tl_lora(const float *x, float *y, int64_t M, int64_t K, int64_t N, int64_t groups, const int64_t *row_start,
             const int64_t *table, int64_t entries, int64_t entry, float *t);
void tl_lora_f16(const float *x, float *y, int64_t M, int64_t K, int64_t N, int64_t groups, const int64_t *row_start,
                 const int64_t *table, int64_t entries, int64_t entry, float *t);

/* pointwise.c: x += delta (delta may be NULL), then out = RMSNorm(x); out = silu(gate) * up. */
void tl_add_rmsnorm(float *x, const float *delta, const float *weight, float eps, float *out, int64_t M, int64_t H);
void tl_silu_mul(const float *gate, const float *up, float *out, int64_t M, int64_t N);

#endif
