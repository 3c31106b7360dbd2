"""Data sources, the per-epoch sampler and the ragged collate."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

from clever_kernels.train.data import (EpochSampler, collate_ragged, digits, fashion_mnist, load_split, make_loader,
                                       read_idx)
from train_helpers import make_image_folder


def test_digits_split():
    train, test = digits("train"), digits("test")
    assert len(train) + len(test) == 1797 and abs(len(test) - 360) <= 5
    image, label, index = train[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and index == 5 and 0 <= label < 10
    assert int(image.max()) > 200 and int(image.min()) == 0
    # stratified: every class keeps about a fifth of its images for the test split
    counts_train = np.bincount(train.labels.numpy(), minlength=10)
    counts_test = np.bincount(test.labels.numpy(), minlength=10)
    np.testing.assert_allclose(counts_test / (counts_train + counts_test), 0.2, atol=0.01)
    assert torch.equal(digits("train").images, train.images)


def test_sampler_is_a_function_of_seed_and_epoch():
    a = EpochSampler(50, 4, seed=3)
    a.set_epoch(2)
    first = a.indices()
    assert len(first) == 48 and len(set(first)) == 48 and len(a) == 48
    b = EpochSampler(50, 4, seed=3)
    b.set_epoch(2)
    assert b.indices() == first
    b.set_epoch(3)
    assert b.indices() != first
    b.set_epoch(2, skip_batches=5)
    assert b.indices() == first[20:] and len(b) == 28


def test_sampler_partitions_ranks():
    ranks = [EpochSampler(103, 5, num_replicas=3, rank=r, seed=0) for r in range(3)]
    for s in ranks:
        s.set_epoch(1)
    parts = [set(s.indices()) for s in ranks]
    assert all(len(p) == 30 for p in parts) and not (parts[0] & parts[1]) and not (parts[1] & parts[2])
    with pytest.raises(ValueError, match="batch"):
        EpochSampler(5, 8)


def test_ragged_loader(tmp_path):
    root = make_image_folder(tmp_path / "folder")
    train = load_split(root, "train")
    assert len(train) == 20 and train.classes == ("class0", "class1", "class2", "class3")
    images, labels, ids = next(iter(make_loader(train, None, 6, 0)))
    assert isinstance(images, list) and len(images) == 6 and labels.shape == ids.shape == (6,)
    assert {tuple(im.shape) for im in images} == {(3, 32, 32), (3, 40, 36)}
    assert all(im.dtype == torch.uint8 for im in images)
    assert not set(load_split(root, "test").paths) & set(train.paths)


def test_train_test_folders(tmp_path):
    for split in ("train", "test"):
        make_image_folder(tmp_path / split, per_class=2, classes=2, ragged=False)
    assert len(load_split(str(tmp_path), "train")) == 4 and len(load_split(str(tmp_path), "test")) == 4


def test_folder_and_split_errors_say_what_is_wrong(tmp_path):
    """An empty tree, class folders without images, splits with different classes, a bad split
    name and a file that is not IDX each get an error that says so."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no class subfolders"):
        load_split(str(tmp_path / "empty"), "train")
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no image files .* under"):
        load_split(str(tmp_path / "no_images"), "train")
    make_image_folder(tmp_path / "mixed" / "train", per_class=2, classes=2, ragged=False)
    make_image_folder(tmp_path / "mixed" / "test", per_class=2, classes=3, ragged=False)
    with pytest.raises(ValueError, match="train and .*test have different classes"):
        load_split(str(tmp_path / "mixed"), "test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("digits", "validation")
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x01\x02\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="is not an IDX file"):
        load_split(str(tmp_path), "train")
    with pytest.raises(ValueError, match="bad sampler arguments"):
        EpochSampler(10, 2, num_replicas=2, rank=2)
    sampler = EpochSampler(10, 2)
    with pytest.raises(ValueError, match=r"skip_batches must be in \[0, 5\]"):
        sampler.set_epoch(0, skip_batches=6)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    assert read_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz")).shape == (5,)
    train = load_split(str(tmp_path), "train")
    image, label, index = train[3]
    assert len(train) == 12 and image.shape == (3, 28, 28) and train.name == "fashion-mnist"
    assert torch.equal(image[0], image[2])


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", str(tmp_path / "empty"))


def test_collate():
    images, labels, ids = collate_ragged([(torch.zeros(3, 4, 5, dtype=torch.uint8), 1, 7),
                                          (torch.zeros(3, 6, 2, dtype=torch.uint8), 0, 2)])
    assert [im.shape[1:] for im in images] == [(4, 5), (6, 2)]
    assert labels.tolist() == [1, 0] and ids.tolist() == [7, 2]


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_package():
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    image, label, _ = train[0]
    assert image.shape == (3, 28, 28) and train.classes[label] == "ankle boot"


def test_one_split_folder_and_truncated_files_are_named(tmp_path):
    """train/ without test/ would be read as one class called "train"; a truncated image's
    decoding error names the file."""
    make_image_folder(tmp_path / "lone" / "train", per_class=3, classes=2)
    with pytest.raises(FileNotFoundError, match="has train/ but no test/"):
        load_split(str(tmp_path / "lone"), "train")
    root = make_image_folder(tmp_path / "cut", per_class=5, classes=2)
    victim = os.path.join(root, "class1", "0.png")
    with open(victim, "rb") as f:
        head = f.read(200)
    with open(victim, "wb") as f:
        f.write(head)
    dataset = next(d for d in (load_split(root, "train"), load_split(root, "test")) if victim in d.paths)
    with pytest.raises(OSError, match=f"{victim}: "):
        dataset[dataset.paths.index(victim)]


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    from PIL import Image

    from clever_kernels.train.data import FileDataset

    values = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image, _, _ = FileDataset([str(tmp_path / "deep.png")], [0], ["a"], "t")[0]
    assert image.shape == (3, 12, 10) and image.dtype == torch.uint8
    assert torch.equal(image[0], torch.from_numpy((values >> 8).astype(np.uint8))) and torch.equal(image[0], image[2])


def test_thirty_two_bit_images_are_read_by_their_range_or_refused(tmp_path):
    """Mode I (32-bit integers) holding 16-bit samples keeps their top 8 bits, like I;16, and
    holding 8-bit samples keeps them; wider integers and float images are refused naming the
    file, never clipped to white (or shifted to black)."""
    from PIL import Image

    from clever_kernels.train.data import FileDataset

    def read(name):
        return FileDataset([str(tmp_path / name)], [0], ["a"], "t")[0][0]

    sixteen = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.int32)
    eight = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.int32)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.tif")
    Image.fromarray(eight.astype(np.uint8)).convert("I").save(tmp_path / "eight.tif")
    assert Image.open(tmp_path / "sixteen.tif").mode == Image.open(tmp_path / "eight.tif").mode == "I"
    image = read("sixteen.tif")
    assert image.shape == (3, 12, 10) and torch.equal(image[1], torch.from_numpy((sixteen >> 8).astype(np.uint8)))
    assert torch.equal(read("eight.tif")[2], torch.from_numpy(eight.astype(np.uint8)))
    Image.fromarray(sixteen * 1000).save(tmp_path / "deeper.tif")
    Image.fromarray(sixteen.astype(np.float32) / 60000).save(tmp_path / "float.tif")
    for name, match in (("deeper.tif", r"mode I\) with values in \[0, 59500000\]"), ("float.tif", "mode F")):
        with pytest.raises(ValueError, match=f"{tmp_path / name}: .*{match}"):
            read(name)


def test_sixteen_bit_file_read_as_mode_i_keeps_its_depth(tmp_path):
    """Where Pillow opens a 16-bit file as mode I (older releases do so for PNGs), its decoder's
    16-bit raw mode decides, not its values: a dark 16-bit image stays dark."""
    from PIL import Image

    from clever_kernels.train.data import _rgb8

    dark = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.uint16)  # all below 256
    Image.fromarray(dark).save(tmp_path / "dark.png")
    with Image.open(tmp_path / "dark.png") as png:
        tile = png.tile

    class OpenedAsModeI:  # such a Pillow's image: mode I, the PNG's decoder tiles
        mode = "I"

        def __init__(self):
            self.tile = tile

        def __array__(self, dtype=None, copy=None):
            return dark.astype(np.int32)

    assert (_rgb8(OpenedAsModeI()) == 0).all()
