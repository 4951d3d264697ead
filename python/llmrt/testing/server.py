"""`llmrt serve` in a subprocess, for tests and benchmarks (needs httpx)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    name: str
    log: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(model: str, *args: str, timeout: float = 120) -> Server:
    """Starts the server on a free port and waits until /health answers."""
    import httpx

    port = free_port()
    log = os.path.join(os.path.dirname(model), f"serve-{port}.log")
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "llmrt", "serve", model, "--port", str(port),
                             *args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {open(log).read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                name = os.path.splitext(os.path.basename(model))[0]
                return Server(proc, url, name, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start: {open(log).read()}")


def metric(server: Server, name: str) -> float:
    """A metric's value from the server's /metrics."""
    import httpx

    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    if m is None:
        raise KeyError(name)
    return float(m.group(1))
