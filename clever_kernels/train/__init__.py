"""Reference trainer and evaluation: DINO and CLeVER end to end on real images.

    clever-train   (cli.train_main)  training, single process or under torchrun
    clever-eval    (cli.eval_main)   linear probes and rotation sensitivity of a checkpoint
    clever-plot    (cli.plot_main)   loss curves and evaluation charts
    python -m clever_kernels.train.compare   a short DINO vs CLeVER run on the embedded digits

Nothing here is imported by the rest of the package; tqdm, matplotlib and scikit-learn are
imported only by the commands that use them.
"""
from .models import DINOHead, MultiCropWrapper, ResNet18, VisionTransformer, build_backbone, build_model
from .trainer import NonFiniteLoss, Trainer, train

__all__ = ["DINOHead", "MultiCropWrapper", "NonFiniteLoss", "ResNet18", "Trainer", "VisionTransformer",
           "build_backbone", "build_model", "train"]
