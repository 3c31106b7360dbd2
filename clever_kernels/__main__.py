"""`python -m clever_kernels` prints which backends are usable."""
from . import backends

for name, status in backends().items():
    print(f"{name:20s} {status}")
