"""IDX files (the format of MNIST and Fashion-MNIST): reading, checking and caching them.

:func:`read_idx_images` and :func:`read_idx_labels` read one IDX file, gzip-compressed or plain,
and check its header against its payload, so that a truncated or wrong file is a one-line
:class:`~privet.task.containers.DataError` naming the file rather than a reshape error later.
:func:`load_mnist_like` loads a folder holding the four canonical (Fashion-)MNIST files
(:data:`IDX_FILES`) as a :class:`~privet.task.containers.TrainTest`, with the files' own
60k/10k split. Parsed files are cached in-process, keyed by path, modification time and size
(many virtual clients in one process load the same files), and are therefore read-only.
"""

import functools
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from privet.task.containers import ArrayDataset, DataError, TrainTest, read_only
from privet.task.local_files import file_key

__all__ = [
    "IDX_FILES",
    "MNIST_CLASSES",
    "MNIST_SHAPE",
    "load_mnist_like",
    "read_idx_images",
    "read_idx_labels",
]

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
"""The four canonical (Fashion-)MNIST files that ``data_dir`` must hold."""

_IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IMAGE_SIDE = 28

MNIST_SHAPE: tuple[int, ...] = (1, _IMAGE_SIDE, _IMAGE_SIDE)
"""Shape of one (Fashion-)MNIST example's features: one channel of 28x28 pixels."""

MNIST_CLASSES = 10
"""Number of (Fashion-)MNIST classes: labels lie in 0..9."""

_CANONICAL_IDX_FIX = "re-download the canonical IDX .gz files"
_GZIP_MAGIC = b"\x1f\x8b"


def _idx_corrupt(title: str, path: Path, problem: str, fix: str = _CANONICAL_IDX_FIX) -> DataError:
    """Build the error for an unreadable IDX file; ``fix`` says what the user should do."""
    return DataError(f"{title} file {path} is corrupt ({problem}); {fix}")


def _read_idx(
    path: Path, title: str, magic: int, fix: str = _CANONICAL_IDX_FIX
) -> tuple[tuple[int, ...], bytes]:
    """Read an IDX file (gzip-compressed or plain) and return (dims, payload) after checks.

    Compression is recognised by the gzip magic bytes rather than the file name, so a plain
    ``*-ubyte`` file and a ``*-ubyte.gz`` file both load. Every problem is a :class:`DataError`
    naming ``path``; ``fix`` is the advice appended to it.
    """
    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
        if compressed:
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{title} file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    if len(raw) < 4:
        raise _idx_corrupt(title, path, f"only {len(raw)} bytes after decompression", fix)
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _idx_corrupt(
            title, path, f"bad magic number 0x{found:08x}, expected 0x{magic:08x}", fix
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise _idx_corrupt(title, path, "header cut short", fix)
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    payload = raw[header_size:]
    expected = math.prod(dims)
    if len(payload) != expected:
        raise _idx_corrupt(
            title,
            path,
            f"{len(payload)} data bytes but the header dimensions {dims} need {expected}",
            fix,
        )
    return dims, payload


def read_idx_images(path: str | Path, *, title: str = "IDX images", fix: str) -> np.ndarray:
    """Read one IDX image file (any n x height x width) as float32 (n, 1, height, width) in [0, 1].

    Pixels are scaled exactly as the MNIST loader scales them (divided by 255), so examples read
    here are interchangeable with :func:`load_dataset`'s. ``fix`` is the advice errors end with.
    """
    file = Path(path).expanduser()
    dims, payload = _read_idx(file, title, _IMAGE_MAGIC, fix)
    images = np.frombuffer(payload, dtype=np.uint8).astype(np.float32)
    images /= np.float32(255.0)
    return images.reshape(dims[0], 1, dims[1], dims[2])


def read_idx_labels(path: str | Path, *, title: str = "IDX labels", fix: str) -> np.ndarray:
    """Read one IDX label file as int64 (n,); the caller checks the range against its classes."""
    file = Path(path).expanduser()
    _, payload = _read_idx(file, title, _LABEL_MAGIC, fix)
    return np.frombuffer(payload, dtype=np.uint8).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _load_idx_images(path: Path, mtime_ns: int, size: int, title: str) -> np.ndarray:
    """Parse an IDX image file into read-only float32 (n, 1, 28, 28) in [0, 1].

    ``mtime_ns`` and ``size`` are part of the cache key only, so that a replaced file is re-read.
    """
    del mtime_ns, size
    dims, payload = _read_idx(path, title, _IMAGE_MAGIC)
    if dims[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise _idx_corrupt(
            title, path, f"images are {dims[1]}x{dims[2]}, expected {_IMAGE_SIDE}x{_IMAGE_SIDE}"
        )
    images = np.frombuffer(payload, dtype=np.uint8).astype(np.float32)
    images /= np.float32(255.0)
    return read_only(images.reshape(dims[0], 1, _IMAGE_SIDE, _IMAGE_SIDE))


@functools.lru_cache(maxsize=8)
def _load_idx_labels(path: Path, mtime_ns: int, size: int, title: str) -> np.ndarray:
    """Parse an IDX label file into read-only int64 labels in 0..9.

    ``mtime_ns`` and ``size`` are part of the cache key only, so that a replaced file is re-read.
    """
    del mtime_ns, size
    _, payload = _read_idx(path, title, _LABEL_MAGIC)
    labels = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
    if labels.size and int(labels.max()) >= MNIST_CLASSES:
        raise _idx_corrupt(title, path, f"label {int(labels.max())} outside 0..{MNIST_CLASSES - 1}")
    return read_only(labels)


def load_mnist_like(name: str, data_dir: str | None) -> TrainTest:
    """Load MNIST or Fashion-MNIST from the four canonical IDX .gz files in ``data_dir``."""
    title = "MNIST" if name == "mnist" else "Fashion-MNIST"
    wanted = ", ".join(IDX_FILES)
    if data_dir is None:
        raise DataError(
            f"dataset '{name}' needs its files: pass --data-dir pointing at a folder with "
            f"the four canonical files ({wanted})"
        )
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"{title} data folder {folder} {problem}; pass --data-dir pointing at a "
            f"folder with the four canonical files ({wanted})"
        )
    missing = [str(folder / f) for f in IDX_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{title} file(s) missing: {', '.join(missing)}; pass --data-dir pointing at a "
            f"folder with the four canonical files ({wanted})"
        )
    train_x_path, train_y_path, test_x_path, test_y_path = (folder / f for f in IDX_FILES)
    train_x = _load_idx_images(*file_key(train_x_path), title)
    train_y = _load_idx_labels(*file_key(train_y_path), title)
    test_x = _load_idx_images(*file_key(test_x_path), title)
    test_y = _load_idx_labels(*file_key(test_y_path), title)
    for images, labels, x_path, y_path in (
        (train_x, train_y, train_x_path, train_y_path),
        (test_x, test_y, test_x_path, test_y_path),
    ):
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{title} files disagree: {x_path} has {images.shape[0]} images but {y_path} "
                f"has {labels.shape[0]} labels; re-download the canonical IDX .gz files"
            )
    return TrainTest(
        train=ArrayDataset(train_x, train_y, MNIST_CLASSES),
        test=ArrayDataset(test_x, test_y, MNIST_CLASSES),
        kind="image",
    )
