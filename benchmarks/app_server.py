"""`python app.py` launched on a free port of 127.0.0.1, for the benchmarks and the tests
(tests/wb_helpers.py imports it)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` in a subprocess on 127.0.0.1:PORT; stop() ends it (and only it)."""

    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(log, "w")
        full = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1",
                "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False",
                "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180.0) -> None:
        """Until the page answers (the warm-up thread may still run); the app's exit or the
        timeout raise with the log's tail."""
        import urllib.request

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app not up after {timeout}s: {self.output()[-2000:]}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
