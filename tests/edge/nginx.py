"""Helpers of the edge tests: infra/nginx.conf rendered and run as a real nginx, and an SSE reader."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
NGINX_TEMPLATE = INFRA / "nginx.conf"
#: The placeholders of infra/nginx.conf; compose's nginx service must set exactly these.
NGINX_PLACEHOLDERS = frozenset({"FRESHVIEWS_LISTEN", "FRESHVIEWS_UPSTREAM", "FRESHVIEWS_CACHE_DIR"})
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


def render_nginx(template: str, values: dict[str, str]) -> str:
    """Fill ``${NAME}`` placeholders as envsubst would; nginx's own ``$name`` variables are left alone."""
    missing = placeholders(template) - values.keys()
    if missing:
        raise ValueError(f"no value for {sorted(missing)}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


@dataclass
class Nginx:
    """Debian's nginx in the foreground, with its own prefix, pid, logs, temp and cache paths under ``root``."""

    binary: str
    root: Path
    port: int
    upstream: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.root / "conf" / "nginx.conf"

    def write_config(self) -> None:
        for folder in ("conf", "logs", "temp", "cache"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        snippet = render_nginx(
            NGINX_TEMPLATE.read_text(),
            {
                "FRESHVIEWS_LISTEN": f"127.0.0.1:{self.port}",
                "FRESHVIEWS_UPSTREAM": self.upstream,
                "FRESHVIEWS_CACHE_DIR": str(self.root / "cache"),
            },
        )
        (self.root / "conf" / "freshviews.conf").write_text(snippet)
        temp = self.root / "temp"
        # Running as root (CI), nginx would hand its workers to `nobody`, who cannot enter pytest's 0700 tmp
        # directories to write cache and temp files; the workers stay root here, in a throwaway test server.
        user = "user root;" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"""# Test harness around infra/nginx.conf (included as is, placeholders filled).
{user}
worker_processes 1;
pid {self.root}/nginx.pid;
error_log {self.root}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    # The app sends X-Accel-Buffering: no on its streams; ignoring it here (locations that set no
    # proxy_ignore_headers of their own inherit this) tests what infra/nginx.conf does by itself.
    proxy_ignore_headers X-Accel-Buffering;
    log_format edge '$request_method $request_uri $status cache=$upstream_cache_status';
    access_log {self.root}/logs/access.log edge;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.root}/conf/freshviews.conf;
}}
"""
        )

    def _command(self, *extra: str) -> list[str]:
        # -e: the error log before the config is read (the compiled-in default may not be writable).
        return [
            self.binary,
            "-p",
            str(self.root),
            "-c",
            str(self.config),
            "-e",
            str(self.root / "logs/error.log"),
            *extra,
        ]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered config."""
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self, timeout: float = 15) -> None:
        log = (self.root / "logs" / "stdout.log").open("ab")
        # daemon off: the test owns the process (and its children die with it); the master still forks workers.
        self.popen = subprocess.Popen(self._command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"nginx exited with {self.popen.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"nginx did not proxy /healthz within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        # SIGTERM is nginx's fast shutdown: open event streams would hold a graceful (SIGQUIT) one for an hour.
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "error.log"):
            path = self.root / "logs" / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)
