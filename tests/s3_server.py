"""A real S3 API on 127.0.0.1 for the object-storage tests: moto's server in a subprocess, behind faults.

Run as a script (`python tests/s3_server.py PORT ACCESS_KEY`) it serves moto's S3 over HTTP, with a
middleware that does what real object stores do to a client now and then: refuse a key it does not
know (403 InvalidAccessKeyId, as S3 answers), fail one request with a 500, or hold a request (so a
test can kill the server while an upload is on the wire). Tests arm a fault with a POST to
`/_fault` and read how many were served from a GET there. `S3Server` starts, kills and restarts
the process; a restarted server starts empty, as moto keeps its objects in memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ACCESS_KEY, SECRET_KEY, REGION = "crucible-test-key", "crucible-test-secret-do-not-print", "us-east-1"
FAULT_PATH = "/_fault"


class FaultMiddleware:
    """WSGI wrapper of moto's app: credential check by access key id, and armed faults by method and path."""

    def __init__(self, app: Any, access_key: str) -> None:
        self.app, self.access_key = app, access_key
        self.faults: list[dict[str, Any]] = []
        self.served = 0
        self.reads: list[tuple[str, str | None]] = []  # (path, Range header) of every GET of an object
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path == FAULT_PATH:
            return self._control(environ, start_response)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if "Credential=" in auth and f"Credential={self.access_key}/" not in auth:
            return _error(
                start_response,
                method,
                "403 Forbidden",
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            )
        if method == "GET" and "." in path.rsplit("/", 1)[-1]:
            with self.lock:
                self.reads.append((path, environ.get("HTTP_RANGE")))
        fault = self._take(method, path)
        if fault is not None:
            time.sleep(fault.get("delay", 0))
            if fault.get("status"):
                return _error(start_response, method, f"{fault['status']} Injected", "InternalError", "injected fault")
        return self.app(environ, start_response)

    def _take(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.faults:
                if fault["method"] == method and fault["path"] in path and fault["count"] > 0:
                    fault["count"] -= 1
                    self.served += 1
                    return fault
        return None

    def _control(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            with self.lock:
                self.faults.append(json.loads(body))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"served": self.served, "reads": self.reads}).encode()]


def _error(start_response: Any, method: str, status: str, code: str, message: str) -> list[bytes]:
    """An S3 error response; the answer to a HEAD has no body, as S3's."""
    body = (
        (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>test</RequestId></Error>"
        ).encode()
        if method != "HEAD"
        else b""
    )
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def serve(port: int, access_key: str) -> None:
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    app = FaultMiddleware(DomainDispatcherApplication(create_backend_app), access_key)
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """One moto server process on a fixed port, which a test may kill and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a client needs: the standard AWS variables, as a user would set them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(self.port), ACCESS_KEY],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.faults_served()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the S3 server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def fault(self, method: str, path: str, status: int | None = 500, count: int = 1, delay: float = 0) -> None:
        """Arm a fault: the next `count` requests of `method` whose path holds `path` wait `delay` s, then
        get `status` (None: served as usual after the wait)."""
        request = urllib.request.Request(
            self.endpoint + FAULT_PATH,
            method="POST",
            data=json.dumps(
                {"method": method, "path": path, "status": status, "count": count, "delay": delay}
            ).encode(),
        )
        urllib.request.urlopen(request, timeout=5).read()

    def faults_served(self) -> int:
        return self._state()["served"]

    def reads(self) -> list[tuple[str, str | None]]:
        """(path, Range header) of every GET of an object so far."""
        return [tuple(read) for read in self._state()["reads"]]

    def _state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.endpoint + FAULT_PATH, timeout=5) as answer:
            return json.loads(answer.read())

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put(self, url: str, data: bytes) -> None:
        """Write one object with boto3."""
        bucket, _, key = url.removeprefix("s3://").partition("/")
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def upload_folder(self, folder: Path, url: str) -> None:
        """Copy a local folder to s3://bucket/prefix with boto3 (not our storage layer: the tests' source of truth)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
