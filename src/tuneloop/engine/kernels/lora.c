/* LoRA updates of one projection for a batch whose rows use different adapters.
 *
 *     y[m, :] += (x[m, :] @ At_g) @ Bt_g        for every row m of group g
 *
 * x [M, K], y [M, N] (float32, row-major). Rows of group g are row_start[g] .. row_start[g + 1] - 1;
 * rows outside every group (the base model's) are left alone. The factors come from a table,
 * [groups, entries, 3] int64: for entry ``entry`` (a layer's projection) of group g, the addresses of
 * At_g [K, r] and Bt_g [r, N] (PEFT's A and B transposed, B pre-scaled) and the rank r, a multiple
 * of 8 (0: the adapter leaves this projection alone). ``t`` is scratch space for [M, largest rank].
 * ``tl_lora`` reads float32 factors, ``tl_lora_f16`` float16 ones (half the bytes; the engine's
 * int8-activation mode, which is lossy anyway). The body is ``lora_impl.h``, once per type.
 *
 * Two stages in one parallel region, both on blocks of up to 4 of a group's rows so that each
 * factor element loaded serves 4 rows: t = x @ At (8 of a row's r values at a time accumulate in
 * registers: no horizontal sums), then y += t @ Bt over blocks of 64 output columns. Each
 * adapter's factors are read once per call, and every row is computed with the same operations
 * whatever the batch holds.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "tuneloop.h"

#include "half.h"

#define ROWS 4   /* rows per block */
#define CHUNK 8  /* rank values per accumulator of the first stage (ranks are multiples of it) */
#define BLOCK 64 /* output columns per task of the second stage */
#define INLINE static inline __attribute__((always_inline))

#define FACTOR float
#define HALF 0
#define NAME(x) x
#include "lora_impl.h"
#undef FACTOR
#undef HALF
#undef NAME

/* The same with float16 factors (half the bytes to read; each converted to float32 as loaded). */
#define FACTOR _Float16
#define HALF 1
#define NAME(x) x##_f16
#include "lora_impl.h"
#undef FACTOR
#undef HALF
#undef NAME
