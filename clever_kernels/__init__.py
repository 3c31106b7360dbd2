"""clever_kernels: fused kernels for equivariant contrastive learning (CLeVER) and DINO.

Public entry points:
    clever_kernels.backends()   which kernel backends run here, and why the others do not
    clever_kernels.loss         CLeVERLoss / DINOLoss modules and functional forms
    clever_kernels.augment      multi-crop augmentation with parameter capture
    clever_kernels.reference    plain-PyTorch definitions of every op
"""
from ._backend import Backend, backends

__version__ = "0.1.0"

__all__ = ["Backend", "backends", "__version__"]
