"""A fine-tuning job's life: its typed spec, file validation, the worker and the runner."""
