"""Small real images for tests and examples."""
from typing import List

import torch


def sample_photos() -> List[torch.Tensor]:
    """scikit-learn's two bundled photographs (china.jpg, flower.jpg) as uint8 (3, 427, 640)
    tensors. scikit-learn is a test dependency only, hence the lazy import."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise ImportError("sample_photos needs scikit-learn (pip install scikit-learn)") from exc
    return [torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()
            for image in load_sample_images().images]
