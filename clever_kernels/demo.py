"""`python -m clever_kernels.demo`: augments the embedded photos with CAug multi-crop,
prints every parameter drawn, and evaluates the CLeVER loss (forward and backward) on the
views through a small random two-head network."""
import time

import torch

from . import backends
from .augment import MultiCrop
from .data import sample_photos
from .loss import CLeVERLoss


def _crops(photos, n):
    """n ragged crops of the photos (different sizes), as a data loader would hand them over."""
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = 300 + 37 * i, 280 + 53 * i
        out.append(photo[:, :h, :w].contiguous())
    return out


def main():
    torch.manual_seed(0)
    print("backends:")
    for name, status in backends().items():
        print(f"  {name:20s} {status}")
    images = _crops(sample_photos(), 4)
    print(f"\n{len(images)} images, sizes {[tuple(x.shape[1:]) for x in images]}")
    mc = MultiCrop("caug", n_local=6, global_size=64, local_size=32, seed=0)
    start = time.perf_counter()
    views, params = mc(images, step=0, ids=torch.arange(len(images)))
    print(f"rendered {len(views)} views per image in {time.perf_counter() - start:.3f} s: "
          f"{[tuple(v.shape) for v in views[:1]]} x2 globals, {[tuple(v.shape) for v in views[2:3]]} x6 locals")
    for index, p in enumerate(params):
        kind = "global" if index < 2 else "local"
        print(f"\nview {index} ({kind}, {p.size}x{p.size}):")
        table = p.to_tensor(torch.float64)
        print("  " + " ".join(f"{c[:8]:>9s}" for c in p.columns))
        for row in table:
            print("  " + " ".join(f"{v:9.3f}" if abs(v) < 1e6 else f"{v:9.2e}" for v in row.tolist()))

    ncrops, out_dim, dvr_dim = len(views), 1024, 512
    feature = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 64, 80))
    head_ir, head_ef = torch.nn.Linear(64, out_dim), torch.nn.Linear(16, dvr_dim)
    loss_fn = CLeVERLoss(out_dim, ncrops, 0.04, 0.04, 0, 1, dvr_out_dim=dvr_dim)

    def heads(batch_views):
        feats = torch.cat([feature(v) for v in batch_views])  # view-major rows
        return head_ir(feats[:, :64]), head_ef(feats[:, 64:])

    student_ir, student_ef = heads(views)
    with torch.no_grad():
        teacher_ir, teacher_ef = heads(views[:2])
    total, loss_dir, loss_dvr = loss_fn(student_ir, student_ef, teacher_ir, teacher_ef, epoch=0)
    total.backward()
    grad_norm = sum(p.grad.norm() ** 2 for p in head_ir.parameters()) ** 0.5
    print(f"\nCLeVER loss: total {total.item():.4f} = DIR {loss_dir.item():.4f} + 1.0 x DVR {loss_dvr.item():.4f}"
          f"  (|grad head_ir| {grad_norm:.3e}; centre norms {loss_fn.center.norm():.3e}, "
          f"{loss_fn.center2.norm():.3e})")


if __name__ == "__main__":
    main()
