"""DINO multi-crop augmentation (2 x 224 + 8 x 96, CAug), from uint8 images of mixed sizes around
500 x 375: images per second of the fused renderer (torch.ops.clever_kernels.render_views) against
the plain-PyTorch reference renderer and a PIL pipeline, in one run.

Every variant but the two that render recorded parameters includes drawing the parameters
(sample_params); all produce normalised float32 views. Two more rows time the drawing alone, with
the sample_views op and with the tensor ops that define it. The PIL pipeline is the per-image loop the authors' data loader runs (crop + bicubic
resize, flip, rotate, ImageEnhance colour jitter in the drawn order, hue through HSV, grayscale,
GaussianBlur, solarize, then to a tensor and normalise), driven by the same drawn parameters, in
this one process: what one data-loader worker does. Kornia (when it imports) runs one
AugmentationSequential per view with the same recipe, drawing its own parameters; it takes only
a dense batch, so it gets the images resized to one size beforehand (outside the timing), its
best case. "per core" divides by the cores a variant keeps busy: torch's thread count for the
tensor variants, 1 for PIL. On a GPU the kernels' own time (images packed and parameter tables
built once, outside the timing; the op calls replayed from a CUDA graph) is also compared with a
bandwidth floor: reading every source image once and writing every output once, over the
measured copy bandwidth. render() from recorded parameters is timed apart: it checks the values
of the parameters, which costs a device-to-host copy per call.
"""
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from clever_kernels.augment import MultiCrop, _fused, render, sample_params
from clever_kernels.augment.config import make_config
from clever_kernels.augment.params import group_by_size

from . import harness

PRESET = "caug"


def make_images(count: int, device: torch.device, seed: int = 0):
    """`count` uint8 (3, H, W) images, H in [330, 420], W in [440, 560]: random crops of the two
    bundled photographs resized (antialiased bicubic) to a random size near 375 x 500."""
    from clever_kernels.data import sample_photos
    photos = sample_photos()
    rng = random.Random(seed)
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h0, w0 = photo.shape[1:]
        ch, cw = rng.randint(h0 * 3 // 4, h0), rng.randint(w0 * 3 // 4, w0)
        top, left = rng.randint(0, h0 - ch), rng.randint(0, w0 - cw)
        crop = photo[:, top:top + ch, left:left + cw].float()[None]
        size = (rng.randint(330, 420), rng.randint(440, 560))
        x = F.interpolate(crop, size=size, mode="bicubic", antialias=True, align_corners=False)
        images.append(x[0].round().clamp(0, 255).to(torch.uint8).to(device).contiguous())
    return images


def pil_multicrop(images, config, seed, step):
    """The PIL pipeline, one image at a time, from the same drawn parameters."""
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps
    params = sample_params(images, config, seed=seed, step=step)
    values = [{k: getattr(p, k).tolist() for k in ("top", "left", "height", "width", "flip", "angle", "jitter",
                                                  "brightness", "contrast", "saturation", "hue", "order",
                                                  "grayscale", "blur_sigma", "solarize")} for p in params]
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    views = [[] for _ in params]
    for b, image in enumerate(images):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        for v, (p, val) in enumerate(zip(params, values)):
            t, l, h, w = val["top"][b], val["left"][b], val["height"][b], val["width"][b]
            x = pil.crop((l, t, l + w, t + h)).resize((p.size, p.size), Image.BICUBIC)
            if val["flip"][b]:
                x = x.transpose(Image.FLIP_LEFT_RIGHT)
            if val["angle"][b] != 0:
                x = x.rotate(val["angle"][b], resample=Image.NEAREST, fillcolor=0)
            if val["jitter"][b]:
                factors = (val["brightness"][b], val["contrast"][b], val["saturation"][b], val["hue"][b])
                for op in val["order"][b]:
                    if op < 3:
                        x = enhancers[op](x).enhance(factors[op])
                    else:
                        hsv = np.array(x.convert("HSV"))
                        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(factors[3] * 255)) % 256
                        x = Image.fromarray(hsv, "HSV").convert("RGB")
            if val["grayscale"][b]:
                x = x.convert("L").convert("RGB")
            if val["blur_sigma"][b] > 0:
                x = x.filter(ImageFilter.GaussianBlur(radius=val["blur_sigma"][b]))
            if val["solarize"][b]:
                x = ImageOps.solarize(x, 128)
            tensor = torch.from_numpy(np.array(x)).permute(2, 0, 1).float().div_(255)
            views[v].append((tensor - mean) / std)
    return [torch.stack(v) for v in views]


def _pil_worker_init():
    torch.set_num_threads(1)  # one core per worker, as a data loader's workers


def _pil_share(args):
    return pil_multicrop(*args)


def _started(_):
    return None


class PILWorkers:
    """The PIL pipeline in `workers` processes started once (a data loader's workers): each call
    splits the batch into one share per worker and gathers the views."""

    def __init__(self, workers: int, config):
        import concurrent.futures
        import multiprocessing
        self.workers, self.config = workers, config
        self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                           initializer=_pil_worker_init)
        list(self.pool.map(_started, range(workers)))  # start them outside the timing

    def __call__(self, images, seed, step):
        shares = [images[i::self.workers] for i in range(self.workers)]
        parts = list(self.pool.map(_pil_share, [(share, self.config, seed, step) for share in shares if share]))
        return [torch.cat(views) for views in zip(*parts)]

    def close(self):
        self.pool.shutdown()


def kornia_multicrop(config):
    """One Kornia AugmentationSequential per view of `config` (its own draws, per sample), or None
    when kornia does not import. Takes a dense uint8 batch."""
    try:
        import kornia.augmentation as K
        return _kornia_pipelines(K, config)
    except Exception as exc:  # a wheel built for another torch fails in many ways, not only ImportError
        print(f"  Kornia unavailable ({type(exc).__name__}: {exc!s:.200})", flush=True)
        return None


def _kornia_pipelines(K, config):
    pipelines = []
    for view in config.views():
        blur_radius = int(math.ceil(3 * view.blur_sigma[1]))
        ops = [K.RandomResizedCrop((view.size, view.size), scale=view.scale, ratio=view.ratio, resample="BICUBIC",
                                   align_corners=False),
               K.RandomHorizontalFlip(p=view.flip_p)]
        if view.rotation_p > 0:
            ops.append(K.RandomRotation(view.degrees, resample="NEAREST", align_corners=False, p=view.rotation_p))
        ops += [K.ColorJiggle(view.brightness, view.contrast, view.saturation, view.hue, p=view.jitter_p),
                K.RandomGrayscale(p=view.grayscale_p)]
        if view.blur_p > 0:
            ops.append(K.RandomGaussianBlur(2 * blur_radius + 1, view.blur_sigma, p=view.blur_p))
        if view.solarize_p > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=view.solarize_p))
        ops.append(K.Normalize(torch.tensor(config.mean), torch.tensor(config.std)))
        pipelines.append(K.AugmentationSequential(*ops))

    def run(dense):
        x = dense.float().div_(255)
        with torch.no_grad():
            return [pipeline(x) for pipeline in pipelines]
    return run


class _OverBudget(Exception):
    pass


def compile_budget_s(ceiling: int = 90, margin: int = 15) -> int:
    """Seconds the Kornia torch.compile variant may take, compiling and timing together: at most
    `ceiling`, and no more than what is left before BENCH_DEADLINE (Unix seconds, set by
    tools/gpu_checks.sh to the end of this benchmark's time limit) less `margin` for writing."""
    deadline = os.environ.get("BENCH_DEADLINE")
    if not deadline:
        return ceiling
    return max(0, min(ceiling, int(float(deadline) - time.time()) - margin))


def within_budget(budget_s: int, fn):
    """(fn(), None), or (None, why) when fn raises or runs past budget_s seconds: ten pipelines of
    inductor kernels can take minutes to compile, and Kornia's random subsets of the batch can
    recompile on later calls, so the alarm covers every call, not only the first."""
    import signal
    if budget_s <= 0:
        return None, "no time left before the benchmark's deadline"

    def expired(signum, frame):
        raise _OverBudget(f"compiling and timing took more than {budget_s} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(budget_s)
    try:
        return fn(), None
    except Exception as exc:  # any compiler failure: report it, keep the eager rows
        return None, _root_cause(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's type and first line: dynamo wraps a failure inside the compiler
    (the alarm's included) in BackendCompilerFailed, whose own first line says nothing."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    lines = str(seen).splitlines() or [""]
    return f"{type(seen).__name__}: {lines[0][:200]}"


KERNELS_ONLY = "clever_kernels fused, kernels only"
# the fused MultiCrop call split by kernel (by operator on the CPU), from the profiler
FUSED_PART = "clever_kernels fused, part: "
# drawing the parameters alone, no rendering: compared with each other only
DRAWS_FUSED = "sample_params alone: the sample_views op"
DRAWS_REFERENCE = "sample_params alone: its tensor ops (the reference)"


def kernels_only(images, params, config):
    """The render_views calls alone, one per output size: images packed and parameter tables built
    once here, so a call is what the bandwidth floor bounds."""
    packed = _fused.pack_images(list(images))
    tables = [(size, _fused.param_tables([params[i] for i in members]))
              for size, members in group_by_size(params).items()]
    channels = images[0].shape[0]
    return lambda: [_fused.render_tables(packed, channels, table, size, config.mean, config.std, True, torch.float32,
                                         False, "bicubic", "nearest") for size, table in tables]


def view_bytes(images, config):
    """Bytes of every view of the batch in float32."""
    return sum(len(images) * 3 * view.size ** 2 * 4 for view in config.views())


def traffic_bytes(images, config):
    """Bytes a renderer must move at least: every source image read once, every view written
    once in float32."""
    return sum(x.numel() for x in images) + view_bytes(images, config)


def kernel_traffic_bytes(images, params, config):
    """Bytes each render kernel moves as designed: pass 1 reads every crop's pixels once and
    writes the float32 intermediate, pass 2 reads that and writes the float32 views."""
    views = view_bytes(images, config)
    crops = images[0].shape[0] * sum(int((p.height * p.width).sum()) for p in params)
    return {"render_pass1_kernel": crops + views, "render_pass2_kernel<float>": 2 * views}


def main(args):
    device = torch.device(args.device)
    quick = args.quick
    if device.type == "cuda":
        batch, reps = (8, 2) if quick else (128, 10)
    else:
        batch, reps = (2, 1) if quick else (32, 7)
    sizes = dict(global_size=64, local_size=32) if quick else dict(global_size=224, local_size=96)
    config = make_config(PRESET, n_local=8, **sizes)
    images = make_images(batch, device)
    step = iter(range(10 ** 9))
    fused = MultiCrop(PRESET, n_local=8, backend="fused", **sizes)
    reference = MultiCrop(PRESET, n_local=8, backend="reference", **sizes)
    variants = {
        f"clever_kernels fused ({'CUDA' if device.type == 'cuda' else 'C++'})": lambda: fused(images, step=next(step)),
        "plain-PyTorch reference": lambda: reference(images, step=next(step)),
    }
    for backend, name in (("fused", DRAWS_FUSED), ("reference", DRAWS_REFERENCE)):
        variants[name] = lambda backend=backend: sample_params(images, config, seed=0, step=next(step),
                                                               backend=backend)
    drawn = sample_params(images, config, seed=0, step=0)
    variants["clever_kernels render() of recorded params (values checked)"] = lambda: render(
        images, drawn, mean=config.mean, std=config.std, backend="fused")
    variants[KERNELS_ONLY] = kernels_only(images, drawn, config)
    workers = None
    if device.type == "cpu":
        variants["PIL pipeline (per image, 1 process)"] = lambda: pil_multicrop(images, config, 0, next(step))
        cores = torch.get_num_threads()
        if cores > 1:
            workers = PILWorkers(cores, config)
            variants[f"PIL pipeline ({cores} worker processes)"] = lambda: workers(images, 0, next(step))
    kornia = kornia_multicrop(config)
    kornia_note = "Kornia does not import here: no Kornia rows. "
    if kornia is not None:
        kornia_note = ""
        import kornia as kornia_module
        dense_size = (375, 500)
        dense = torch.stack([F.interpolate(x[None].float(), size=dense_size, mode="bilinear", antialias=True)[0]
                             .round().clamp(0, 255).to(torch.uint8) for x in images])
        kornia_name = (f"Kornia {kornia_module.__version__} AugmentationSequential, %s "
                       f"(dense {dense_size[0]} x {dense_size[1]} batch)")
        variants[kornia_name % "eager"] = lambda: kornia(dense)
    copy_bw = harness.copy_bandwidth(device) if device.type == "cuda" else None

    # agreement of the two renderers on one draw, in [0, 1] pixel units
    params = sample_params(images, config, seed=0, step=0)
    a = render(images, params, mean=config.mean, std=config.std, backend="fused")
    b = render(images, params, mean=config.mean, std=config.std, backend="reference")
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    max_err = max(((x - y).abs() * std).max().item() for x, y in zip(a, b))
    shape = " + ".join(f"{n} x {s}" for s, n in ((sizes["global_size"], 2), (sizes["local_size"], 8)))

    rows = []

    def timing_of(name, fn):
        # the slow baselines take seconds a batch on a GPU: fewer repetitions keep the run short
        slow = device.type == "cuda" and not name.startswith("clever_kernels")
        if name == KERNELS_ONLY and device.type == "cuda":
            try:  # the kernels' own time, with no host work between the calls
                return harness.time_cuda_graph(fn, device, reps=reps)
            except Exception as exc:  # a capture failure must not cost the rest of the run
                print(f"  {name}: CUDA graph capture failed ({exc!r:.120}); timed eagerly", flush=True)
        return harness.time_median(fn, device, warmup=1, reps=max(1, reps // 3) if slow else reps)

    def add_row(name, timing):
        row = {"variant": name, "images": batch, "ms / batch": timing["median_s"] * 1e3,
               "images / s": batch / timing["median_s"]}
        if device.type == "cpu":  # per core means nothing for a GPU's variants
            cores = (workers.workers if "worker" in name else 1) if name.startswith("PIL") else torch.get_num_threads()
            row.update({"cores": cores, "images / s per core": batch / timing["median_s"] / cores})
        if name == KERNELS_ONLY and copy_bw:
            moved = traffic_bytes(images, config)
            row["GB/s"] = moved / timing["median_s"] / 1e9
            row["x bandwidth floor"] = timing["median_s"] / (moved / copy_bw)
        rows.append(row)
        print(f"  {name}: {row['images / s']:.1f} images/s", flush=True)

    def write():
        # after every variant, so a run stopped part-way (a slow compile) still leaves the rows it timed
        notes = _notes(PRESET, shape, batch, device, kornia is not None, kornia_note, max_err,
                       traffic_bytes(images, config), copy_bw)
        return harness.write_results("augment", device, _with_ratios(rows), COLUMNS, notes, quick=quick)

    if device.type == "cpu":  # in rounds: this machine kind's speed drifts over a run
        for name, timing in harness.time_interleaved(variants, warmup=1, reps=reps).items():
            add_row(name, timing)
        path = write()
    else:
        for name, fn in variants.items():
            add_row(name, timing_of(name, fn))
            path = write()
    # step 0 draws `drawn` again, whose crops the bytes model counts
    rows += harness.kernel_rows(lambda: fused(images, step=0), device, copy_bw,
                                kernel_traffic_bytes(images, drawn, config),
                                lambda name, calls: f"{FUSED_PART}{name} ({calls:g} a batch)", "ms / batch")
    path = write()
    if workers is not None:
        workers.close()
    if kornia is not None:  # last: compiling can take minutes, and the other rows are on disk by then
        compiled = torch.compile(kornia)
        # its first call (the warm-up) compiles, outside the timed calls
        name = kornia_name % "torch.compile"
        timing, why_not = within_budget(compile_budget_s(), lambda: timing_of(name, lambda: compiled(dense)))
        if why_not is None:
            add_row(name, timing)
        else:
            kornia_note = f"Kornia under torch.compile failed ({why_not}), so only its eager form is timed. "
        path = write()
    return path


COLUMNS = ["variant", "images", "ms / batch", "images / s", "cores", "images / s per core",
           "speed-up vs reference", "per core vs PIL", "speed-up vs Kornia eager", "GB/s", "x bandwidth floor"]


def _with_ratios(rows):
    """The rows with their rates relative to each baseline that has been timed."""
    def find(match):
        return next((r for r in rows if match(r["variant"])), None)

    baselines = {
        "speed-up vs reference": (find(lambda v: v == "plain-PyTorch reference"), "images / s"),
        "per core vs PIL": (find(lambda v: v.startswith("PIL pipeline (per image")), "images / s per core"),
        "speed-up vs Kornia eager": (find(lambda v: v.startswith("Kornia") and "eager" in v), "images / s"),
    }
    draws_baselines = {"speed-up vs reference": (find(lambda v: v == DRAWS_REFERENCE), "images / s")}
    out = []
    for row in rows:
        row = dict(row)
        draws_only = row["variant"] in (DRAWS_FUSED, DRAWS_REFERENCE)
        for column, (base, key) in (draws_baselines if draws_only else baselines).items():
            if base is not None and key in row:
                row[column] = row[key] / base[key]
        out.append(row)
    return out


def _notes(preset, shape, batch, device, has_kornia, kornia_note, max_err, moved, copy_bw):
    notes = (f"{preset} multi-crop, {shape} views per image, uint8 sources {batch} images of mixed sizes "
             "(H 330-420, W 440-560), float32 NCHW outputs; median of repeated batches after one warm-up"
             f"{' (taken in rounds, one batch of each variant a round)' if device.type == 'cpu' else ''}, "
             "parameter sampling (sample_params) included in every variant but the two rendering recorded "
             "parameters: render() (which checks the parameters' values) and the kernels only (images packed "
             "and tables built once, outside the timing; replayed from a CUDA graph on a GPU). The two "
             "'sample_params alone' rows draw the parameters without rendering, with the sample_views op "
             "and with the tensor ops that define it (the reference MultiCrop draws with these), and are "
             "compared with each other only. ")
    if device.type == "cpu":
        notes += ("The PIL pipeline runs one image at a time in this process, and again split over one "
                  "worker process per core (started before the timing; the views come back through shared "
                  "memory, as a data loader's do); its pixels differ from ours by design (uint8 rounding "
                  "after every op, PIL's blur kernel and hue). torchvision is not compared: its wheels do not "
                  "import beside the CPU torch of this environment. ")
    if has_kornia:
        notes += ("Kornia draws its own parameters and sees a dense batch resized beforehand (it cannot take "
                  "images of different sizes). Its torch.compile form is compiled by one untimed call "
                  "(default inductor; on the CPU here Kornia's containers hit dynamo's recompile limit, so "
                  "parts of it stay eager), after every other variant is timed. ")
    notes += ("The 'part' rows split one fused MultiCrop call by GPU kernel (by operator, self time, on the "
              "CPU), from torch.profiler over three calls after one (its overhead included; parts under 1% of "
              "the call left out; profiled apart from the timed rows, so they need not add up to them); on a "
              "GPU the two render kernels' floor is the bytes each must move (pass 1: every crop's pixels "
              "read once, the float32 intermediate written; pass 2: the intermediate read, the views "
              "written). ")
    notes += kornia_note + f"Fused vs reference on one draw: max abs difference {max_err:.2g} in [0, 1] pixel units. "
    if copy_bw:
        notes += (f"Bandwidth floor: source images read once + views written once "
                  f"({moved / 1e6:.1f} MB) over the measured copy bandwidth {copy_bw / 1e9:.0f} GB/s.")
    return notes
