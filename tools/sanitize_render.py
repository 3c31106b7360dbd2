"""A small render of every CUDA code path, to run under compute-sanitizer (memcheck, racecheck,
synccheck, initcheck), which sees out-of-bounds reads, shared-memory races and reads of
uninitialised memory that the CPU emulation of the kernels cannot:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python tools/sanitize_render.py

(without the caching allocator every buffer is its own allocation, so memcheck sees its bounds).
`python tools/sanitize_render.py cpu` runs the same renders on the CPU kernel.
Ragged sources smaller and larger than the views, both presets with rotation, elastic, blur and
solarize on, bilinear and nearest rotation, every output dtype, NCHW and channels_last.
"""
import sys

import torch

from clever_kernels.augment import render, sample_params


def main():
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8).to(device)
              for h, w in ((37, 23), (15, 40), (70, 66), (5, 3))]
    cases = [("caug+", "nearest", torch.float32, False), ("caug+", "bilinear", torch.float16, True),
             ("caug", "nearest", torch.bfloat16, False), ("baug", "bilinear", torch.float32, True)]
    for preset, rotation, dtype, channels_last in cases:
        params = sample_params(images, preset, n_local=2, global_size=33, local_size=17, seed=3,
                               rotation_p=1.0, elastic_p=0.5, blur_p=1.0, global_blur_sigma=(0.5, 7.0),
                               solarize_p=0.5)
        views = render(images, params, out_dtype=dtype, channels_last=channels_last,
                       rotation_interpolation=rotation, backend="fused")
        if device.type == "cuda":
            torch.cuda.synchronize()
        for v, view in enumerate(views):
            if not torch.isfinite(view.float()).all():
                raise SystemExit(f"{preset} {rotation} {dtype}: view {v} holds non-finite values")
    print(f"sanitize_render: {len(cases)} renders of {len(images)} images, every view finite")


if __name__ == "__main__":
    main()
