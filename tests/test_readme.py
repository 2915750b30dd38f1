"""The README's integration section, run as a newcomer would: its snippets, copied from README.md itself into a
project with its own ``app/`` package, on the wheel installed into a venv of their own, a write becoming a fresh
cached read.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def snippets() -> dict[str, str]:
    """The README's Python blocks that open with ``# app/<file>.py``, by file."""
    blocks: dict[str, str] = {}
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        first, _, _ = block.partition("\n")
        if re.fullmatch(r"# app/\w+\.py", first.strip()):
            blocks[first.strip()[2:]] = block
    return blocks


def run_block() -> list[list[str]]:
    """The ``freshviews`` commands of the README's "Run it" block, without their ``&`` and comments."""
    section = README[README.index("**4. Run it") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no command block in the Run it step"
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip().rstrip("&").strip()
        if line.startswith("freshviews "):
            commands.append(shlex.split(line))
    return commands


def test_the_readme_shows_every_file_of_the_project() -> None:
    assert set(snippets()) == {"app/models.py", "app/views.py", "app/main.py"}
    assert [c[:2] for c in run_block()] == [["freshviews", "serve"], ["freshviews", "subscriber"]]


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, *, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {within}s:\n{log.read_text()[-3000:]}")


def test_the_readme_project_serves_a_write_fresh_from_the_cache(wheel: Path, tmp_path: Path, redis_url: str) -> None:
    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text("")
    for name, code in snippets().items():
        (project / name).write_text(code)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"{wheel}[sqlalchemy]", "aiosqlite"], check=True, timeout=420)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{project / 'shelves.db'}",
        "FRESHVIEWS_OUTBOX_URL": f"sqlite+aiosqlite:///{project / 'shelves.db'}",
        "SUBSCRIBER_METRICS_PORT": str(free_port()),
        "HOME": str(tmp_path),
    }
    port = free_port()
    serve, subscriber = run_block()
    logs = [tmp_path / "app.log", tmp_path / "subscriber.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for command, log in zip([[*serve, "--port", str(port)], subscriber], logs, strict=True):
            with log.open("wb") as out:
                procs.append(subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/cache/views", procs[0], logs[0], within=60)
        assert httpx.post(f"{base}/shelves", params={"name": "fiction"}).status_code == 201
        book = httpx.post(f"{base}/books", json={"title": "Dune", "shelf_id": 1})
        assert book.status_code == 201, book.text
        expected = {"id": 1, "name": "fiction", "books": ["Dune"]}
        deadline = time.monotonic() + 30  # the subscriber starts, warms up and applies the change
        while True:
            answer = httpx.get(f"{base}/cache/shelf/1")
            if answer.status_code == 200 and answer.json() == expected:
                break
            assert time.monotonic() < deadline, f"{answer.status_code} {answer.text}\n{logs[1].read_text()[-3000:]}"
            time.sleep(0.1)
        assert answer.headers["etag"].strip('"').isdigit()
        # The app's own import name is app: the kit added nothing but freshviews to site-packages.
        site = next((venv / "lib").glob("python3*/site-packages"))
        assert not any((site / name).exists() for name in ("app", "publisher", "subscriber"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert os.path.exists(project / "shelves.db")
