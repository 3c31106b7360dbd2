"""The CLeVER and DINO losses, forward and backward fused.

    from clever_kernels.loss import CLeVERLoss      # for the authors' CLeVER_DINOLoss
    from clever_kernels.loss import DINOLoss        # for DINO's DINOLoss
"""
from .functional import clever_loss, dino_loss
from .modules import CLeVERLoss, DINOLoss

__all__ = ["CLeVERLoss", "DINOLoss", "clever_loss", "dino_loss"]
