"""Data loaders, on small files the tests write themselves (no real data is needed)."""

import gzip

import numpy as np
import pytest

from lidvae_nb.data import mnist


def write_idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images, 0x803)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels, 0x801)
    return tmp_path, images, labels


def test_mnist_reads_idx_files_from_the_folder_named_by_the_environment(fake_mnist, monkeypatch):
    root, images, labels = fake_mnist
    monkeypatch.setenv("LIDVAE_DATA", str(root))
    x, y = mnist("test")
    assert x.shape == (7, 784) and x.dtype.is_floating_point
    np.testing.assert_allclose(x.numpy(), images.reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels)
    xb, _ = mnist("test", root=root, n=3, binarize=True)
    np.testing.assert_array_equal(xb.numpy(), images[:3].reshape(3, -1) > 127)


def test_mnist_errors_name_what_is_missing(fake_mnist, monkeypatch):
    root, _, _ = fake_mnist
    monkeypatch.delenv("LIDVAE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="set LIDVAE_DATA"):
        mnist("test")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        mnist("train", root=root)
    with pytest.raises(ValueError, match="split must be one of .* got 'valid'"):
        mnist("valid", root=root)
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros((7, 2)), 0x802)
    with pytest.raises(ValueError, match="magic 0x802, expected 0x801"):
        mnist("test", root=root)
