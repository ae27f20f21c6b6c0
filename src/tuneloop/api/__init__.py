"""The OpenAI-compatible HTTP API: one module per resource, typed protocol models, one error envelope."""
