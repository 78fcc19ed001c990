"""Real server processes on free loopback ports, for tests that go over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server started with ``args``; ``ready`` polls ``url + probe`` until it answers."""

    def __init__(self, args: list[str], port: int, log: Path, probe: str = "/v1/models", env: dict | None = None):
        self.port, self.log, self.probe = port, log, probe
        self.url = f"http://127.0.0.1:{port}"
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "OMP_WAIT_POLICY": "passive", **(env or {})})

    def ready(self, timeout: float = 120.0) -> Process:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + self.probe, timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def kvfp_serve(tmp: Path, *args: str, env: dict | None = None) -> Process:
    port = free_port()
    return Process([sys.executable, "-m", "kvfp", "serve", "--port", str(port), *args], port,
                   tmp / f"serve-{port}.log", env=env).ready()


def fault_proxy(tmp: Path, upstream: str, mode: str) -> Process:
    port = free_port()
    return Process([sys.executable, str(ROOT / "tests" / "live" / "fault_proxy.py"), upstream, str(port), mode],
                   port, tmp / f"proxy-{mode}-{port}.log").ready(30)
