"""Dataset readers, the glyph generator, the fitting rule and augmentation, checked against
bytes written by hand and closed-form expectations."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cnngraph.data import channel_stats, fit, glyphs, load_data, make_glyphs
from cnngraph.data.augment import random_crop, random_flip
from cnngraph.data.readers import read_cifar_batch
from cnngraph.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX by hand: 0, 0, type 0x08 (ubyte), ndim, big-endian int32 dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def rng():
    return np.random.default_rng(123)


# --- MNIST IDX ----------------------------------------------------------------------------
def test_idx_folder_raw_and_gz(tmp_path, rng):
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    xt, yt = x[:2], np.array([9, 2], dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(x))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(xt)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(yt)))
    ds = load_data(tmp_path, (1, 32, 32))
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train[:, 0], x)
    np.testing.assert_array_equal(ds.y_train, [3, 1, 4, 1, 5])
    np.testing.assert_array_equal(ds.x_val[:, 0], xt)
    np.testing.assert_array_equal(ds.y_val, [9, 2])


def test_idx_images_and_labels_each_raw_or_gz(tmp_path, rng):
    x = rng.integers(0, 256, (4, 6, 6), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([2, 0, 1, 2])))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(x[:2]))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.ones(2))))
    ds = load_data(tmp_path, (1, 6, 6))
    np.testing.assert_array_equal(ds.y_train, [2, 0, 1, 2])
    np.testing.assert_array_equal(ds.y_val, [1, 1])
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no labels file train-labels-idx1-ubyte or "
                                        "train-labels-idx1-ubyte.gz"):
        load_data(tmp_path, (1, 6, 6))


def test_idx_single_file_gets_seeded_split(tmp_path, rng):
    x = rng.integers(0, 256, (20, 4, 4), dtype=np.uint8)
    y = np.arange(20, dtype=np.uint8) % 10
    (tmp_path / "a-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
    (tmp_path / "a-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    ds = load_data(tmp_path / "a-images-idx3-ubyte.gz", (1, 4, 4), val_fraction=0.25)
    assert (len(ds.y_train), len(ds.y_val)) == (15, 5)
    # every sample lands in exactly one split, with its own label
    both = np.concatenate([ds.x_train, ds.x_val])[:, 0].reshape(20, -1)
    labels = np.concatenate([ds.y_train, ds.y_val])
    order = np.lexsort(both.T[::-1])
    ref = np.lexsort(x.reshape(20, -1).T[::-1])
    np.testing.assert_array_equal(both[order], x.reshape(20, -1)[ref])
    np.testing.assert_array_equal(labels[order], y[ref])
    again = load_data(tmp_path / "a-images-idx3-ubyte.gz", (1, 4, 4), val_fraction=0.25)
    np.testing.assert_array_equal(again.y_val, ds.y_val)


def test_idx_truncated_is_a_data_error(tmp_path):
    data = idx_bytes(np.zeros((3, 4, 4)))[:-5]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(DataError, match="truncated"):
        load_data(tmp_path, (1, 4, 4))


# --- CIFAR --------------------------------------------------------------------------------
def cifar_folder(tmp_path, rng, protocol=2):
    batches = []
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f,
                        protocol=protocol)
        batches.append((data, labels))
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches(tmp_path, rng, protocol):
    batches = cifar_folder(tmp_path, rng, protocol)
    ds = load_data(tmp_path, (3, 32, 32))
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.classes[3] == "c3"
    data0 = batches[0][0]
    # CIFAR rows: 1024 red, 1024 green, 1024 blue values, each a 32x32 image row-major
    assert ds.x_train[1, 2, 5, 7] == data0[1, 2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(ds.x_train[3:].reshape(3, -1), batches[1][0])
    np.testing.assert_array_equal(ds.y_train, batches[0][1] + batches[1][1])
    np.testing.assert_array_equal(ds.x_val.reshape(3, -1), batches[2][0])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refusing to load .*print"):
        read_cifar_batch(path)
    assert "pwned" not in capsys.readouterr().out


# --- image folder -------------------------------------------------------------------------
def test_image_folder(tmp_path, rng):
    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
            pixels[(cls, i)] = arr
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_data(tmp_path, (3, 6, 5), val_fraction=0.34)
    assert ds.classes == ["cat", "dog"]
    assert (len(ds.y_train), len(ds.y_val)) == (4, 2)
    decoded = {tuple(a.transpose(1, 2, 0).ravel()): int(c)
               for a, c in zip(np.concatenate([ds.x_train, ds.x_val]),
                               np.concatenate([ds.y_train, ds.y_val]))}
    expected = {tuple(a.ravel()): ["cat", "dog"].index(k[0]) for k, a in pixels.items()}
    assert decoded == expected


def test_image_folder_train_val_gray(tmp_path):
    for split, value in (("train", 10), ("val", 200)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            rgb = np.full((4, 4, 3), value, dtype=np.uint8)  # gray: luminance equals the value
            Image.fromarray(rgb).save(tmp_path / split / cls / "x.png")
    ds = load_data(tmp_path, (1, 8, 8))
    assert ds.x_train.shape == (2, 1, 8, 8)  # resized to the spec's H x W while read
    assert (ds.x_train == 10).all() and (ds.x_val == 200).all()
    np.testing.assert_array_equal(ds.y_val, [0, 1])


# --- npz ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path, rng, layout):
    nchw = rng.integers(0, 256, (10, 3 if layout != "NHW" else 1, 5, 6), dtype=np.uint8)
    x = {"NHW": nchw[:, 0], "NHWC": nchw.transpose(0, 2, 3, 1), "NCHW": nchw}[layout]
    y = np.arange(10) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:3], y_val=y[:3],
             classes=np.array(["w", "x", "y", "z"]))
    ds = load_data(tmp_path / "d.npz", (3, 5, 6))
    np.testing.assert_array_equal(ds.x_train, nchw)
    np.testing.assert_array_equal(ds.x_val, nchw[:3])
    np.testing.assert_array_equal(ds.y_train, y)
    assert ds.classes == ["w", "x", "y", "z"]


def test_npz_float_split_and_scale(tmp_path, rng):
    x = rng.random((30, 2, 5, 5)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(30) % 3)
    ds = load_data(tmp_path / "f.npz", (2, 5, 5), val_fraction=0.2)
    assert (len(ds.y_train), len(ds.y_val)) == (24, 6)
    assert ds.pixel_scale == 1.0
    fitted = fit(ds, (2, 5, 5), 3)
    assert fitted.x_train.dtype == np.float32


# --- the fitting rule ---------------------------------------------------------------------
def test_fit_pads_28_to_32_centred_and_replicates_channels(rng):
    ds = glyphs(train=4, val=2)
    small = rng.integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    ds.x_train, ds.x_val = small, small[:2]
    out = fit(ds, (3, 32, 32), 10)
    assert out.x_train.shape == (4, 3, 32, 32)
    for c in range(3):
        np.testing.assert_array_equal(out.x_train[:, c, 2:30, 2:30], small[:, 0])
    assert out.x_train[:, :, :2].sum() == 0 and out.x_train[:, :, :, 30:].sum() == 0


def test_fit_resizes_bilinear():
    ds = glyphs(train=2, val=1)
    ramp = np.tile(np.arange(16, dtype=np.float32), (3, 1, 16, 1))  # value = column index
    ds.x_train, ds.x_val = ramp[:2], ramp[2:]
    out = fit(ds, (1, 32, 32), 10).x_train
    # bilinear, half-pixel centres: output column j samples input column (j + 0.5) / 2 - 0.5
    j = np.arange(1, 31)
    np.testing.assert_allclose(out[0, 0, 5, 1:31], (j + 0.5) / 2 - 0.5, atol=1e-5)


def test_fit_rejects_bad_channels_and_labels(rng):
    ds = glyphs(train=4, val=2)
    ds.x_train = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(DataError, match="3 channels but the spec's input has 1; convert them "
                                        "to 1-channel images"):
        fit(ds, (1, 32, 32), 10)
    negative = glyphs(train=4, val=2)
    negative.y_val = np.array([0, -1])
    with pytest.raises(DataError, match="labels must be class indices ≥ 0, found -1"):
        fit(negative, (1, 32, 32), 10)
    with pytest.raises(DataError, match="labels run from 0 to 9 but the spec has 5 classes"):
        fit(glyphs(train=20, val=10), (1, 32, 32), 5)


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "nope", (1, 32, 32))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match="unknown dataset format"):
        load_data(tmp_path / "data.csv", (1, 32, 32))
    (tmp_path / "bad.npz").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not an .npz archive"):
        load_data(tmp_path / "bad.npz", (1, 32, 32))
    np.savez(tmp_path / "floaty.npz", x=np.zeros((4, 4, 4)), y=np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(DataError, match=r"'y' holds float64 values; labels must be integers.*"
                                        r"y\.astype\(int\)"):
        load_data(tmp_path / "floaty.npz", (1, 4, 4))
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load_data(tmp_path / "nox.npz", (1, 32, 32))


def test_channel_stats_match_numpy(rng):
    x = rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = channel_stats(x, 1 / 255, (3, 4, 4))
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-8)
    # the statistics of what the net sees: 28x28 zero-padded into 32x32
    small = rng.integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)
    (mean,), (std,) = channel_stats(small, 1 / 255, (1, 32, 32))
    values = small.astype(np.float64) / 255
    assert mean == pytest.approx(values.sum() / (10 * 32 * 32), rel=1e-10)
    assert std ** 2 + mean ** 2 == pytest.approx((values ** 2).sum() / (10 * 32 * 32), rel=1e-8)


# --- glyphs -------------------------------------------------------------------------------
def test_glyphs_are_deterministic_and_balanced():
    x1, y1, classes = make_glyphs(200, seed=7)
    x2, y2, _ = make_glyphs(200, seed=7)
    x3, _, _ = make_glyphs(200, seed=8)
    assert x1.tobytes() == x2.tobytes() and (y1 == y2).all()
    assert not np.array_equal(x1, x3)
    assert classes == [str(d) for d in range(10)]
    assert x1.shape == (200, 1, 32, 32) and x1.dtype == np.float32
    assert 0.0 <= x1.min() and x1.max() <= 1.0
    assert np.bincount(y1).tolist() == [20] * 10
    # ink is there, and a glyph is not just noise: the mean image of a class differs by class
    means = np.stack([x1[y1 == k].mean(axis=0) for k in range(10)])
    assert x1.reshape(200, -1).max(axis=1).min() > 0.5
    assert np.abs(means[1] - means[0]).mean() > 0.02
    _, y16, classes16 = make_glyphs(32, seed=0, variant="glyphs16")
    assert len(classes16) == 16 and set(y16.tolist()) == set(range(16))


# --- augmentation -------------------------------------------------------------------------
def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(2):
        windows = [padded[n, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)


def test_random_flip_mirrors_some_samples():
    x = torch.randn(64, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[n], x[n].flip(-1)) for n in range(64)]
    kept = [torch.equal(out[n], x[n]) for n in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_a_recorded_glyphs_name_loads_the_same_samples():
    """`cnngraph demo` records its data as glyphs(train=..., val=..., seed=...) in the run's
    config.json; `export RUN --int8` names the run's data by it, so it must load again."""
    from cnngraph.data import glyphs, load_data
    made = glyphs(train=30, val=10, seed=3)
    again = load_data(made.source, (1, 32, 32))
    assert made.source == "glyphs(train=30, val=10, seed=3)"
    assert np.array_equal(again.x_train, made.x_train) and np.array_equal(again.y_val, made.y_val)
    for bad in ("glyphs(train=999999, val=999999, seed=0)", "nosuch(train=1, val=1, seed=0)"):
        with pytest.raises(DataError):
            load_data(bad, (1, 32, 32))
