"""Distillation: turn a teacher's answers (asked live, or read back from stored completions) into a
chat-format training file for a small student model.

``examples`` builds and judges one example, ``teacher`` asks with retries, ``cache`` keeps every paid
answer, ``stored`` reads stored completions, ``run`` ties them together into train/valid files.
"""
