"""Loaders on small synthetic files (written here, no downloads), the input pipeline with
extra-data mixing, and the crop + flip augmentation."""

import os

import keras
import numpy as np
import pytest

from keras_dyart import augment, datasets

# -- SVHN ------------------------------------------------------------------------------------


def write_svhn(directory, n, seed, name):
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype="uint8")
    y = rng.integers(1, 11, size=(n, 1)).astype("uint8")       # 10 stands for the digit 0
    y[0, 0] = 10
    savemat(os.path.join(directory, name), {"X": x, "y": y})
    return x, y


def test_svhn_from_official_mat_files(tmp_path):
    x_tr, y_tr = write_svhn(tmp_path, 6, 0, "train_32x32.mat")
    x_te, y_te = write_svhn(tmp_path, 4, 1, "test_32x32.mat")
    x_ex, y_ex = write_svhn(tmp_path, 3, 2, "extra_32x32.mat")
    xa, ya, xb, yb = datasets.svhn(tmp_path)
    assert xa.shape == (6, 32, 32, 3) and xb.shape == (4, 32, 32, 3)
    assert xa.dtype == np.float32 and 0.0 <= xa.min() and xa.max() <= 1.0
    np.testing.assert_allclose(xa[2] * 255.0, x_tr[:, :, :, 2], atol=1e-3)
    np.testing.assert_array_equal(ya, y_tr[:, 0] % 10)
    np.testing.assert_array_equal(yb, y_te[:, 0] % 10)
    assert ya[0] == 0 and ya.dtype == np.int32
    xe, ye, _, _ = datasets.load("svhn", path=str(tmp_path), extra=True, dtype="uint8")
    assert xe.dtype == np.uint8 and len(xe) == 9
    np.testing.assert_array_equal(xe[6:], np.transpose(x_ex, (3, 0, 1, 2)))
    np.testing.assert_array_equal(ye[6:], y_ex[:, 0] % 10)


def test_svhn_errors_name_the_argument_and_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path`.*train_32x32.mat.*does not exist"):
        datasets.svhn(tmp_path / "nowhere")
    write_svhn(tmp_path, 2, 0, "train_32x32.mat")
    with pytest.raises(FileNotFoundError, match="`path`.*has no test_32x32.mat"):
        datasets.svhn(tmp_path)
    write_svhn(tmp_path, 2, 0, "test_32x32.mat")
    with pytest.raises(FileNotFoundError, match="has no extra_32x32.mat"):
        datasets.svhn(tmp_path, extra=True)
    with pytest.raises(ValueError, match="`dtype`"):
        datasets.svhn(tmp_path, dtype="float16")


# -- Tiny-ImageNet ---------------------------------------------------------------------------

COLOURS = {"n01443537": (250, 10, 10), "n01629819": (10, 250, 10), "n01641577": (10, 10, 250)}


def write_tinyimagenet(root, per_class=2, size=64):
    from PIL import Image

    root.mkdir()
    (root / "wnids.txt").write_text("".join(w + "\n" for w in COLOURS))
    for wnid, colour in COLOURS.items():
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), colour).save(folder / f"{wnid}_{i}.JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n01641577", "n01443537", "n01641577", "n01629819"]):
        Image.new("L" if i == 0 else "RGB", (size, size),                # a grey one too
                  128 if i == 0 else COLOURS[wnid]).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))


def test_tinyimagenet_from_the_standard_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_tinyimagenet(root)
    cache = tmp_path / "tiny.npz"
    x_tr, y_tr, x_te, y_te = datasets.tinyimagenet(root, cache=cache)
    assert x_tr.shape == (6, 64, 64, 3) and x_te.shape == (4, 64, 64, 3)
    assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    np.testing.assert_array_equal(y_tr, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(y_te, [2, 0, 2, 1])
    # Each image has its class colour (JPEG is lossy: compare means).
    for image, label in zip(x_tr, y_tr):
        colour = list(COLOURS.values())[label]
        np.testing.assert_allclose(image.mean((0, 1)) * 255, colour, atol=4)
    np.testing.assert_allclose(x_te[0] * 255, 128, atol=3)       # grey converted to RGB
    assert cache.exists()
    again = datasets.load("tinyimagenet", path=None, cache=cache, dtype="uint8")
    assert again[0].dtype == np.uint8
    np.testing.assert_array_equal(again[1], y_tr)
    np.testing.assert_allclose(again[0] / 255.0, x_tr, atol=1e-6)


def test_tinyimagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path`.*wnids.txt.*does not exist"):
        datasets.tinyimagenet(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no wnids.txt"):
        datasets.tinyimagenet(tmp_path)
    root = tmp_path / "tiny-imagenet-200"
    write_tinyimagenet(root)
    os.remove(root / "val" / "images" / "val_3.JPEG")
    with pytest.raises(FileNotFoundError, match="1 images listed in val/val_annotations.txt"):
        datasets.tinyimagenet(root)
    with pytest.raises(ValueError, match="`path` is required"):
        datasets.tinyimagenet(None)


# -- .npz and keras.datasets ---------------------------------------------------------------


def test_load_npz_formats_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(5, 6, 6), dtype="uint8")
    np.savez(tmp_path / "gray.npz", x=gray, y=np.arange(5))
    x, y = datasets.load_npz(tmp_path / "gray.npz")
    assert x.shape == (5, 6, 6, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0] * 255.0, gray, atol=1e-3)
    np.testing.assert_array_equal(y, np.arange(5))

    floats = rng.random((4, 6, 6, 3)).astype("float32")
    np.savez(tmp_path / "gen.npz", image=floats, label=np.array([[1], [2], [3], [4]]))
    x, y = datasets.load_npz(tmp_path / "gen.npz", x_key="image", y_key="label")
    np.testing.assert_array_equal(x, floats)
    np.testing.assert_array_equal(y, [1, 2, 3, 4])
    x8, _ = datasets.load_npz(tmp_path / "gen.npz", x_key="image", y_key="label",
                              dtype="uint8")
    np.testing.assert_array_equal(x8, np.round(floats * 255).astype("uint8"))

    both = datasets.load("npz", path=tmp_path / "gray.npz", test_path=tmp_path / "gray.npz")
    assert len(both) == 4 and both[2].shape == (5, 6, 6, 1)

    with pytest.raises(FileNotFoundError, match="`path` must be a .npz file.*'x'.*'y'"):
        datasets.load_npz(tmp_path / "absent.npz")
    with pytest.raises(KeyError, match="no array 'x'.*found \\['image', 'label'\\]"):
        datasets.load_npz(tmp_path / "gen.npz")
    np.savez(tmp_path / "bad.npz", x=floats * 3, y=np.arange(4))
    with pytest.raises(ValueError, match="`x` holds floats outside \\[0, 1\\]"):
        datasets.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", x=floats, y=np.arange(3))
    with pytest.raises(ValueError, match="`y` must hold one integer label per image"):
        datasets.load_npz(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="`test_path` is required"):
        datasets.load("npz", path=tmp_path / "gray.npz")


def test_cifar_loaders_convert_keras_datasets(monkeypatch):
    rng = np.random.default_rng(0)
    fake = ((rng.integers(0, 256, (3, 32, 32, 3), dtype="uint8"), np.array([[1], [2], [3]])),
            (rng.integers(0, 256, (2, 32, 32, 3), dtype="uint8"), np.array([[4], [5]])))
    calls = []
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: fake)
    monkeypatch.setattr(keras.datasets.cifar100, "load_data",
                        lambda label_mode: calls.append(label_mode) or fake)
    x_tr, y_tr, x_te, y_te = datasets.load("cifar10")
    assert x_tr.dtype == np.float32 and x_tr.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(x_tr * 255.0, fake[0][0], atol=1e-3)
    np.testing.assert_array_equal(y_tr, [1, 2, 3])
    np.testing.assert_array_equal(y_te, [4, 5])
    assert y_tr.dtype == np.int32
    datasets.cifar100(label_mode="coarse", dtype="uint8")
    assert calls == ["coarse"]
    with pytest.raises(ValueError, match="`label_mode`"):
        datasets.cifar100(label_mode="medium")
    with pytest.raises(ValueError, match="`name` must be one of"):
        datasets.load("imagenet")


def test_mnist5k_is_unchanged(mnist5k):
    x_tr, y_tr, x_te, y_te = mnist5k
    assert x_tr.shape == (4000, 28, 28, 1) and x_te.shape == (1000, 28, 28, 1)
    assert np.bincount(np.concatenate([y_tr, y_te])).tolist() == [500] * 10
    with pytest.raises(TypeError, match="takes no options"):
        datasets.load("mnist5k", path="x")


# -- augmentation --------------------------------------------------------------------------


def crops_of(image, pad):
    """All (2·pad + 1)² crops of the zero-padded image and their mirror images."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            out += [crop, crop[:, ::-1]]
    return out


def assert_crop_flips(x, out, pad):
    assert out.shape == x.shape
    assert 0.0 <= out.min() and out.max() <= x.max()
    for image, result in zip(x, out):
        assert any(np.array_equal(result, c) for c in crops_of(image, pad))


def test_random_crop_flip_numpy_keeps_shape_and_range():
    x = np.random.default_rng(0).random((64, 6, 7, 2)).astype("float32") * 0.5 + 0.5
    out = augment.random_crop_flip(x, pad=2, rng=1)
    assert out.dtype == x.dtype
    assert_crop_flips(x, out, 2)
    # Offsets and flips differ between images: not one transform for the whole batch.
    assert sum(np.array_equal(o, i) for o, i in zip(out, x)) < 16
    assert np.mean(out == 0) > 0          # some padding came in
    np.testing.assert_array_equal(augment.random_crop_flip(x, pad=0, flip=False), x)
    with pytest.raises(ValueError, match="`pad`"):
        augment.random_crop_flip(x, pad=-1)
    with pytest.raises(ValueError, match="`images`"):
        augment.random_crop_flip(x[0])


def test_random_crop_flip_layer_on_the_backend():
    x = np.random.default_rng(1).random((32, 6, 5, 3)).astype("float32") * 0.5 + 0.5
    layer = augment.RandomCropFlip(pad=2, seed=3)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    assert_crop_flips(x, out, 2)
    assert sum(np.array_equal(o, i) for o, i in zip(out, x)) < 8
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    clone = augment.RandomCropFlip.from_config(layer.get_config())
    assert (clone.pad, clone.flip, clone.seed) == (2, True, 3)


# -- the pipeline ----------------------------------------------------------------------------


def test_pipeline_batches_without_augmentation_are_the_data():
    x = np.arange(10 * 4 * 4, dtype="uint8").reshape(10, 4, 4, 1)
    y = np.arange(10)
    data = datasets.pipeline(x, y, batch_size=4, augment=False, shuffle=False)
    assert len(data) == 3
    xb, yb = data[2]
    assert xb.dtype == np.float32 and yb.dtype == np.int32
    np.testing.assert_allclose(xb * 255.0, x[8:], atol=1e-3)
    np.testing.assert_array_equal(yb, [8, 9])
    assert len(datasets.pipeline(x, y, batch_size=4, drop_remainder=True)) == 2


def test_pipeline_shuffles_each_epoch_and_augments_within_range():
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 3)).astype("float32") * 0.5 + 0.5
    y = np.arange(20)
    data = datasets.pipeline(x, y, batch_size=5, seed=1)
    epoch1 = np.concatenate([data[i][1] for i in range(len(data))])
    xb, yb = data[0]
    assert_crop_flips(x[yb], xb, 4)
    data.on_epoch_end()
    epoch2 = np.concatenate([data[i][1] for i in range(len(data))])
    assert sorted(epoch1) == sorted(epoch2) == list(range(20))
    assert not np.array_equal(epoch1, epoch2)


@pytest.mark.parametrize("fraction,batch_size", [(0.7, 10), (0.5, 8), (0.3, 16)])
def test_pipeline_mixes_extra_data_at_the_fraction(fraction, batch_size):
    x = np.zeros((30, 4, 4, 1), "uint8")
    y = np.zeros(30, "int32")                          # base data: label 0
    ex = np.full((7, 4, 4, 1), 255, "uint8")
    ey = np.arange(1, 8)                                # extra data: labels 1..7
    data = datasets.pipeline(x, y, batch_size=batch_size, extra=(ex, ey),
                             extra_fraction=fraction, augment=False, seed=2)
    k = round(fraction * batch_size)
    assert len(data) == int(np.ceil(30 / (batch_size - k)))
    seen_extra = []
    for _epoch in range(2):
        base = 0
        for i in range(len(data)):
            xb, yb = data[i]
            assert len(yb) <= batch_size
            assert np.sum(yb > 0) == k                   # exactly k extra images per batch
            np.testing.assert_array_equal(xb[yb > 0], 1.0)
            np.testing.assert_array_equal(xb[yb == 0], 0.0)
            base += np.sum(yb == 0)
            seen_extra += list(yb[yb > 0])
        assert base == 30                                # one pass over the base data
        data.on_epoch_end()
    # The extra set is cycled through: every extra image is used about equally often.
    counts = np.bincount(seen_extra, minlength=8)[1:]
    assert counts.max() - counts.min() <= 2 and counts.sum() == 2 * len(data) * k


def test_pipeline_feeds_fit_on_this_backend():
    x = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 1), dtype="uint8")
    y = np.arange(24) % 3
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(datasets.pipeline(x, y, batch_size=8, extra=(x[:4], y[:4]),
                                          extra_fraction=0.25), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("kwargs,match", [
    ({"extra_fraction": 0.5}, "`extra_fraction` > 0 needs `extra`"),
    ({"extra_fraction": 1.0, "extra": "e"}, "`extra_fraction` must be in \\[0, 1\\)"),
    ({"batch_size": 0}, "`batch_size`"),
    ({"extra": (np.zeros((2, 5, 5, 1)), [0, 1]), "extra_fraction": 0.5}, "`extra` images"),
    ({"extra": np.zeros(3), "extra_fraction": 0.5}, "`extra` must be a pair"),
    ({"pad": -2}, "`pad`"),
    ({"batch_size": 8, "drop_remainder": True}, "fewer than the 8"),
])
def test_pipeline_argument_errors(kwargs, match):
    x = np.zeros((4, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match=match):
        datasets.pipeline(x, np.zeros(4), **kwargs)


def test_channels_first_images_are_refused_with_the_transpose(tmp_path):
    # Before: (N, 3, 32, 32) from a PyTorch-style file was read as images 3 pixels high with
    # 32 channels, and `keras-dyart train --dataset npz` built and trained a model on that.
    from keras_dyart.pipeline import pipeline

    rng = np.random.default_rng(0)
    for shape in ((4, 3, 8, 8), (4, 1, 8, 8)):
        np.savez(tmp_path / "nchw.npz", x=rng.integers(0, 256, size=shape, dtype="uint8"),
                 y=np.arange(4))
        with pytest.raises(ValueError, match=r"`x` has shape .*looks channels-first.*"
                                             r"transpose\(0, 2, 3, 1\)"):
            datasets.load_npz(tmp_path / "nchw.npz")
        with pytest.raises(ValueError, match="looks channels-first"):
            pipeline(rng.random(shape).astype("float32"), np.arange(4), batch_size=2)
    # channels-last colour and grey images, and grey images without a channel axis, pass
    for shape in ((4, 8, 8, 3), (4, 8, 8, 1), (4, 3, 8)):
        np.savez(tmp_path / "ok.npz", x=rng.integers(0, 256, size=shape, dtype="uint8"),
                 y=np.arange(4))
        assert datasets.load_npz(tmp_path / "ok.npz")[0].shape[:2] == shape[:2]
