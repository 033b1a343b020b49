"""`geomlab data download`: the deadline covers the whole request (headers included), and no
temporary file outlives a download, whether it fails, is stopped by SIGTERM or killed -9.

Real processes against HTTP servers on 127.0.0.1; no timing assertions (a hang fails through
the subprocess timeout)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from geomlab import io
from geomlab.data.mnist import MNISTDataError, download_mnist

SRC = Path(__file__).resolve().parents[2] / "src"
NAME = "t10k-labels-idx1-ubyte.gz"
HANG_GUARD_S = 120


class SlowHeaders(http.server.BaseHTTPRequestHandler):
    """A mirror that sends its status line, then one header byte at a time, forever."""

    stop = threading.Event()

    def do_GET(self):  # noqa: N802 - http.server's naming
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self.wfile.flush()
            while not self.stop.is_set():
                self.wfile.write(b"a")
                self.wfile.flush()
                self.stop.wait(0.05)
        except OSError:  # the client gave up
            return

    def log_message(self, *args):
        pass


class Drip(http.server.BaseHTTPRequestHandler):
    """Headers at once, then one body byte at a time, forever."""

    stop = threading.Event()

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(10**7))
        self.end_headers()
        try:
            while not self.stop.is_set():
                self.wfile.write(b"\x1f")
                self.wfile.flush()
                self.stop.wait(0.02)
        except OSError:
            return

    def log_message(self, *args):
        pass


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[str, http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


def _serving(handler):
    """A local server answering with ``handler`` (a class with a ``stop`` event) until the
    test is done; its URL."""
    handler.stop.clear()
    url, server = _serve(handler)
    try:
        yield url
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def slow_headers():
    yield from _serving(SlowHeaders)


@pytest.fixture
def dripping():
    yield from _serving(Drip)


@pytest.fixture
def good_mirror(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    payload = b"\x1f\x8b" + os.urandom(256)
    (folder / NAME).write_bytes(payload)
    url, server = _serve(functools.partial(Quiet, directory=str(folder)))
    yield url, {NAME: hashlib.md5(payload).hexdigest()}
    server.shutdown()
    server.server_close()


def _cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-m", "geomlab.cli", "data", "download", "mnist", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if io.is_temporary(p)] if folder.exists() else []


def test_the_deadline_holds_while_headers_drip(tmp_path, slow_headers):
    dest = tmp_path / "d"
    proc = _cli(["--data-dir", str(dest), "--mirror", slow_headers, "--deadline", "1"])
    output, _ = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 3, output
    assert "deadline of 1 s" in output
    assert list((dest / "mnist").iterdir()) == []  # no 0-byte temporary left


def test_the_deadline_holds_in_the_api_too(tmp_path, slow_headers):
    with pytest.raises(MNISTDataError, match="deadline of 0.5 s"):
        download_mnist(tmp_path / "d", mirrors=[slow_headers], checksums={NAME: "0" * 32},
                       timeout=30, deadline=0.5)  # fmt: skip
    assert list((tmp_path / "d" / "mnist").iterdir()) == []


def _wait_for_temporary(folder: Path, proc: subprocess.Popen) -> None:
    limit = time.monotonic() + HANG_GUARD_S
    while not _temporaries(folder):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < limit, "no temporary file appeared"
        time.sleep(0.05)


def test_sigterm_mid_download_leaves_no_temporary(tmp_path, dripping):
    dest = tmp_path / "d"
    proc = _cli(["--data-dir", str(dest), "--mirror", dripping, "--deadline", "600"])
    _wait_for_temporary(dest / "mnist", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 3, output
    assert "SIGTERM" in output
    assert _temporaries(dest / "mnist") == []


def test_a_killed_downloads_temporary_is_removed_by_the_next(tmp_path, dripping, good_mirror):
    dest = tmp_path / "d"
    proc = _cli(["--data-dir", str(dest), "--mirror", dripping, "--deadline", "600"])
    _wait_for_temporary(dest / "mnist", proc)
    proc.kill()
    proc.communicate(timeout=HANG_GUARD_S)
    left = _temporaries(dest / "mnist")
    assert len(left) == 1  # kill -9: nothing could clean up
    url, checksums = good_mirror
    lines: list[str] = []
    paths = download_mnist(dest, mirrors=[url], checksums=checksums, timeout=10, log=lines.append)
    assert [p.name for p in paths] == [NAME]
    assert _temporaries(dest / "mnist") == [] and not left[0].exists()
    assert any("partial file" in line for line in lines)
