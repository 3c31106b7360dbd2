"""Datasets of uint8 images with labels, the per-epoch sampler and the ragged collate.

Workers only read and decode: a sample is (uint8 (3, H, W) image, label, dataset index) and a
batch is (list of B images, (B,) labels, (B,) indices). Augmentation happens on the training
device, keyed by the dataset index, so a sample's views never depend on which worker loaded it
or which batch it sits in.

Sources (`load_split`):
    "digits"         scikit-learn's 1,797 8x8 digits upsampled to 32x32 RGB, stratified 80/20
                     split with seed 0 (ships inside scikit-learn, so a first run needs nothing)
    "fashion-mnist"  the IDX gzip files of the Debian package dataset-fashion-mnist
    a directory      ImageFolder-style: DIR/train/<class>/* and DIR/test/<class>/*, or
                     DIR/<class>/* split 80/20 per class by a fixed permutation
"""
import gzip
import os
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

DIGITS_SIZE = 32
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                         "bag", "ankle boot")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2


class ArrayDataset(torch.utils.data.Dataset):
    """Images held in memory as one uint8 (N, C, H, W) tensor, C in {1, 3}; grey images are
    replicated to RGB per item so the store stays small."""

    def __init__(self, images: Tensor, labels: Sequence[int], classes: Sequence[str], name: str):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != images.shape[0]:
            raise ValueError(f"{len(labels)} labels for {images.shape[0]} images")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = tuple(classes)
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, int, int]:
        image = self.images[index]
        if image.shape[0] == 1:
            image = image.repeat(3, 1, 1)
        return image, int(self.labels[index]), index


def _rgb8(image) -> np.ndarray:
    """(H, W, 3) uint8 of a PIL image, freshly opened (its decoder still says how samples are
    stored). 16-bit grayscale keeps its top 8 bits: PIL's own conversion clips it at 255, which
    turns most such images white. Mode "I" holds 32-bit integers, whatever the file's depth: a
    16-bit file (older Pillow opens 16-bit PNGs so) is read as 16-bit; from a 32-bit file, values
    within [0, 255] as 8-bit and within [0, 65535] as 16-bit (the depth the file does not say is
    taken from its values), wider ones are refused, as are float images: they have no range to
    scale from, and clipping them is what this avoids."""
    if image.mode == "F":
        raise ValueError("a 32-bit float image (mode F) has no fixed range to read as 8 bits; convert it to 8 or "
                         "16 bits")
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    values = np.asarray(image)
    shift = 8  # 16-bit samples keep their top 8 bits
    if image.mode == "I" and not _stored_rawmode(image).startswith("I;16") and values.size:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(f"a 32-bit integer image (mode I) with values in [{low}, {high}]: only values in "
                             "[0, 65535] (8- or 16-bit samples) can be read; convert it to 8 or 16 bits")
        if high <= 255:
            shift = 0
    gray = (values.astype(np.uint16) >> shift).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _stored_rawmode(image) -> str:
    """The raw mode of the image's first decoder tile ("I;16B" for a 16-bit PNG), or "" once the
    image is loaded or where the format says none."""
    tile = getattr(image, "tile", None) or []
    if not tile:
        return ""
    args = tile[0][3] if len(tile[0]) > 3 else None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode if isinstance(rawmode, str) else ""


class FileDataset(torch.utils.data.Dataset):
    """Image files decoded with PIL in the worker that loads them."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str], name: str):
        if len(paths) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(paths)} files")
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = tuple(classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[Tensor, int, int]:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                array = _rgb8(image)
        except OSError as exc:  # a truncated file's error does not name it
            raise OSError(f"{self.paths[index]}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{self.paths[index]}: {exc}") from exc
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), int(self.labels[index]), index


def collate_ragged(batch) -> Tuple[List[Tensor], Tensor, Tensor]:
    """[(image, label, index)] -> (list of uint8 (3, Hi, Wi) images, (B,) labels, (B,) indices)."""
    images, labels, indices = zip(*batch)
    return list(images), torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(indices, dtype=torch.int64)


def _stratified_split(labels: np.ndarray, split: str, seed: int = 0) -> np.ndarray:
    """Indices of `split`: per class, a fixed permutation puts the first TEST_FRACTION in test."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_test = int(round(TEST_FRACTION * len(members)))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return np.sort(np.concatenate(chosen))


def digits(split: str) -> ArrayDataset:
    """scikit-learn's digits, (values 0..16, white ink on black) scaled to 0..255 and upsampled
    bicubically from 8x8 to 32x32."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the embedded digits need scikit-learn (pip install scikit-learn)") from exc
    bunch = load_digits()
    index = _stratified_split(bunch.target, split)
    images = torch.from_numpy(bunch.images[index].astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bicubic", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayDataset(images, bunch.target[index].tolist(), [str(d) for d in range(10)], "digits")


def _idx_file(directory: str, stem: str) -> str:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}; install the Debian package with "
        "`apt-get install dataset-fashion-mnist` (it puts the IDX files in "
        f"{FASHION_MNIST_DIR}), or pass the directory holding them as --data")


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise ValueError(f"{path} is not an IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str, directory: str = FASHION_MNIST_DIR) -> ArrayDataset:
    prefix = "train" if split == "train" else "t10k"
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {directory} does not exist; install it with "
            "`apt-get install dataset-fashion-mnist`")
    images = read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"))
    return ArrayDataset(torch.from_numpy(images.copy()).unsqueeze(1), labels.astype(np.int64).tolist(),
                        FASHION_MNIST_CLASSES, "fashion-mnist")


def _scan_classes(root: str) -> Tuple[List[str], List[int], List[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise FileNotFoundError(f"{root} has no class subfolders (expected {root}/<class>/<image files>)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, cls))):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, name))
                    labels.append(label)
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return paths, labels, classes


def image_folder(root: str, split: str) -> FileDataset:
    name = os.path.basename(os.path.normpath(root))
    present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if len(present) == 1:
        # read as class folders, train/ would be one class called "train"
        missing = next(s for s in SPLITS if s not in present)
        raise FileNotFoundError(f"--data {root!r} has {present[0]}/ but no {missing}/: give both splits, each "
                                "holding the class folders, or the class folders alone (split here)")
    if len(present) == len(SPLITS):
        paths, labels, classes = _scan_classes(os.path.join(root, split))
        train_classes = _scan_classes(os.path.join(root, "train"))[2]
        if classes != train_classes:
            raise ValueError(f"{root}/train and {root}/test have different classes: {train_classes} vs {classes}")
        return FileDataset(paths, labels, classes, name)
    paths, labels, classes = _scan_classes(root)
    index = _stratified_split(np.asarray(labels), split)
    return FileDataset([paths[i] for i in index], [labels[i] for i in index], classes, name)


def load_split(data: str, split: str):
    """The `split` ("train" or "test") of `data`: "digits", "fashion-mnist" or a directory (an
    ImageFolder tree, or a directory of Fashion-MNIST IDX files)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data == "digits":
        return digits(split)
    if data == "fashion-mnist":
        return fashion_mnist(split)
    if not os.path.isdir(data):
        raise FileNotFoundError(f"--data {data!r}: not 'digits', 'fashion-mnist' or an existing directory")
    if any(name.startswith("train-images-idx3-ubyte") for name in os.listdir(data)):
        return fashion_mnist(split, data)
    return image_folder(data, split)


class EpochSampler(torch.utils.data.Sampler):
    """This rank's dataset indices for one epoch, in an order fixed by (seed, epoch).

    Like DistributedSampler with drop_last: every epoch draws one permutation of the whole
    dataset from seed + epoch, rank r takes positions r, r + R, ..., and only whole batches are
    kept. `set_epoch(epoch, skip_batches)` starts the epoch after `skip_batches` batches, which
    is how a resumed run continues mid-epoch with exactly the batches it had not seen.
    """

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, num_replicas={num_replicas}, "
                             f"rank={rank}")
        self.size, self.batch_size = size, batch_size
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.batches_per_epoch = (size // num_replicas) // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{size} images over {num_replicas} rank(s) do not fill one batch of {batch_size}; "
                             "lower --batch-size")
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}], got {skip_batches}")
        self.epoch, self.skip = epoch, skip_batches

    def indices(self) -> List[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[self.rank::self.num_replicas][:self.batches_per_epoch * self.batch_size]
        return mine[self.skip * self.batch_size:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.batch_size


def make_loader(dataset, sampler: Optional[EpochSampler], batch_size: int, num_workers: int,
                pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """A loader of ragged uint8 batches (see collate_ragged); sampler None reads in order.

    The loader gets a private generator: DataLoader draws a worker base seed at every epoch,
    and from the global RNG that draw would make the global RNG stream depend on how many
    epochs (and resumptions) a run has been through."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=sampler is not None,
        num_workers=num_workers, collate_fn=collate_ragged, pin_memory=pin_memory,
        persistent_workers=False, generator=torch.Generator().manual_seed(seed))
