"""Step 4 — the generation engine: continuous batching, multi-adapter decode, quantized weights, C kernels."""
