"""``make lab``, the README's first command: it starts JupyterLab as root and as a normal user.

Each case runs the Makefile's ``lab`` target itself (``make -o <venv>/.installed`` skips the
set-up step, already done by the environment running the tests) on 127.0.0.1, reads the URL it
prints, lists the lessons over the Jupyter server's REST API with that URL's token, then stops the
server through the API and expects ``make`` to exit 0. Without a display no browser may start and
the URL is printed; with one, the browser named in ``BROWSER`` (a script that writes down what it
was asked to open) is started. As root, the normal user is uid
1000 in a user namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
USER = 1000
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/lab\S*\?token=(\w+)")
STARTUP_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, token: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers={"Authorization": f"token {token}"},
    )
    # the URL is printed a moment before the server accepts connections
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
            return json.loads(body) if body else {}
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("display", [False, True], ids=["no-display", "display"])
@pytest.mark.parametrize("as_root", [True, False], ids=["root", "user"])
def test_make_lab_serves_the_lessons_and_stops(
    tmp_path: Path, as_root: bool, display: bool
) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is missing: the README's first command needs it")
    if not (VENV / "bin" / "jupyter-lab").exists():
        pytest.fail(f"JupyterLab is not in {VENV}: `make setup` installs it (the lab extra)")
    is_root = os.geteuid() == 0
    if as_root != is_root and not is_root:
        pytest.skip("running as a normal user: the root case needs root")

    home = tmp_path / "home"
    home.mkdir()
    opened = home / "opened.txt"
    browser = home / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
    # As root, the normal user is uid 1000 in a user namespace mapped onto this user: it owns the
    # checkout and its .venv, like anyone who cloned the course, but is not root.
    prefix = ["unshare", "--user", f"--map-user={USER}", f"--map-group={USER}"]
    prefix = prefix if is_root and not as_root else []
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # a new user: no Jupyter configuration, no runtime files yet
        "LANG": "C.UTF-8",
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "OMP_NUM_THREADS": "1",
    }
    if display:
        env.update(DISPLAY=":99", BROWSER=f"{browser} %s")
    port = _free_port()
    args = f"--ServerApp.ip=127.0.0.1 --ServerApp.port={port} --LabApp.news_url=None"
    make = ["make", "-s", "-C", str(ROOT), "-o", f"{VENV}/.installed", f"VENV={VENV}"]
    command = [*prefix, *make, "lab", f"LAB_ARGS={args}"]
    proc = subprocess.Popen(
        command,
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_S
        match = None
        while match is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            match = URL.search(line)
        output = "".join(lines)
        assert match, f"make lab printed no URL to open:\n{output}"
        assert "Running as root is not recommended" not in output
        port_seen, token = int(match.group(1)), match.group(2)
        assert port_seen == port, output

        # JupyterLab serves the folder of the notebook it opens: lessons/ (no solutions in sight)
        listing = _api(port, token, "/api/contents")
        names = sorted(item["name"] for item in listing["content"])
        assert names == sorted(p.name for p in (ROOT / "lessons").glob("*.ipynb")), names
        assert "01_mdps.ipynb" in names

        if display:
            # the browser is started in a thread as the server comes up: give it a moment
            for _ in range(50):
                if opened.exists():
                    break
                time.sleep(0.1)
            assert opened.exists(), f"no browser was started although there is a display:\n{output}"
            assert "No display" not in output
        else:
            assert not opened.exists()
            assert "No display here: open the http:// URL printed below" in output

        _api(port, token, "/api/shutdown", method="POST")
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"make lab did not stop cleanly:\n{output}{rest}"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the server still listens"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
