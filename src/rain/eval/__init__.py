"""Benchmarks: lm-eval-compatible multiple-choice tasks, a native scorer and an lm-eval adapter."""
