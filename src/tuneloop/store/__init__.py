"""Durable state: content-addressed file blobs and the SQL store (files, jobs, events, checkpoints, models)."""
