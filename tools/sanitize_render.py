"""A small render of every CUDA code path, to run under compute-sanitizer (memcheck and
racecheck), which sees out-of-bounds accesses and shared-memory races that the CPU emulation of
the kernels cannot:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        --kernel-name kns=render_pass python tools/sanitize_render.py

(without the caching allocator every buffer is its own allocation, so memcheck sees its bounds).
`python tools/sanitize_render.py cpu` runs the same renders on the CPU kernel.
Ragged sources smaller and larger than the views, 3- and 1-channel, every preset with rotation,
elastic, blur and solarize on, blur and elastic radii within and beyond the shared-memory tap
cache, bicubic and bilinear resize with and without antialias, bilinear and nearest rotation,
every output dtype, NCHW and channels_last.
"""
import sys

import torch

from clever_kernels.augment import render, sample_params


def main():
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8).to(device)
              for h, w in ((37, 23), (15, 40), (70, 66), (5, 3))]
    gray = [x[:1].contiguous() for x in images]
    common = dict(n_local=2, global_size=33, local_size=17, seed=3, rotation_p=1.0, elastic_p=0.5, blur_p=1.0,
                  solarize_p=0.5)
    # (images, preset, extra draw options, render options); blur sigma 45 and elastic sigma 35 give
    # radii beyond the 127 taps the kernels cache in shared memory
    cases = [
        (images, "caug+", dict(global_blur_sigma=(0.5, 7.0)), dict(out_dtype=torch.float32)),
        (images, "caug+", {}, dict(rotation_interpolation="bilinear", out_dtype=torch.float16, channels_last=True)),
        (images, "caug", dict(blur_sigma=(45.0, 46.0), elastic_sigma=35.0), dict(out_dtype=torch.bfloat16)),
        (gray, "baug", {}, dict(interpolation="bilinear", antialias=False, rotation_interpolation="bilinear",
                                channels_last=True)),
    ]
    for sources, preset, draw, options in cases:
        params = sample_params(sources, preset, **common, **draw)
        views = render(sources, params, backend="fused", **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        for v, view in enumerate(views):
            if not torch.isfinite(view.float()).all():
                raise SystemExit(f"{preset} {options}: view {v} holds non-finite values")
    print(f"sanitize_render: {len(cases)} renders of {len(images)} images, every view finite")


if __name__ == "__main__":
    main()
