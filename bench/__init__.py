"""clever_kernels benchmark suite: `python -m bench [name ...]` (see bench/harness.py)."""
