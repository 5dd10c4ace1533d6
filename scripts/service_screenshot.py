"""The screenshot of the dosing service's recommendation page in the documentation
(``docs/service.md``).

Starts ``popkin serve`` on a temporary SQLite database, adds a pharmacist, creates a vancomycin
patient (two 1-g infusions 12 h apart and a level before the third dose), asks for a
recommendation through the same forms a browser posts, and saves a full-page PNG of the
recommendation page as Chromium renders it (Playwright driving the system's Chromium: the path
in ``POPKIN_CHROMIUM``, else ``/usr/bin/chromium`` or ``chromium`` on ``PATH``; no browser is
downloaded).

Usage::

    python scripts/service_screenshot.py [--method nuts|map] [--model vancomycin_goti]
                                         [--out docs/figures/service-recommendation.png]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from popkin.service.server import add_account  # noqa: E402

OUT = ROOT / "docs" / "figures" / "service-recommendation.png"
PHARMACIST = ("pharmacist1", "a long pharmacist password")
PATIENT = "VANC-0042"
PATIENT_CSV = (b"ID,TIME,AMT,RATE,DV,EVID,CRCL,WT,AGE,DIAL\n"
               b"1,0,1000,1000,.,1,80,70,60,0\n"
               b"1,12,1000,1000,.,1,80,70,60,0\n"
               b"1,23.5,0,0,12.5,0,80,70,60,0\n")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium() -> str:
    for candidate in (os.environ.get("POPKIN_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    sys.exit("service_screenshot.py: Chromium is needed (Debian/Ubuntu: apt-get install "
             "chromium; or set POPKIN_CHROMIUM=/path/to/chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db_url: str, port: int, log) -> subprocess.Popen:
    """``popkin serve`` in its own process group (stopped with the group), once it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "popkin.cli", "serve", "--db", db_url, "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("popkin serve exited (its output follows)")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    raise RuntimeError("popkin serve did not answer in 120 s")


def recommendation(url: str, model: str, method: str) -> tuple[int, dict]:
    """Log in as the pharmacist, record the patient and ask; returns the recommendation's id
    and the session's cookies."""
    with httpx.Client(base_url=url, follow_redirects=True, timeout=60) as client:
        page = client.get("/login").text
        token = re.search(r'name="login_token" value="([^"]+)"', page).group(1)
        page = client.post("/login", data={"name": PHARMACIST[0], "password": PHARMACIST[1],
                                           "login_token": token, "next": "/"}).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        r = client.post("/patients", data={"identifier": PATIENT, "note": "ward 4B",
                                           "csrf_token": csrf})
        pid = int(str(r.url).rsplit("/", 1)[1])
        r = client.post(f"/patients/{pid}/upload", data={"format": "csv", "csrf_token": csrf},
                        files={"file": ("patient.csv", PATIENT_CSV, "text/csv")})
        r.raise_for_status()
        r = client.post(f"/patients/{pid}/recommend", follow_redirects=False, data={
            "model": model, "target": "auc24:400-600", "limit": "trough:<20",
            "method": method, "suggest_sample": "1", "seed": "1", "csrf_token": csrf})
        if r.status_code != 303:
            raise RuntimeError(f"the recommendation was refused: {r.text[:500]}")
        job = r.headers["location"].rsplit("/", 1)[1]
        started = time.monotonic()
        while True:
            status = client.get(f"/api/v1/jobs/{job}").json()
            if status["status"] not in ("queued", "running"):
                break
            if time.monotonic() - started > 900:
                raise RuntimeError("the recommendation took more than 15 minutes")
            time.sleep(1)
        if status["status"] != "done":
            raise RuntimeError(f"the recommendation {status['status']}: {status['error']}")
        print(f"recommendation {status['recommendation']} in {time.monotonic() - started:.0f} s")
        return status["recommendation"], dict(client.cookies)


def screenshot(url: str, rid: int, cookies: dict, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=url, viewport={"width": 1320, "height": 900},
                                          device_scale_factor=1)
            context.add_cookies([{"name": k, "value": v, "url": url} for k, v in cookies.items()])
            page = context.new_page()
            page.goto(f"/recommendations/{rid}")
            page.wait_for_function("() => [...document.images].every(i => i.complete && "
                                   "i.naturalWidth > 0)")
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    # a page's few colours fit a 256-colour palette: a third of the size, no visible change
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(
        colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("nuts", "map"), default="nuts")
    parser.add_argument("--model", default="vancomycin_goti")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chromium()                                    # fail before any work without a browser
    with tempfile.TemporaryDirectory(prefix="popkin-screenshot-") as folder:
        db_url = f"sqlite:///{Path(folder) / 'service.db'}"
        add_account(db_url, PHARMACIST[0], "pharmacist", PHARMACIST[1])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(Path(folder) / "serve.log", "wb") as log:
            server = None
            try:
                server = start(db_url, port, log)
                rid, cookies = recommendation(url, args.model, args.method)
                screenshot(url, rid, cookies, args.out)
            except Exception:
                log.flush()
                print((Path(folder) / "serve.log").read_text(errors="replace")[-3000:],
                      file=sys.stderr)
                raise
            finally:
                if server is not None and server.poll() is None:
                    os.killpg(server.pid, signal.SIGTERM)
                    try:
                        server.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(server.pid, signal.SIGKILL)
                        server.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
