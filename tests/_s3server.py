"""A real S3-compatible server (moto's server mode) on 127.0.0.1, for input and output tests.

It runs as a subprocess the test owns: `stop()` and `start()` again on the same port (state is
lost on restart, so tests re-upload after a restart) simulate an endpoint that goes away
mid-run. Clients reach it through `uri(key)` (endpoint in the URI) or `env` (AWS_* variables).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "lensray-test"
# Fake credentials: moto accepts any; real ones on the machine must never be used or leaked.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`with S3Server() as s3:` starts moto on a free loopback port with one empty bucket."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> S3Server:
        env = {**os.environ, **CREDENTIALS}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on port {self.port}") from None
                time.sleep(0.2)
        self.filesystem().create_dir(BUCKET)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def filesystem(self):
        """A pyarrow S3 filesystem on this server (no retries, so a dead server fails fast)."""
        from pyarrow.fs import S3FileSystem

        return S3FileSystem(access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region=CREDENTIALS["AWS_DEFAULT_REGION"],
                            endpoint_override=self.endpoint, scheme="http",
                            connect_timeout=2, request_timeout=5, allow_bucket_creation=True)

    def uri(self, key: str = "") -> str:
        """s3://BUCKET/key with this server as the endpoint in the URI's query."""
        return (f"s3://{BUCKET}/{key.lstrip('/')}?endpoint_override=127.0.0.1:{self.port}"
                "&scheme=http")

    def upload(self, local: str | os.PathLike, key: str) -> str:
        """Copy a local file or directory tree under `key`; returns the bucket path."""
        fs, local = self.filesystem(), Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for path in files:
            rel = path.name if local.is_file() else path.relative_to(local).as_posix()
            with fs.open_output_stream(f"{BUCKET}/{key.rstrip('/')}/{rel}") as out:
                out.write(path.read_bytes())
        return f"{BUCKET}/{key}"

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
