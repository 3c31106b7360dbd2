"""`python -m clever_kernels.train` is clever-train."""
import sys

from .cli import train_main

sys.exit(train_main())
