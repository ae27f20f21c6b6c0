"""The quick start: the whole loop (data → train → eval → serve) on the bundled model, in minutes."""
