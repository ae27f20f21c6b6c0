"""Step 4 of the loop: generation and the OpenAI-compatible server."""
