"""Marketplace server latency and throughput on this machine.

Starts the real app under uvicorn on 127.0.0.1 with a throwaway data directory, publishes
synthetic plugins (a dependency chain, so resolution has work to do) and times the API over
HTTP. Writes a JSON report to --out.

    python benchmarks/marketplace_bench.py --out benchmarks/results/marketplace_bench.json
        [--packages 40] [--versions 3] [--repeat 50] [--database-url URL]

Absolute latencies move with the neighbours' load on a shared machine; the load average at
start is recorded with the results.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from apt_marketplace.app import create_app
from apt_marketplace.apx import Manifest, write_apx
from apt_marketplace.settings import Settings
from common import arguments, write


def _wheel(name: str, version: str) -> tuple[str, bytes]:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Dist: apt-core<3,>=2\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
        for p, b in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, body in files.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), body)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def _archive(tmp: Path, name: str, version: str, requires: dict[str, str]) -> bytes:
    manifest = Manifest(name=name, version=version, summary=f"bench plugin {name}", provides=("attention.bench",), requires=requires, core="^2.0")
    filename, data = _wheel(name, version)
    return write_apx(tmp / f"{name}-{version}.apx", manifest, {filename: data}).read_bytes()


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _timed(client: httpx.Client, method: str, path: str, repeat: int, **kwargs) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        resp = client.request(method, path, **kwargs)
        out.append(time.perf_counter() - start)
        resp.raise_for_status()
    return out


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=40)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="market-bench-") as tmpdir:
        tmp = Path(tmpdir)
        settings = Settings(data_dir=tmp / "data", database_url=args.database_url)
        app = create_app(settings)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        names = [f"apt-plugin-bench{i:03d}" for i in range(args.packages)]
        token = app.state.registry.create_api_key(names, "bench")
        archives = []
        for i, name in enumerate(names):
            for minor in range(args.versions):
                requires = {names[i - 1]: f"^1.{minor}"} if i else {}
                archives.append(_archive(tmp, name, f"1.{minor}.0", requires))
        results: dict[str, object] = {}
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as client:
            half = len(archives) // 2
            publish_times = []
            for body in archives[:half]:
                start = time.perf_counter()
                client.post("/api/v1/publish", content=body).raise_for_status()
                publish_times.append(time.perf_counter() - start)
            results["publish_sequential"] = _stats(publish_times)

            def publish(body: bytes) -> int:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as c:
                    return c.post("/api/v1/publish", content=body).status_code

            start = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(publish, archives[half:]))
            elapsed = time.perf_counter() - start
            results["publish_parallel_8"] = {
                "n": len(codes),
                "per_second": round(len(codes) / elapsed, 1),
                "all_created": all(c == 201 for c in codes),
            }
            same = archives[0]
            with ThreadPoolExecutor(8) as pool:
                noop_codes = list(pool.map(publish, [same] * 40))
            results["republish_identical_8"] = {"n": 40, "all_noop_200": all(c == 200 for c in noop_codes)}

            results["search"] = _stats(_timed(client, "GET", "/api/v1/search", args.repeat, params={"q": "bench", "sort": "downloads"}))
            results["package_info"] = _stats(_timed(client, "GET", f"/api/v1/packages/{names[-1]}", args.repeat))
            results[f"resolve_chain_{args.packages}"] = _stats(
                _timed(client, "POST", "/api/v1/resolve", max(5, args.repeat // 5), json={"requirements": {names[-1]: "^1.0"}, "core": "2.0.0"})
            )
            results["simple_project_json"] = _stats(
                _timed(client, "GET", f"/simple/{names[0]}/", args.repeat, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            )
            results["download_apx"] = _stats(_timed(client, "GET", f"/api/v1/packages/{names[0]}/1.0.0/download", args.repeat))
        server.should_exit = True
        thread.join(timeout=15)

    write(
        args.out,
        "marketplace",
        {
            "database": "sqlite" if not args.database_url else args.database_url.split(":", 1)[0],
            "packages": args.packages,
            "versions_per_package": args.versions,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
