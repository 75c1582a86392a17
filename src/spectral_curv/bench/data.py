"""Offline data for the training benchmark: Fashion-MNIST (Debian) and scikit-learn's digits.

Nothing is downloaded. Two sources:

``fashion-mnist``
    The full 60k/10k Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
    (``apt install dataset-fashion-mnist``: the four ``*-idx?-ubyte.gz`` files under
    ``/usr/share/datasets/fashion-mnist/``; another directory can be given with ``root`` or
    the ``SPECTRAL_CURV_FASHION_MNIST`` environment variable). The IDX files are parsed
    with numpy; the SHA-256 of every file, the shapes (60000×28×28, 10000×28×28) and the
    label range (0–9) are checked, and a missing or altered file raises an error that says
    what to install.
``digits``
    scikit-learn's bundled ``load_digits`` (1797 8×8 images, 10 classes): the tiny,
    always-available fallback. Its fixed test split is the last 20 % of a seed-0
    permutation.

Images come back as float32 ``(N, 1, H, W)`` standardised with the *training* set's mean
and standard deviation; labels as int64. :func:`train_val_split` carves a deterministic
validation split out of the training set (the tuner chooses hyperparameters on it; the
test set is only reported). numpy only: no framework is imported here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "APT_PACKAGE",
    "DEFAULT_FASHION_ROOT",
    "FASHION_FILES",
    "ChecksumError",
    "Dataset",
    "DatasetMissingError",
    "fashion_mnist_available",
    "load_dataset",
    "load_digits_data",
    "load_fashion_mnist",
    "read_idx",
    "standardize",
    "train_val_split",
]

APT_PACKAGE = "dataset-fashion-mnist"
DEFAULT_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_ROOT = "SPECTRAL_CURV_FASHION_MNIST"

#: SHA-256 of the four files of the Debian package (computed once from the installed files;
#: they are the files of the original Zalando release).
FASHION_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetMissingError(FileNotFoundError):
    """A data file is not there (the message says what to install)."""


class ChecksumError(ValueError):
    """A data file is there but is not the expected one (SHA-256, shape or labels)."""


@dataclass
class Dataset:
    """Images ``(N, 1, H, W)`` float32 (standardised with the training statistics) and
    int64 labels; ``source`` says where they came from."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (shapes, source, notes)."""
        return {
            "name": self.name,
            "source": self.source,
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "image_shape": list(self.image_shape),
            "n_classes": self.n_classes,
            "notes": list(self.notes),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (gzip-compressed when the name ends in ``.gz``) into an array."""
    p = Path(path)
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ChecksumError(f"{p}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    n = int(np.prod(dims)) if dims else 1
    if len(raw) != header + n * dtype.itemsize:
        raise ChecksumError(
            f"{p}: IDX header says {dims} but the file holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _fashion_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_FASHION_ROOT)


def fashion_mnist_available(root: str | os.PathLike[str] | None = None) -> bool:
    """True when the four files are present (their content is not checked here)."""
    r = _fashion_root(root)
    return all((r / name).is_file() for name in FASHION_FILES)


def standardize(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """float32 ``(x − mean)/std`` with the mean and std of ``x_train`` (one scalar each)."""
    xt = x_train.astype(np.float32)
    mean, std = float(xt.mean()), float(xt.std())
    std = std if std > 0 else 1.0
    return tuple(((x.astype(np.float32) - mean) / std).astype(np.float32) for x in (xt, *others))


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> Dataset:
    """Fashion-MNIST, 60000 train + 10000 test 28×28 images, from the Debian package.

    ``root`` defaults to ``$SPECTRAL_CURV_FASHION_MNIST`` or
    ``/usr/share/datasets/fashion-mnist``. ``verify`` checks each file's SHA-256 against
    :data:`FASHION_FILES` (shapes and label range are always checked).

    Raises:
        DatasetMissingError: a file is missing (the message names the apt package).
        ChecksumError: a file differs from the packaged one, or has the wrong shape/labels.
    """
    r = _fashion_root(root)
    missing = [name for name in FASHION_FILES if not (r / name).is_file()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST not found in {r} (missing: {', '.join(missing)}). Install the "
            f"Debian package: `sudo apt install {APT_PACKAGE}` (files under "
            f"{DEFAULT_FASHION_ROOT}), or point root= / ${ENV_ROOT} at a directory holding "
            "the four *-ubyte.gz files; `spectral-curv demo` falls back to scikit-learn's "
            "digits without it."
        )
    if verify:
        for name, want in FASHION_FILES.items():
            got = _sha256(r / name)
            if got != want:
                raise ChecksumError(
                    f"{r / name}: SHA-256 {got} does not match the packaged file's {want} "
                    f"(corrupt or a different release; reinstall with `sudo apt install "
                    f"--reinstall {APT_PACKAGE}`)"
                )
    arrays = {name: read_idx(r / name) for name in FASHION_FILES}
    xtr, ytr = arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]
    xte, yte = arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]
    for what, arr, shape in (
        ("train images", xtr, (60000, 28, 28)),
        ("train labels", ytr, (60000,)),
        ("test images", xte, (10000, 28, 28)),
        ("test labels", yte, (10000,)),
    ):
        if arr.shape != shape:
            raise ChecksumError(f"Fashion-MNIST {what}: shape {arr.shape}, expected {shape}")
    for what, y in (("train", ytr), ("test", yte)):
        if y.min() < 0 or y.max() > 9:
            raise ChecksumError(f"Fashion-MNIST {what} labels outside 0..9")
    xtr, xte = standardize(xtr[:, None] / np.float32(255), xte[:, None] / np.float32(255))
    return Dataset(
        "fashion-mnist",
        xtr,
        ytr.astype(np.int64),
        xte,
        yte.astype(np.int64),
        10,
        source=f"{r} (Debian package {APT_PACKAGE}, SHA-256 "
        f"{'verified' if verify else 'not checked'})",
    )


def load_digits_data(test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled digits (1797 8×8 images, 0–16 grey levels), split by a
    seed-0 permutation: the last ``test_fraction`` of it is the test set."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DatasetMissingError(
            "scikit-learn is needed for the digits dataset (it ships the data): "
            "pip install scikit-learn"
        ) from e
    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / np.float32(16)
    y = d.target.astype(np.int64)
    if x.shape[1:] != (1, 8, 8) or len(x) != len(y):
        raise ChecksumError(f"sklearn digits: unexpected shape {x.shape}")
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = round(test_fraction * len(y))
    tr, te = perm[:-n_test], perm[-n_test:]
    xtr, xte = standardize(x[tr], x[te])
    return Dataset(
        "digits",
        xtr,
        y[tr],
        xte,
        y[te],
        10,
        source="scikit-learn load_digits (bundled with scikit-learn)",
    )


def load_dataset(name: str = "auto", root: str | os.PathLike[str] | None = None) -> Dataset:
    """``"fashion-mnist"``, ``"digits"`` or ``"auto"`` (Fashion-MNIST when installed, else
    digits, with a note saying so in ``Dataset.notes``)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name == "digits":
        return load_digits_data()
    if name != "auto":
        raise ValueError(f"unknown dataset {name!r} (fashion-mnist, digits, auto)")
    if fashion_mnist_available(root):
        return load_fashion_mnist(root)
    ds = load_digits_data()
    ds.notes.append(
        f"Fashion-MNIST is not installed ({_fashion_root(root)}; `sudo apt install "
        f"{APT_PACKAGE}`): using scikit-learn's digits instead"
    )
    return ds


def train_val_split(n: int, val_size: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, validation) index arrays over ``range(n)``.

    ``val_size``: a count, or a fraction in (0, 1). Same ``(n, val_size, seed)``, same split.
    """
    k = round(val_size * n) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < k < n:
        raise ValueError(f"validation size {val_size!r} must leave both parts non-empty (n={n})")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])
