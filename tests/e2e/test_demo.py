"""`perimeter demo` as a newcomer runs it: the web app starts and the printed link opens the
CRM widget on a sample customer who already talked to the bot."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def test_the_demo_prints_a_widget_link_that_shows_the_sample_customer(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERIMETER_")}
    env.update({"PERIMETER_DATA_DIR": str(tmp_path / "data"), "PERIMETER_LLM_BACKEND": "none", "COLUMNS": "400"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "demo", "--no-chat", "--port", str(port)],
                            cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        link = None
        deadline = time.monotonic() + 600  # indexing the sample bank on two cores takes a while
        while link is None and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            found = re.search(r"(http://\S+/widget/demo\?token=\S+)", line)
            link = found.group(1) if found else None
        assert link, "".join(seen)
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200 and "perimeter-session" in page.text
        token = re.search(r'name="perimeter-session" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        base = link.split("/widget/")[0]
        summary = httpx.get(f"{base}/widget/api/summary", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        data = summary.json()
        assert data["customer"]["name"].startswith("Иванова Марина")
        assert data["ticket"] and data["ticket"]["reason"] == "customer_request"
        assert any(m["role"] == "customer" for m in data["conversation"])
        assert httpx.get(f"{base}/widget/api/summary", timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
