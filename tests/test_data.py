"""Data loaders, on small files the tests write themselves (no real data is needed), plus one
check of the real files ($LIDVAE_DATA, or ../shared/data) when that folder exists."""

import gzip
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lidvae_nb import data
from lidvae_nb.data import (
    MNIST_FILES,
    OMNIGLOT_FILE,
    SHA256,
    binarize,
    fashion_mnist,
    mnist,
    omniglot,
    split_indices,
    subsample,
)

torch.set_num_threads(1)
# The real data: $LIDVAE_DATA (CI sets it where the shared folder sits beside the checkout), else
# that shared folder itself.
REAL_DATA = Path(
    os.environ.get("LIDVAE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def write_idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_idx_pair(folder: Path, split: str, n: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28))
    labels = rng.integers(0, 10, size=n)
    folder.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = MNIST_FILES[split]
    write_idx(folder / images_name, images, 0x803)
    write_idx(folder / labels_name, labels, 0x801)
    return images, labels


def write_omniglot(folder: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "background_images": rng.integers(0, 256, size=(5, 28, 28)).astype(np.uint8),
        "evaluation_images": rng.integers(0, 256, size=(3, 28, 28)).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / OMNIGLOT_FILE, **arrays)
    return arrays


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def fake_mnist(tmp_path):
    images, labels = write_idx_pair(tmp_path / "mnist", "test")
    return tmp_path, images, labels


def test_mnist_reads_idx_files_from_the_folder_named_by_the_environment(fake_mnist, monkeypatch):
    root, images, labels = fake_mnist
    monkeypatch.setenv("LIDVAE_DATA", str(root))
    x, y = mnist("test", verify=False)
    assert x.shape == (7, 784) and x.dtype.is_floating_point
    np.testing.assert_allclose(x.numpy(), images.reshape(7, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels)
    xb, _ = mnist("test", root=root, n=3, binarize=True, verify=False)
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
        mnist("test", root=root, verify=False)


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    images, labels = write_idx_pair(tmp_path / "fashion_mnist", "train", n=9, seed=1)
    x, y = fashion_mnist("train", root=tmp_path, verify=False)
    assert x.shape == (9, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), images.reshape(9, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels)
    x4, y4 = fashion_mnist("train", root=tmp_path, n=4, verify=False)
    np.testing.assert_array_equal(x4.numpy(), x[:4].numpy())
    np.testing.assert_array_equal(y4.numpy(), labels[:4])
    # MNIST's folder is a different one: nothing is there.
    with pytest.raises(FileNotFoundError, match="mnist"):
        mnist("train", root=tmp_path, verify=False)


def test_omniglot_reads_the_two_arrays_of_the_npz(tmp_path):
    arrays = write_omniglot(tmp_path / "omniglot")
    x, labels = omniglot("train", root=tmp_path, verify=False)
    assert labels is None and x.shape == (5, 784) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), arrays["background_images"].reshape(5, -1) / 255.0)
    xt, _ = omniglot("test", root=tmp_path, binarize=True, verify=False)
    np.testing.assert_array_equal(xt.numpy(), arrays["evaluation_images"].reshape(3, -1) > 127)
    assert omniglot("test", root=tmp_path, n=2, verify=False)[0].shape == (2, 784)
    with pytest.raises(ValueError, match="split must be one of"):
        omniglot("background", root=tmp_path, verify=False)


def test_a_hash_mismatch_names_the_file_and_both_hashes(tmp_path):
    write_idx_pair(tmp_path / "fashion_mnist", "test")
    path = tmp_path / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    expected = SHA256["fashion_mnist/t10k-images-idx3-ubyte.gz"]
    with pytest.raises(ValueError, match="sha256 mismatch") as info:
        fashion_mnist("test", root=tmp_path)
    message = str(info.value)
    assert str(path) in message and expected in message and file_sha256(path) in message
    write_omniglot(tmp_path / "omniglot")
    with pytest.raises(ValueError, match=OMNIGLOT_FILE):
        omniglot("train", root=tmp_path)


def test_verification_passes_with_matching_hashes_and_hashes_are_cached(tmp_path, monkeypatch):
    write_idx_pair(tmp_path / "fashion_mnist", "test")
    for name in MNIST_FILES["test"]:
        key = f"fashion_mnist/{name}"
        monkeypatch.setitem(data.SHA256, key, file_sha256(tmp_path / key))
    calls = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda: calls.append(1) or real_sha256())
    x, _ = fashion_mnist("test", root=tmp_path)
    assert x.shape == (7, 784) and len(calls) == 2
    fashion_mnist("test", root=tmp_path)
    assert len(calls) == 2  # hashed once per file and process


def test_a_missing_file_names_the_folder_the_variable_and_the_files(tmp_path):
    for loader, folder, names in (
        (fashion_mnist, "fashion_mnist", MNIST_FILES["train"]),
        (mnist, "mnist", MNIST_FILES["train"]),
        (omniglot, "omniglot", (OMNIGLOT_FILE,)),
    ):
        with pytest.raises(FileNotFoundError) as info:
            loader("train", root=tmp_path)
        message = str(info.value)
        assert str(tmp_path / folder) in message and "LIDVAE_DATA" in message
        assert all(name in message for name in names)


def fake_urlretrieve(sources: dict, calls: list):
    def urlretrieve(url, filename):
        calls.append(url)
        Path(filename).write_bytes(sources[url.rsplit("/", 1)[1]])
        return str(filename), None

    return urlretrieve


def test_download_fetches_the_standard_files_and_verifies_them(tmp_path, monkeypatch):
    source = tmp_path / "source"
    images, labels = write_idx_pair(source, "test", n=5, seed=3)
    sources = {name: (source / name).read_bytes() for name in MNIST_FILES["test"]}
    for name in sources:
        monkeypatch.setitem(data.SHA256, f"fashion_mnist/{name}", file_sha256(source / name))
    calls = []
    monkeypatch.setattr("urllib.request.urlretrieve", fake_urlretrieve(sources, calls))
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError):  # nothing is fetched unless asked
        fashion_mnist("test", root=root)
    assert calls == []
    x, y = fashion_mnist("test", root=root, download=True)
    base = data.DOWNLOAD_URLS["fashion_mnist"][0]
    assert calls == [base + name for name in MNIST_FILES["test"]]
    assert sorted(p.name for p in (root / "fashion_mnist").iterdir()) == sorted(sources)
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_allclose(x.numpy(), images.reshape(5, -1) / 255.0, rtol=1e-6)
    fashion_mnist("test", root=root, download=True)
    assert len(calls) == 2  # files present: no second download


def test_a_download_with_the_wrong_hash_is_rejected_and_removed(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_idx_pair(source, "test")
    sources = {name: (source / name).read_bytes() for name in MNIST_FILES["test"]}
    calls = []
    monkeypatch.setattr("urllib.request.urlretrieve", fake_urlretrieve(sources, calls))
    with pytest.raises(ValueError, match="sha256 mismatch .*t10k-images-idx3-ubyte.gz"):
        mnist("test", root=tmp_path / "root", download=True)
    assert not (tmp_path / "root" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert calls[0] == data.DOWNLOAD_URLS["mnist"][0] + "t10k-images-idx3-ubyte.gz"


def test_omniglot_cannot_be_downloaded(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("urllib.request.urlretrieve", fake_urlretrieve({}, calls))
    with pytest.raises(FileNotFoundError, match="by hand"):
        omniglot("train", root=tmp_path, download=True)
    assert calls == []


def test_binarize_draws_bernoulli_values_with_the_given_means():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(40_000, 1)
    b = binarize(p, generator=gen)
    assert b.shape == p.shape and set(b.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(b.mean(0).numpy(), [0.0, 0.1, 0.5, 0.9, 1.0], atol=0.01)
    again = binarize(p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(b, again)
    assert not torch.equal(b, binarize(p, generator=gen))  # a fresh draw differs
    for bad in (torch.tensor([0.5, 1.2]), torch.tensor([-0.1]), torch.tensor([float("nan")])):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            binarize(bad)


def test_split_indices_are_disjoint_complete_and_fixed_by_the_seed():
    train, val, test = split_indices(1000, 100, 50, seed=1)
    assert (len(train), len(val), len(test)) == (850, 100, 50)
    together = torch.cat([train, val, test])
    assert torch.equal(together.sort().values, torch.arange(1000))
    again = split_indices(1000, 100, 50, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = split_indices(1000, 100, 50, seed=2)
    assert not torch.equal(val, other[1])
    assert len(split_indices(10, 0, 0)[0]) == 10
    for args, match in (
        ((0, 0, 0), "n must be a positive integer"),
        ((10, -1, 0), "n_val must be a non-negative integer"),
        ((10, 2, 2.5), "n_test must be a non-negative integer"),
        ((10, 5, 5), "n_val \\+ n_test must be smaller than n"),
    ):
        with pytest.raises(ValueError, match=match):
            split_indices(*args)


def test_subsample_keeps_matching_rows_and_is_fixed_by_the_seed():
    x = torch.arange(100).float().unsqueeze(1)
    labels = torch.arange(100) % 10
    xs, ys = subsample(x, labels, 20, seed=4)
    assert xs.shape == (20, 1) and len(set(xs[:, 0].tolist())) == 20
    assert torch.equal(ys, xs[:, 0].long() % 10)
    assert torch.equal(xs, subsample(x, labels, 20, seed=4)[0])
    assert not torch.equal(xs, subsample(x, labels, 20, seed=5)[0])
    xn, none = subsample(x.numpy(), None, 5, seed=0)
    assert xn.shape == (5, 1) and none is None
    with pytest.raises(ValueError, match="at most the number of rows, 100"):
        subsample(x, labels, 101)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        subsample(x, labels, 0)


def test_the_real_files_verify_and_have_the_expected_shapes():
    if not REAL_DATA.is_dir():
        pytest.skip(f"no real data at {REAL_DATA}")
    start = time.perf_counter()
    for loader, train_n, test_n, labelled in (
        (mnist, 60_000, 10_000, True),
        (fashion_mnist, 60_000, 10_000, True),
        (omniglot, 19_280, 13_180, False),
    ):
        for split, n in (("train", train_n), ("test", test_n)):
            x, y = loader(split, root=REAL_DATA)
            assert x.shape == (n, 784) and x.dtype == torch.float32
            assert x.min() == 0 and x.max() == 1
            assert 0.05 < x.mean() < 0.4
            if labelled:
                assert y.shape == (n,) and set(y.unique().tolist()) == set(range(10))
            else:
                assert y is None
    assert time.perf_counter() - start < 30
