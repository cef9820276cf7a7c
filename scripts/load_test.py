"""Load test of `cxr serve` on this machine only (127.0.0.1): N concurrent clients for a fixed time.

Starts `cxr serve RUN` on a free local port (or uses --port of one already running on 127.0.0.1), warms it up,
then each client thread POSTs real images (multipart, keep-alive) one after another for --duration seconds.
Prints requests/s, latency p50/p95/max, errors by status, and the server's resident memory (VmRSS) after
warm-up and at the end. Bounded: at most --clients requests in flight, never anything but 127.0.0.1.

    .venv/bin/python scripts/load_test.py RUN --images DIR [DIR...] --clients 4 --duration 60
    (add --backend torch to measure the PyTorch fallback)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, proc: subprocess.Popen | None, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(
                f"the server exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def client(
    port: int, bodies: list[tuple[bytes, str]], start_at: int, stop: float, out: list, token: str | None
):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = start_at
    headers_base = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < stop:
        body, ctype = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/predict", body=body, headers={**headers_base, "Content-Type": ctype})
            resp = conn.getresponse()
            resp.read()
            out.append((time.perf_counter() - t0, resp.status))
        except (OSError, http.client.HTTPException) as exc:
            out.append((time.perf_counter() - t0, f"{exc.__class__.__name__}"))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder to serve (ignored with --port)")
    ap.add_argument(
        "--images", required=True, nargs="+", help="folders of real images (searched recursively)"
    )
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--max-images", type=int, default=64)
    ap.add_argument("--port", type=int, help="use a server already running on 127.0.0.1:PORT")
    ap.add_argument("--token", default=None)
    ap.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                    help="the server's --backend (ignored with --port)")  # fmt: skip
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.duration <= 600:
        raise SystemExit("--clients 1..64 and --duration up to 600 s")

    files = sorted(
        p for d in args.images for p in Path(d).rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
    )
    step = max(1, len(files) // args.max_images)
    files = files[::step][: args.max_images]
    if not files:
        raise SystemExit(f"no images under {args.images}")
    bodies = [multipart(f.name, f.read_bytes()) for f in files]

    proc = None
    port = args.port
    if port is None:
        port = free_port()
        cmd = [sys.executable, "-m", "cxrlab", "serve", args.run, "--host", "127.0.0.1", "--port", str(port)]
        if args.token:
            cmd += ["--token", args.token]
        cmd += ["--backend", args.backend]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port, proc)
        warm: list = []
        client(port, bodies, 0, time.monotonic() + 3, warm, args.token)  # warm-up: first batches, allocator
        pid = proc.pid if proc else None
        rss_start = rss_mb(pid) if pid else None
        load_start = os.getloadavg()
        cpu_start = cpu_s(pid) if pid else None
        results: list[list] = [[] for _ in range(args.clients)]
        stop = time.monotonic() + args.duration
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=client, args=(port, bodies, k * 7, stop, results[k], args.token))
            for k in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_end = rss_mb(pid) if pid else None
        cpu_end = cpu_s(pid) if pid else None
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server died during the test ({proc.returncode})")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    flat = [r for rs in results for r in rs]
    ok = sorted(lat for lat, status in flat if status == 200)
    errors: dict[str, int] = {}
    for _, status in flat:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    summary = {
        "clients": args.clients,
        "duration_s": round(wall, 1),
        "images": len(files),
        "requests": len(flat),
        "ok": len(ok),
        "errors": errors,
        "requests_per_s": round(len(ok) / wall, 2),
        "latency_ms": {
            "p50": round(q[49] * 1000, 1),
            "p95": round(q[94] * 1000, 1),
            "max": round(max(ok) * 1000, 1) if ok else None,
        },
        "server_rss_mb": {"start": rss_start and round(rss_start, 1), "end": rss_end and round(rss_end, 1)},
        # the server's CPU time per answered request: what a request costs, whatever else the machine runs
        "server_cpu_ms_per_request": (
            round((cpu_end - cpu_start) * 1000 / len(ok), 1)
            if cpu_start is not None and cpu_end is not None and ok
            else None
        ),
        "backend": args.backend if args.port is None else "as the server runs",
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "cpu": _cpu(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    sys.exit(1 if errors else 0)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
