"""Data sets: synthetic generators (pinwheel; Yacoby et al.'s four benchmarks), loaders of the
real image data (MNIST, Fashion-MNIST, Omniglot; checked against known SHA-256 values) and helpers
for dynamic binarisation, fixed splits and subsets; for text, a vocabulary, the Yahoo corpus,
padding of token sequences and a synthetic corpus drawn from a known sequential VAE."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from lidvae_nb._checks import check_count


def pinwheel(
    n_per_class: int = 200,
    n_classes: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.05,
    rate: float = 0.25,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pinwheel data of Johnson et al. (2016): ``n_classes`` curved arms in the plane.

    Each arm is a Gaussian blob stretched along a radius and then bent by a rotation whose angle
    grows with the distance from the centre. Returns (x, labels): (N, 2) float32 and (N,) int64,
    N = n_classes * n_per_class, shuffled with ``seed``.
    """
    check_count("n_per_class", n_per_class)
    check_count("n_classes", n_classes)
    for name, value in (("radial_std", radial_std), ("tangential_std", tangential_std)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    rng = np.random.default_rng(seed)
    arm_angles = np.linspace(0, 2 * np.pi, n_classes, endpoint=False)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    local = rng.normal(size=(labels.size, 2)) * np.array([radial_std, tangential_std])
    local[:, 0] += 1.0
    angles = arm_angles[labels] + rate * np.exp(local[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    x = np.stack([local[:, 0] * cos - local[:, 1] * sin, local[:, 0] * sin + local[:, 1] * cos], 1)
    order = rng.permutation(labels.size)
    return (
        torch.as_tensor(x[order], dtype=torch.float32),
        torch.as_tensor(labels[order], dtype=torch.int64),
    )


# --- Yacoby et al.'s four synthetic benchmarks (their Appendix E) ------------------------------

#: Eq. 3's parameters A, the diagonal of B and sigma_eps^2 (the noise is N(0, sigma2 I - B)).
JTE_A = ((0.75, 0.25), (1.5, -1.0))
JTE_B = 0.006
JTE_SIGMA2 = 0.01
#: The "Gaussian" data set's loading, x = z^T A + noise (2 x 4).
GAUSSIAN_A = ((-0.7074, 0.0995, 0.0286, 0.1240), (0.7074, 0.9948, -0.9995, 0.9920))
#: The Mobius transform m(z) = (a z + b) / (c z + d) on z = z1 + i z2.
MOBIUS_COEFFICIENTS = (1 + 0j, 1 + 4j, 1 + 0j, 7 + 4j)
#: Data dimension and observation-noise variance of each data set (latents are 2-d, N(0, I)).
SYNTHETIC = {
    "linear_jte": {"data_dim": 2, "noise_var": JTE_SIGMA2 - JTE_B},
    "cubic_jte": {"data_dim": 2, "noise_var": JTE_SIGMA2 - JTE_B},
    "gaussian": {"data_dim": 4, "noise_var": 1e-6},
    "mobius": {"data_dim": 2, "noise_var": 1e-5},
}


def _check_synthetic(name: str) -> dict:
    if name not in SYNTHETIC:
        raise ValueError(f"name must be one of {tuple(SYNTHETIC)}, got {name!r}")
    return SYNTHETIC[name]


def jte_loading(A: torch.Tensor, b: float = JTE_B) -> torch.Tensor:
    """Cholesky(A A^T + b I): the loading of Eq. 3, differentiable in A."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return torch.linalg.cholesky(A @ A.T + b * eye)


def mobius(z: torch.Tensor) -> torch.Tensor:
    """The Mobius transform of the data set "Mobius", on (..., 2) real pairs (real, imaginary)."""
    a, b, c, d = MOBIUS_COEFFICIENTS
    w = torch.complex(z[..., 0].double(), z[..., 1].double())
    m = (a * w + b) / (c * w + d)
    return torch.stack([m.real, m.imag], -1).to(z.dtype)


def synthetic_mean(name: str, z: torch.Tensor) -> torch.Tensor:
    """The ground-truth mean of x given z, f(z), for z of shape (..., 2)."""
    _check_synthetic(name)
    if z.shape[-1] != 2:
        raise ValueError(f"z must have shape (..., 2), got {tuple(z.shape)}")
    if name in ("linear_jte", "cubic_jte"):
        out = z @ jte_loading(torch.tensor(JTE_A, dtype=z.dtype)).T
        return out**3 if name == "cubic_jte" else out
    if name == "gaussian":
        return z @ torch.tensor(GAUSSIAN_A, dtype=z.dtype)
    return mobius(z)


def synthetic(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of Yacoby et al.'s data set ``name``: z ~ N(0, I_2), x = f(z) + noise.

    ``name`` is one of ``linear_jte`` (Eq. 3 with their A and B), ``cubic_jte`` (the same loading,
    cubed element-wise), ``gaussian`` (a linear map into 4 dimensions, noise variance 1e-6) and
    ``mobius`` (the Mobius transform itself; the paper uses a network fitted to it, noise variance
    1e-5). Returns (x, z) as float32 tensors of shapes (n, D) and (n, 2).
    """
    spec = _check_synthetic(name)
    check_count("n", n)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, spec["data_dim"], generator=gen, dtype=torch.float64)
    x = synthetic_mean(name, z) + math.sqrt(spec["noise_var"]) * noise
    return x.float(), z.float()


# --- Real image data: MNIST, Fashion-MNIST, Omniglot ----------------------------------------

#: File names of the MNIST and Fashion-MNIST splits, (images, labels), in ``<root>/mnist/`` and
#: ``<root>/fashion_mnist/`` (the two data sets share the IDX layout and the file names).
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: The Omniglot file in ``<root>/omniglot/``, with all 32,460 images downscaled to 28 x 28 (uint8).
OMNIGLOT_FILE = "omniglot28_gusruss89_images_only.npz"
#: The array of the Omniglot file that each split reads (Lake et al.'s background and evaluation
#: alphabets: 19,280 and 13,180 images).
OMNIGLOT_ARRAYS = {"train": "background_images", "test": "evaluation_images"}
#: Expected SHA-256 of every file the loaders read, by path relative to the data folder (the values
#: of the data folder's MANIFEST.sha256).
SHA256 = {
    "mnist/train-images-idx3-ubyte.gz": (
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971"
    ),
    "mnist/train-labels-idx1-ubyte.gz": (
        "ebef055917794c40877b65e09212d53a0818622e044940edb6d2fa39ee538681"
    ),
    "mnist/t10k-images-idx3-ubyte.gz": (
        "9fe7630f90c0e670227960a294637bc2e78a29d724810e24204eb342c9f033a1"
    ),
    "mnist/t10k-labels-idx1-ubyte.gz": (
        "2c54c993d38068b3c3adb720a5cdee07065a066a7b36e7d1df720548d6359eba"
    ),
    "fashion_mnist/train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
    ),
    "fashion_mnist/train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
    ),
    "fashion_mnist/t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
    ),
    "fashion_mnist/t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
    ),
    "omniglot/" + OMNIGLOT_FILE: (
        "2646d2d270f33e6ffeb2c6962efaf5566ca26cfb9deca183308e25233b06c4bb"
    ),
}
#: Further SHA-256 values accepted for a file, those of the MNIST files as the standard URLs serve
#: them. The shared copies hold the same images but are not byte-identical (re-compressed gzip).
SHA256_ALSO_ACCEPTED = {
    "mnist/train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "mnist/train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "mnist/t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "mnist/t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
#: Base URLs that ``download=True`` tries in turn, by data folder (the original distributions and
#: the PyTorch mirror of MNIST). Omniglot has no standard 28 x 28 npz to fetch.
DOWNLOAD_URLS = {
    "mnist": (
        "https://yann.lecun.com/exdb/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
# SHA-256 of the files hashed so far in this process, keyed by (path, size, modification time).
_HASHES: dict[tuple[str, int, int], str] = {}


def data_root(root=None):
    """The folder holding the real data sets: ``root``, else the ``LIDVAE_DATA`` variable."""
    import os
    from pathlib import Path

    root = root if root is not None else os.environ.get("LIDVAE_DATA")
    if not root:
        raise FileNotFoundError(
            "no data folder: pass root=... or set LIDVAE_DATA to the folder holding mnist/ etc."
        )
    return Path(root)


def sha256(path) -> str:
    """The SHA-256 of the file ``path`` (hex), computed once per process for each path.

    The cache is keyed by the resolved path, the size and the modification time, so a file that
    is replaced (a download, say) is hashed again.
    """
    import hashlib
    from pathlib import Path

    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def verify_file(path, name: str) -> None:
    """Check the file ``path`` against ``SHA256[name]`` (``name``: its path relative to the data
    folder, such as ``mnist/t10k-images-idx3-ubyte.gz``).

    Raises a ValueError naming the file, the expected and the actual hash on a mismatch, and a
    KeyError if ``name`` has no expected hash.
    """
    if name not in SHA256:
        raise KeyError(f"no expected sha256 for {name!r}; known files: {sorted(SHA256)}")
    accepted = (SHA256[name], *SHA256_ALSO_ACCEPTED.get(name, ()))
    actual = sha256(path)
    if actual not in accepted:
        raise ValueError(
            f"sha256 mismatch for {path}: expected {' or '.join(accepted)}, got {actual}; the file"
            " is damaged or a different version (verify=False skips this check)"
        )


def _download(subfolder: str, folder, names) -> None:
    """Fetch the files ``names`` of ``<root>/<subfolder>`` from :data:`DOWNLOAD_URLS` into
    ``folder`` (via a temporary name, so that a failed transfer leaves no partial file)."""
    import os
    import urllib.request

    if subfolder not in DOWNLOAD_URLS:
        raise FileNotFoundError(
            f"{subfolder} cannot be downloaded: no standard URL serves {', '.join(names)}; place "
            f"the file(s) by hand in {folder}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = folder / name
        partial = folder / (name + ".part")
        failures = []
        for base in DOWNLOAD_URLS[subfolder]:
            try:
                urllib.request.urlretrieve(base + name, partial)
            except OSError as error:  # urllib.error.URLError included
                failures.append(f"{base + name}: {error}")
                continue
            os.replace(partial, target)
            break
        else:
            partial.unlink(missing_ok=True)
            raise OSError(f"could not download {name}: " + "; ".join(failures))


def _locate(subfolder: str, names, root, verify: bool, download: bool) -> list:
    """The paths of the files ``names`` in ``<root>/<subfolder>``, downloaded first if asked
    and missing, and checked against :data:`SHA256` if ``verify`` (downloads are always checked;
    one that fails is deleted)."""
    folder = data_root(root) / subfolder
    paths = [folder / name for name in names]
    missing = [path.name for path in paths if not path.is_file()]
    if missing and download:
        _download(subfolder, folder, missing)
        for name in missing:
            try:
                verify_file(folder / name, f"{subfolder}/{name}")
            except ValueError:
                (folder / name).unlink()
                raise
        missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)} in the folder {folder}, which must hold "
            f"{', '.join(names)}: pass root=... or set LIDVAE_DATA to the folder holding "
            f"{subfolder}/ (download=True fetches the files where a standard URL serves them)"
        )
    if verify:
        for path in paths:
            verify_file(path, f"{subfolder}/{path.name}")
    return paths


def _read_idx(path, magic: int) -> np.ndarray:
    """An IDX file (gzip) of unsigned bytes, as an array of the shape its header gives."""
    import gzip

    with gzip.open(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"{path} is not an IDX file of the expected kind: magic {found:#x}, expected {magic:#x}"
        )
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: header says {shape} ({int(np.prod(shape))} bytes), found {body.size} bytes"
        )
    return body.reshape(shape)


def _check_split(split: str, splits) -> None:
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")


def _check_n(n) -> None:
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")


def _to_tensor(images: np.ndarray, binarize: bool) -> torch.Tensor:
    """(N, ...) uint8 images as (N, D) float32 in [0, 1]: pixel / 255, or pixel > 127 as 0/1."""
    x = images.reshape(len(images), -1)
    x = (x > 127).astype(np.float32) if binarize else x.astype(np.float32) / 255.0
    return torch.from_numpy(x)


def _idx_pair(
    subfolder: str, split: str, root, n, binarize: bool, verify: bool, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, labels) of an MNIST-layout split in ``<root>/<subfolder>``."""
    _check_split(split, MNIST_FILES)
    _check_n(n)
    images_file, labels_file = _locate(subfolder, MNIST_FILES[split], root, verify, download)
    images = _read_idx(images_file, 0x803)
    labels = _read_idx(labels_file, 0x801)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images.shape[0]} images but {labels.shape[0]} labels in {images_file.parent}"
        )
    if n is not None:
        images, labels = images[: int(n)], labels[: int(n)]
    return _to_tensor(images, binarize), torch.from_numpy(labels.astype(np.int64))


def mnist(
    split: str = "train",
    root=None,
    n: int | None = None,
    binarize: bool = False,
    verify: bool = True,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the IDX files in ``<root>/mnist/`` (``root``: see :func:`data_root`).

    Returns (x, labels): x (N, 784) float32 in [0, 1] (pixel / 255, or pixel > 127 as 0/1 with
    ``binarize``; :func:`binarize` draws dynamic binarisations instead) and labels (N,) int64.
    ``n`` keeps the first n images (:func:`subsample` draws a random subset). ``verify`` checks
    the files' SHA-256 against :data:`SHA256` (the shared copies) or the standard originals;
    ``download`` fetches missing files from :data:`DOWNLOAD_URLS` (never done unless asked).
    """
    return _idx_pair("mnist", split, root, n, binarize, verify, download)


def fashion_mnist(
    split: str = "train",
    root=None,
    n: int | None = None,
    binarize: bool = False,
    verify: bool = True,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al., 2017) from the IDX files in ``<root>/fashion_mnist/``.

    The files have MNIST's names and layout (60,000 train and 10,000 test images of 28 x 28, ten
    classes of clothing). Returns (x, labels) as :func:`mnist` does: x (N, 784) float32 in [0, 1]
    and labels (N,) int64; ``n``, ``binarize``, ``verify`` and ``download`` as there.
    """
    return _idx_pair("fashion_mnist", split, root, n, binarize, verify, download)


def omniglot(
    split: str = "train",
    root=None,
    n: int | None = None,
    binarize: bool = False,
    verify: bool = True,
    download: bool = False,
) -> tuple[torch.Tensor, None]:
    """Omniglot at 28 x 28 from ``<root>/omniglot/omniglot28_gusruss89_images_only.npz``.

    ``split`` "train" reads the array ``background_images`` (19,280 images of the background
    alphabets), "test" the array ``evaluation_images`` (13,180). Ink is high: x is (N, 784) float32
    in [0, 1] (pixel / 255, or pixel > 127 as 0/1 with ``binarize``). The file has no labels, so
    the second element of the returned pair is None (the pair keeps :func:`mnist`'s convention,
    ``x, _ = omniglot(...)``). ``n`` and ``verify`` as in :func:`mnist`. No standard URL serves
    this file: ``download=True`` raises a FileNotFoundError saying it must be placed by hand.

    This is not the 24,345 / 8,070 split of Burda et al.'s ``chardata.mat`` that the original
    LIDVAE code uses (not available offline).
    """
    _check_split(split, OMNIGLOT_ARRAYS)
    _check_n(n)
    (path,) = _locate("omniglot", (OMNIGLOT_FILE,), root, verify, download)
    with np.load(path) as arrays:
        key = OMNIGLOT_ARRAYS[split]
        if key not in arrays.files:
            raise ValueError(f"{path} has no array {key!r}; it has {arrays.files}")
        images = arrays[key]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: {key} must be (N, 28, 28) uint8, got {images.shape} {images.dtype}"
        )
    if n is not None:
        images = images[: int(n)]
    return _to_tensor(images, binarize), None


# --- Binarisation, splits and subsets ----------------------------------------------------------


def binarize(x, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarisation: independent Bernoulli draws with probabilities ``x``.

    ``x`` (a tensor or array of any shape) must lie in [0, 1]; a ValueError names the range
    otherwise (NaN included). Returns a float tensor of 0s and 1s of the shape of ``x`` (float32
    for integer input), drawn with ``generator`` if one is given. Call it once per epoch for a
    fresh binarisation (as in Burda et al., 2016), rather than thresholding once.
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    outside = ~((x >= 0) & (x <= 1))
    if outside.any():
        bad = x[outside]
        raise ValueError(
            f"x must lie in [0, 1] (probabilities), found {bad.numel()} values outside, e.g. "
            f"{bad[0].item()!r}"
        )
    return torch.bernoulli(x, generator=generator)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def split_indices(
    n: int, n_val: int, n_test: int = 0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed random train / validation / test split of the indices 0, ..., n - 1.

    Returns (train, val, test): int64 tensors of n - n_val - n_test, n_val and n_test indices,
    disjoint and together covering range(n), each sorted; the same ``seed`` gives the same split.
    At least one index must be left for training.
    """
    n = check_count("n", n)
    n_val = check_count("n_val", n_val, minimum=0)
    n_test = check_count("n_test", n_test, minimum=0)
    seed = _check_seed(seed)
    if n_val + n_test >= n:
        raise ValueError(
            f"n_val + n_test must be smaller than n (to leave training data), got "
            f"n_val={n_val}, n_test={n_test}, n={n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return tuple(torch.from_numpy(np.sort(part)).long() for part in (train, val, test))


def subsample(x, labels, n: int, seed: int = 0):
    """A random subset of ``n`` of the rows of ``x`` (and of ``labels``, which may be None), as
    (x[idx], labels[idx]) with idx drawn without replacement by ``seed`` and kept in file order.

    The paper trains on 20,000 images: ``subsample(*mnist("train"), 20_000, seed)``.
    """
    n = check_count("n", n)
    seed = _check_seed(seed)
    total = len(x)
    if labels is not None and len(labels) != total:
        raise ValueError(f"x has {total} rows but labels has {len(labels)}")
    if n > total:
        raise ValueError(f"n must be at most the number of rows, {total}, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))

    def pick(a):
        return a[torch.from_numpy(idx)] if isinstance(a, torch.Tensor) else a[idx]

    return pick(x), (None if labels is None else pick(labels))


# --- Text: vocabulary, corpora, padding, a synthetic corpus ------------------------------------

#: File of each Yahoo split in ``<root>/yahoo/`` (Yang et al., 2017; the training split is not
#: available offline, so ``val`` stands in for the training subsample and ``test`` is the test set).
YAHOO_FILES = {"val": "val.txt", "test": "test.txt"}
SHA256.update(
    {
        "yahoo/val.txt": "3247ac3ffcc4d4bfd6216f2aaa617f6706cdc4081874da39245fe156825898d1",
        "yahoo/test.txt": "ad843c4363adbdd07d8055d9bf121e5f23c285760df43a0031b89d8538293075",
    }
)


class Vocabulary:
    """A word <-> id table with four special tokens first: ``<pad>`` (id 0), ``<s>`` (1), ``</s>``
    (2) and ``<unk>`` (3); the ordinary words follow, most frequent first.

    The Yahoo corpus marks rare words as ``_UNK``: :meth:`encode` maps it, ``<unk>`` and every word
    not in the table to ``<unk>``. The special strings ``<pad>``, ``<s>`` and ``</s>`` found in a
    text are ordinary unknown words there (they become ``<unk>``): the markers are only ever placed
    by :func:`pad_batch`, so a document cannot end a sentence or fake padding by itself.

    ``Vocabulary(words)`` takes the ordinary words in id order (ids 4, 5, ...);
    :meth:`build` counts them in a corpus. Saved as JSON through :meth:`to_dict` /
    :meth:`from_dict` (or :meth:`save` / :meth:`load`).
    """

    PAD, BOS, EOS, UNK = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
    #: The corpus's own marker of a rare word (Yahoo, Yelp as prepared by Yang et al.).
    CORPUS_UNK = "_UNK"

    def __init__(self, words):
        words = list(words)
        reserved = set(self.SPECIALS) | {self.CORPUS_UNK}
        for word in words:
            if not isinstance(word, str) or not word or any(c.isspace() for c in word):
                raise ValueError(
                    f"every word must be a non-empty string without spaces, got {word!r}"
                )
            if word in reserved:
                raise ValueError(
                    f"{word!r} is reserved (special tokens: {self.SPECIALS + (self.CORPUS_UNK,)})"
                )
        if len(set(words)) != len(words):
            seen, dup = set(), None
            for word in words:
                if word in seen:
                    dup = word
                    break
                seen.add(word)
            raise ValueError(f"words must be distinct, got {dup!r} twice")
        self._itos = list(self.SPECIALS) + words
        self._stoi = {word: i for i, word in enumerate(words, start=len(self.SPECIALS))}
        self._stoi["<unk>"] = self._stoi[self.CORPUS_UNK] = self.UNK

    @classmethod
    def build(cls, documents, max_size: int | None = None, min_count: int = 1) -> Vocabulary:
        """The vocabulary of ``documents`` (an iterable of token lists).

        Words are ordered by decreasing count, ties alphabetically (so the table does not depend
        on the order of the documents). Words seen fewer than ``min_count`` times are left out, and
        only the most frequent are kept so that ``len(vocab) <= max_size`` (``max_size`` counts
        the four special tokens). ``_UNK`` and the special strings are never words.
        """
        from collections import Counter

        min_count = check_count("min_count", min_count)
        if max_size is not None:
            n_special = len(cls.SPECIALS)
            integer = isinstance(max_size, numbers.Integral) and not isinstance(max_size, bool)
            if not (integer and max_size >= n_special):
                raise ValueError(
                    f"max_size must be an integer >= {n_special} (it counts the special tokens), "
                    f"got {max_size!r}"
                )
        reserved = set(cls.SPECIALS) | {cls.CORPUS_UNK}
        counts: Counter = Counter()
        for i, doc in enumerate(documents):
            if isinstance(doc, str):
                raise ValueError(
                    f"documents must be lists of tokens, document {i} is a str: split it first"
                )
            counts.update(doc)
        words = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in reserved),
            key=lambda w: (-counts[w], w),
        )
        if max_size is not None:
            words = words[: max_size - len(cls.SPECIALS)]
        return cls(words)

    @classmethod
    def numbered(cls, n_words: int) -> Vocabulary:
        """The vocabulary ``w0, w1, ..., w{n_words - 1}`` (ids 4, 5, ...): the words of
        :func:`synthetic_text`, whose token ids index it."""
        return cls(f"w{i}" for i in range(check_count("n_words", n_words)))

    def __len__(self) -> int:
        return len(self._itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self._itos == other._itos

    def __repr__(self) -> str:
        n_words = len(self.words)
        return f"Vocabulary({len(self)} tokens: {len(self.SPECIALS)} special + {n_words} words)"

    @property
    def words(self) -> list[str]:
        """The ordinary words, in id order (ids 4, 5, ...)."""
        return self._itos[len(self.SPECIALS) :]

    def encode(self, tokens) -> list[int]:
        """Token strings -> ids; ``_UNK``, ``<unk>`` and unknown words -> ``<unk>`` (3).

        No ``<s>`` / ``</s>`` are added (:func:`pad_batch` adds them)."""
        if isinstance(tokens, str):
            raise ValueError(
                f"tokens must be a list of strings, got the str {tokens[:40]!r}: split it first"
            )
        return [self._stoi.get(token, self.UNK) for token in tokens]

    def decode(self, ids, skip_special: bool = True) -> list[str]:
        """Ids (a list or a 1-d tensor) -> token strings. With ``skip_special`` (default) the
        ``<pad>``, ``<s>`` and ``</s>`` markers are dropped (``<unk>`` is kept)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-d, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or int(i) != i or not 0 <= i < len(self):
                raise ValueError(f"ids must be integers in [0, {len(self)}), got {i!r}")
            if skip_special and int(i) in (self.PAD, self.BOS, self.EOS):
                continue
            out.append(self._itos[int(i)])
        return out

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``{"specials": [...], "words": [...]}``."""
        return {"specials": list(self.SPECIALS), "words": self.words}

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        """The vocabulary saved by :meth:`to_dict`; its special tokens must be this class's."""
        if not isinstance(d, dict) or "words" not in d:
            raise ValueError(f"expected a dict with a 'words' list, got {type(d).__name__}")
        specials = tuple(d.get("specials", cls.SPECIALS))
        if specials != cls.SPECIALS:
            raise ValueError(f"special tokens must be {cls.SPECIALS}, got {specials}")
        return cls(d["words"])

    def save(self, path) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON (UTF-8)."""
        import json
        from pathlib import Path

        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path) -> Vocabulary:
        """The vocabulary written by :meth:`save`."""
        import json
        from pathlib import Path

        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def read_corpus(path, max_len: int | None = None, max_docs: int | None = None) -> list[list[str]]:
    """The documents of a text file, one per line, split on whitespace.

    Blank lines are skipped. Documents with more than ``max_len`` tokens are **dropped** (not
    truncated), so ``max_len`` changes which documents are kept, not their content; ``max_docs``
    stops after that many kept documents (file order). Returns a list of token lists.
    """
    if max_len is not None:
        max_len = check_count("max_len", max_len)
    if max_docs is not None:
        max_docs = check_count("max_docs", max_docs)
    docs: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if max_docs is not None and len(docs) >= max_docs:
                break
            tokens = line.split()
            if not tokens or (max_len is not None and len(tokens) > max_len):
                continue
            docs.append(tokens)
    return docs


def yahoo(
    split: str = "val",
    root=None,
    max_len: int | None = None,
    max_docs: int | None = None,
    verify: bool = True,
) -> list[list[str]]:
    """Yahoo Answers as prepared by Yang et al. (2017), from ``<root>/yahoo/{val,test}.txt``.

    ``split`` is "val" (10,000 documents; the stand-in for the training subsample, since the
    training split is not available offline) or "test" (10,000). ``root``: see :func:`data_root`.
    Tokens are whitespace-separated, rare words are ``_UNK`` (mapped to ``<unk>`` by
    :class:`Vocabulary`). ``max_len`` and ``max_docs`` as in :func:`read_corpus` (documents longer
    than ``max_len`` tokens are dropped; Yahoo documents have 20 to 200 tokens). ``verify`` checks
    the file's SHA-256 against :data:`SHA256`. Returns a list of token lists.
    """
    _check_split(split, YAHOO_FILES)
    folder = data_root(root) / "yahoo"
    path = folder / YAHOO_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {path.name} in the folder {folder}, which must hold "
            f"{', '.join(YAHOO_FILES.values())}: pass root=... or set LIDVAE_DATA to the folder "
            "holding yahoo/ (the files cannot be downloaded; place them by hand)"
        )
    if verify:
        verify_file(path, f"yahoo/{path.name}")
    return read_corpus(path, max_len=max_len, max_docs=max_docs)


def pad_batch(sequences, vocab: Vocabulary, length: int | None = None) -> torch.Tensor:
    """Token sequences as one LongTensor (N, T + 2): ``<s> ids... </s>`` then ``<pad>`` (0).

    Each sequence is a list of token strings (encoded with ``vocab``) or of ids of ordinary words
    or ``<unk>`` (ints in [3, len(vocab))). T is the longest sequence, or ``length`` if given
    (a longer sequence is then an error). The rows keep the input order (no sorting by length);
    the models find each row's length from its padding and mask the padding out.
    """
    sequences = list(sequences)
    if not sequences:
        raise ValueError("sequences must not be empty")
    rows = []
    for i, seq in enumerate(sequences):
        if isinstance(seq, str):
            raise ValueError(f"sequence {i} is a str: pass lists of tokens (split the text first)")
        if isinstance(seq, torch.Tensor):
            seq = seq.tolist()
        seq = list(seq)
        if seq and all(isinstance(t, str) for t in seq):
            ids = vocab.encode(seq)
        else:
            ids = []
            for t in seq:
                integer = isinstance(t, numbers.Integral) and not isinstance(t, bool)
                if not (integer and Vocabulary.UNK <= t < len(vocab)):
                    raise ValueError(
                        f"sequence {i}: ids must be ints in [{Vocabulary.UNK}, {len(vocab)}) "
                        f"(words or <unk>; the markers are added here), got {t!r}"
                    )
                ids.append(int(t))
        rows.append(ids)
    longest = max(len(r) for r in rows)
    if length is None:
        length = longest
    else:
        length = check_count("length", length, minimum=0)
        if longest > length:
            worst = max(range(len(rows)), key=lambda i: len(rows[i]))
            raise ValueError(f"sequence {worst} has {longest} tokens, more than length={length}")
    out = torch.full((len(rows), length + 2), Vocabulary.PAD, dtype=torch.long)
    out[:, 0] = Vocabulary.BOS
    for i, ids in enumerate(rows):
        out[i, 1 : len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        out[i, len(ids) + 1] = Vocabulary.EOS
    return out


def synthetic_text(
    n: int,
    seed: int = 0,
    vocab_size: int = 1000,
    latent_dim: int = 5,
    min_len: int = 10,
    max_len: int = 30,
    embed_dim: int = 64,
    hidden: int = 128,
    lstm_scale: float = 3.0,
    z_scale: float = 6.0,
    out_scale: float = 15.0,
    eos_bias: float = 6.0,
):
    """A text corpus drawn from a known sequential VAE (the paper's synthetic text experiment).

    The true model is a :class:`lidvae_nb.models.SequentialVAE` with a two-layer LSTM decoder
    (``hidden`` units, ``embed_dim``-dimensional N(0, 1) word embeddings), a
    ``latent_dim``-dimensional standard-normal latent and ``vocab_size`` ordinary words (ids
    4, ..., ``vocab_size + 3``, named by :meth:`Vocabulary.numbered`; ``<unk>`` gets a logit
    bias of -20, so it practically never occurs). Its weights are drawn with ``seed`` from
    uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), then scaled so that the data are text-like and the
    latent matters: the decoder LSTM's weights by ``lstm_scale``, the weights from z (to the
    initial state and to the per-step input) by ``z_scale``, the output layer by ``out_scale``
    (peaked next-word distributions), and ``eos_bias`` is added to the logit of ``</s>``. The
    defaults give about 4.3 nats per token given z, sentences of 21 words on average with about
    a third stopped at ``max_len``, and a log-likelihood of a sentence under its own z about 100
    nats above that under another sentence's z (seed 0, 2,000 sentences).

    Sentences have ``min_len`` to ``max_len`` words: the model's length limits
    (:meth:`~lidvae_nb.models.SequentialVAE.set_length_limits`) forbid ``</s>`` before
    ``min_len`` words and force it after ``max_len``, and its ``log_likelihood`` includes them,
    so the corpus is an exact sample of the returned model.

    Returns ``(x, z, model)``: x the padded token ids (n, T + 2) as from :func:`pad_batch`
    (T the longest sentence drawn), z the latents (n, latent_dim) and the true model (in eval
    mode; its encoder is untrained, so estimate the true log-likelihood with prior samples or
    after fitting an encoder to the frozen decoder). The same arguments give the same corpus;
    the global random state is neither used nor changed.
    """
    from lidvae_nb.models import ModelConfig, SequentialVAE

    n = check_count("n", n)
    seed = _check_seed(seed)
    vocab_size = check_count("vocab_size", vocab_size)
    latent_dim = check_count("latent_dim", latent_dim)
    min_len = check_count("min_len", min_len)
    max_len = check_count("max_len", max_len)
    if min_len > max_len:
        raise ValueError(f"min_len must be <= max_len, got min_len={min_len}, max_len={max_len}")
    for name, value in (
        ("lstm_scale", lstm_scale),
        ("z_scale", z_scale),
        ("out_scale", out_scale),
    ):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    if not (isinstance(eos_bias, numbers.Real) and math.isfinite(eos_bias)):
        raise ValueError(f"eos_bias must be a finite number, got {eos_bias!r}")
    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(
        data_dim=vocab_size + len(Vocabulary.SPECIALS),
        latent_dim=latent_dim,
        hidden=hidden,
        embed_dim=embed_dim,
        lstm_hidden=hidden,
        lstm_layers=2,
    )
    # Built under a fixed seed and then overwritten from ``gen``: the global state is restored.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SequentialVAE(cfg)
    dec = model.decoder
    free = model._free_ids.tolist()  # the decoder's outputs are the logits of these ids
    with torch.no_grad():
        for p in model.parameters():
            bound = 1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.1
            p.uniform_(-bound, bound, generator=gen)
        dec.embed.weight.normal_(generator=gen)
        for p in dec.lstm.parameters():
            if p.dim() > 1:
                p.mul_(lstm_scale)
        dec.init_state.weight.mul_(z_scale)
        dec.lstm.weight_ih_l0[:, embed_dim:].mul_(z_scale)
        dec.out.weight.mul_(out_scale)
        dec.out.bias[free.index(Vocabulary.EOS)] += eos_bias
        dec.out.bias[free.index(Vocabulary.UNK)] = -20.0
    model.set_length_limits(min_len, max_len)
    model.eval()
    z = torch.randn(n, latent_dim, generator=gen)
    # Drawn in chunks (bounded memory), then trimmed to the longest sentence.
    x = torch.cat([model.sample(part, generator=gen) for part in z.split(4096)])
    longest = int((x != Vocabulary.PAD).sum(1).max())
    return x[:, :longest], z, model
