"""Marketplace server at catalogue scale: search and simple-index latency under load, resolver
backtracking, and `pip install` from this server against pypiserver.

    python benchmarks/marketplace_bench.py --out benchmarks/results/marketplace_bench.json
        [--rounds 7] [--packages 1000] [--versions 5] [--samples 100] [--database-url URL]

1. Catalogue: `--packages` x `--versions` releases written straight through the server's
   database layer (rows only, no archives: search and the index read rows), plus a few
   packages published as real archives through `Registry.publish` for pip to install.
2. Latency: the server runs under uvicorn in its own process; p50/p99 of search and simple-index
   requests, idle and while a second process hammers it with a bounded number of requests.
3. Resolution: a 50-package graph whose newest top release pins a shared package that the
   bottom of a 48-deep chain rejects, so resolvelib must backjump to the top three times;
   resolved in-process (rounds and rejected candidates reported) and through POST /api/v1/resolve.
4. pip: `pip install --index-url ... --no-deps --target` of the same wheel set from this server
   and from pypiserver (installed from PyPI into a temporary directory, serving the same wheel
   files), interleaved rounds, medians and the median of per-round ratios.

Numbers move with the neighbours' load on a shared machine; the load average at start is
recorded with the results, and comparisons are only made within one run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from apt_marketplace.apx.manifest import Manifest
from apt_marketplace.apx.pack import write_apx
from apt_marketplace.database import Database
from apt_marketplace.resolver import MemoryCatalogue, ReleaseInfo, resolve
from apt_marketplace.semver import parse_version, to_pep440
from apt_marketplace.server.blobs import BlobStore
from apt_marketplace.server.catalog import Catalog
from apt_marketplace.server.keys import KeyStore
from apt_marketplace.server.models import Base, Dependency, Package, Provide, Release, ReleaseFile
from apt_marketplace.server.settings import Settings
from common import arguments, interleave, paired_ratio, write
from sqlalchemy import insert, select

KINDS = ("attention", "ffn", "router", "align", "retriever", "voter", "quant")
WORDS = ("sparse", "linear", "rotary", "gated", "expert", "cache", "vote", "quant", "retrieval", "kernel")
PIP_SET = 8
JSON_ACCEPT = {"Accept": "application/vnd.pypi.simple.v1+json"}


# --- data -----------------------------------------------------------------------------------

def _wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal installable pure-Python wheel (what pip downloads in the comparison)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode() + b"#" * 2000 + b"\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.10\n".encode(),
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


def _package_name(i: int) -> str:
    return f"apt-plugin-bench{i:04d}"


async def _body(data: bytes) -> AsyncIterator[bytes]:
    """An upload body as the server receives it: the catalog spools whatever streams in."""
    yield data


def _bulk_load(db: Database, names: list[str], versions: int, rng: random.Random) -> int:
    """Rows for packages x versions in a handful of INSERTs; returns the number of releases."""
    now = datetime.now(UTC)
    with db.write() as s:
        s.execute(insert(Package), [
            {"name": n, "display_name": n, "summary": f"{rng.choice(WORDS)} {rng.choice(WORDS)} plugin {n}",
             "downloads": rng.randrange(100_000), "created_at": now}
            for n in names
        ])
        ids = dict(s.execute(select(Package.name, Package.id).where(Package.name.in_(names))).all())
        releases = []
        for i, n in enumerate(names):
            for k in range(versions):
                v = f"1.{k}.0"
                requires = {names[i - 1]: "^1.0"} if i % 10 else {}
                manifest = {"format": 1, "name": n, "version": v, "summary": "", "provides": [], "requires": requires,
                            "core": "^2.0", "python": ">=3.10", "sandbox": "allowed", "files": {}}
                releases.append({
                    "package_id": ids[n], "version": v, "version_key": parse_version(v).precedence, "summary": "",
                    "core": "^2.0", "python": ">=3.10", "sandbox": "allowed", "yanked": False,
                    "sha256": hashlib.sha256(f"{n}-{v}".encode()).hexdigest(), "size": 4096, "manifest": manifest,
                    "signed": False, "uploaded_at": now, "uploader": "bench", "downloads": rng.randrange(1000),
                })
        s.execute(insert(Release), releases)
        rows = s.execute(select(Release.id, Package.name, Release.version).join(Package).where(Package.name.in_(names))).all()
        index = {n: i for i, n in enumerate(names)}
        deps, provides, files = [], [], []
        for rid, n, v in rows:
            i = index[n]
            if i % 10:
                deps.append({"release_id": rid, "name": names[i - 1], "range": "^1.0"})
            provides.append({"release_id": rid, "kind": KINDS[i % len(KINDS)], "name": f"b{i}"})
            sha = hashlib.sha256(f"wheel {n} {v}".encode()).hexdigest()
            files.append({"release_id": rid, "filename": f"{n.replace('-', '_')}-{to_pep440(v)}-py3-none-any.whl",
                          "sha256": sha, "size": 4096, "metadata_sha256": sha, "requires_python": ">=3.10"})
        s.execute(insert(Dependency), deps)
        s.execute(insert(Provide), provides)
        s.execute(insert(ReleaseFile), files)
    return len(rows)


def _backtracking_graph(chain: int = 48, versions: int = 5) -> tuple[list[ReleaseInfo], dict[str, str]]:
    """rg-p00 1.k pins rg-shared ~1.k; the leaf under a `chain`-deep chain needs rg-shared
    <1.2, which only shows after the whole chain is pinned: the resolver must backjump to
    rg-p00 and retry it (1.4, 1.3, 1.2 fail; 1.1 works). 48 + shared + leaf = 50 packages."""
    out = [ReleaseInfo("rg-shared", f"1.{k}.0", {}, "^2.0") for k in range(versions)]
    out += [ReleaseInfo("rg-leaf", f"1.{k}.0", {"rg-shared": "<1.2.0"}, "^2.0") for k in range(versions)]
    for i in range(chain):
        for k in range(versions):
            req = {f"rg-p{i + 1:02d}": "^1.0"} if i < chain - 1 else {"rg-leaf": "^1.0"}
            if i == 0:
                req["rg-shared"] = f"~1.{k}.0"
            out.append(ReleaseInfo(f"rg-p{i:02d}", f"1.{k}.0", req, "^2.0"))
    return out, {"rg-p00": "*"}


def _load_graph(db: Database, releases: list[ReleaseInfo]) -> None:
    now = datetime.now(UTC)
    names = sorted({r.name for r in releases})
    with db.write() as s:
        s.execute(insert(Package), [{"name": n, "display_name": n, "summary": "resolver graph", "downloads": 0, "created_at": now}
                                    for n in names])
        ids = dict(s.execute(select(Package.name, Package.id).where(Package.name.in_(names))).all())
        for r in releases:
            rel = Release(package_id=ids[r.name], version=str(r.version), version_key=r.version.precedence, summary="",
                          core=r.core, python="", sandbox="allowed", yanked=False,
                          sha256=hashlib.sha256(str(r).encode()).hexdigest(), size=1, manifest={}, signed=False,
                          uploaded_at=now, uploader="bench", downloads=0)
            rel.dependencies = [Dependency(name=d, range=v) for d, v in r.requires.items()]
            s.add(rel)


# --- processes ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within 90 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _hammer(url: str, total: int, threads: int) -> None:
    """Load-generator mode (run as a second process): `total` requests over `threads`."""
    paths = [("/api/v1/search", {"q": "gated", "limit": 20}), ("/api/v1/search", {"q": "bench04"}),
             ("/simple/apt-plugin-bench0500/", None), ("/api/v1/packages/apt-plugin-bench0123", None),
             ("/api/v1/search", {"kind": "router", "sort": "downloads"})]
    done = [0]
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def worker(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60, headers=JSON_ACCEPT) as c:
            i = offset
            while not stop.is_set():
                with lock:
                    if done[0] >= total:
                        return
                    done[0] += 1
                path, params = paths[i % len(paths)]
                c.get(path, params=params)
                i += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps({"requests": done[0], "seconds": round(time.perf_counter() - start, 2)}), flush=True)


def _phase(text: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)


def _pct(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, max(0, round(len(ordered) * 0.99) - 1))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 2), "p99_ms": round(p99 * 1000, 2)}


def _latencies(url: str, samples: int) -> dict[str, dict[str, float]]:
    probes = {
        "search_name": ("/api/v1/search", {"q": "bench042"}, {}),
        "search_word_top20": ("/api/v1/search", {"q": "rotary", "limit": 20}, {}),
        "search_kind_by_downloads": ("/api/v1/search", {"kind": "align", "sort": "downloads", "limit": 20}, {}),
        "simple_root_json": ("/simple/", None, JSON_ACCEPT),
        "simple_project_json": ("/simple/apt-plugin-bench0777/", None, JSON_ACCEPT),
        "simple_project_html": ("/simple/apt-plugin-bench0778/", None, {}),
    }
    times: dict[str, list[float]] = {k: [] for k in probes}
    with httpx.Client(base_url=url, timeout=60) as c:
        for name, (path, params, headers) in probes.items():
            c.get(path, params=params, headers=headers).raise_for_status()
        for _ in range(samples):
            for name, (path, params, headers) in probes.items():
                t0 = time.perf_counter()
                c.get(path, params=params, headers=headers).raise_for_status()
                times[name].append(time.perf_counter() - t0)
    return {k: _pct(v) for k, v in times.items()}


def _pip_install(index: str, names: list[str], target: Path) -> float:
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--index-url", index, "--no-deps", "--no-cache-dir",
           "--no-compile", "--disable-pip-version-check", "--quiet", "--target", str(target), *names]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"pip install from {index} failed: {proc.stderr.strip()[-500:]}")
    return elapsed


def _install_pypiserver(where: Path) -> str:
    """pypiserver from PyPI into a private directory; returns a PYTHONPATH for it."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(where),
           "pypiserver", "waitress"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return str(where)


# --- main -----------------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "hammer":
        _hammer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--samples", type=int, default=100, help="latency samples per probe and phase")
    parser.add_argument("--load-requests", type=int, default=20_000, help="bound on the load generator's requests")
    parser.add_argument("--load-threads", type=int, default=4)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    rng = random.Random(1)
    results: dict[str, Any] = {}
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="market-bench-") as tmpdir:
        tmp = Path(tmpdir)
        settings = Settings(data_dir=tmp / "data", database_url=args.database_url)
        settings.data_dir.mkdir(parents=True)
        db = Database(settings.db_url)
        db.create_all(Base.metadata)
        catalog = Catalog(settings, db, BlobStore(settings.blob_dir))
        keys = KeyStore(db)

        # 1. catalogue: real archives for the pip set, rows for the rest
        _phase("loading the catalogue", started)
        names = [_package_name(i) for i in range(args.packages)]
        pip_names = [f"apt-plugin-pipset{i}" for i in range(PIP_SET)]
        wheel_dir = tmp / "wheels"
        wheel_dir.mkdir()
        t0 = time.perf_counter()
        token = keys.create(pip_names, "bench")
        key = keys.authenticate(f"Bearer {token}")
        for name in pip_names:
            for k in range(args.versions):
                version = f"1.{k}.0"
                filename, data = _wheel(name, version)
                (wheel_dir / filename).write_bytes(data)
                manifest = Manifest(name=name, version=version, summary="pip comparison plugin",
                                    provides=("attention.pipset",), core="^2.0", python=">=3.10")
                archive = write_apx(tmp / "apx" / f"{name}-{version}.apx", manifest, {filename: data})
                asyncio.run(catalog.publish(_body(archive.read_bytes()), key))
        publish_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = _bulk_load(db, names, args.versions, rng)
        graph, graph_request = _backtracking_graph()
        _load_graph(db, graph)
        results["catalogue"] = {"packages": args.packages + PIP_SET + len({r.name for r in graph}),
                                "bulk_releases": loaded, "bulk_load_s": round(time.perf_counter() - t0, 2),
                                "published_archives": PIP_SET * args.versions, "publish_s": round(publish_s, 2)}
        db.dispose()

        # 3a. resolution in-process (no HTTP), with resolvelib's effort
        _phase("resolving in-process", started)
        catalogue = MemoryCatalogue(graph)
        times, resolution = [], None
        for _ in range(max(3, args.rounds)):
            t0 = time.perf_counter()
            resolution = resolve(graph_request, catalogue, "2.0.0")
            times.append(time.perf_counter() - t0)
        assert resolution is not None
        results["resolve_50_backtracking"] = {
            "packages": len({r.name for r in graph}), "median_ms": round(statistics.median(times) * 1000, 1),
            "rounds": resolution.rounds, "rejected_candidates": resolution.rejected,
            "top_pinned": resolution.pins()["rg-p00"], "shared_pinned": resolution.pins()["rg-shared"],
        }

        # the server in its own process
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "APT_MARKET_DATA_DIR": str(settings.data_dir), "APT_HOME": str(tmp / "home")}
        if args.database_url:
            env["APT_MARKET_DATABASE_URL"] = args.database_url
        log = open(tmp / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "apt_marketplace.server.app:app_from_env",
                                   "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"],
                                  env=env, stdout=log, stderr=log)
        pypi = None
        try:
            _wait_http(f"{url}/api/v1/health", server, "the marketplace server")

            # 3b. the same resolution through the API (database catalogue, HTTP, JSON)
            _phase("resolving through the API", started)
            with httpx.Client(base_url=url, timeout=120) as c:
                api_times = []
                for _ in range(max(3, args.rounds)):
                    t0 = time.perf_counter()
                    r = c.post("/api/v1/resolve", json={"requirements": graph_request, "core": "2.0.0"})
                    api_times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                results["resolve_50_backtracking"]["api_median_ms"] = round(statistics.median(api_times) * 1000, 1)
                results["resolve_50_backtracking"]["api_pins_match"] = r.json()["pins"] == resolution.pins()

            # 2. latency idle, then under load from a second process
            _phase("latency, idle then under load", started)
            results["latency_idle"] = _latencies(url, args.samples)
            load = subprocess.Popen([sys.executable, __file__, "hammer", url, str(args.load_requests), str(args.load_threads)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(1.0)
            t0 = time.perf_counter()
            results["latency_under_load"] = _latencies(url, args.samples)
            measured = time.perf_counter() - t0
            still_running = load.poll() is None
            load.send_signal(signal.SIGTERM)
            out, _ = load.communicate(timeout=60)
            report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            results["load"] = {"threads": args.load_threads, "bound": args.load_requests, "served": report.get("requests"),
                               "rps": round(report["requests"] / report["seconds"], 1) if report.get("seconds") else None,
                               "active_for_whole_measurement": still_running, "measurement_s": round(measured, 1)}

            # 4. pip install from this server vs pypiserver, same wheels
            _phase("pip install: marketplace vs pypiserver", started)
            pypi_port = _free_port()
            pypi_path = _install_pypiserver(tmp / "pypiserver")
            pypi_log = open(tmp / "pypiserver.log", "wb")
            pypi = subprocess.Popen([sys.executable, "-m", "pypiserver", "run", "-p", str(pypi_port), "-i", "127.0.0.1",
                                     "--server", "auto", str(wheel_dir)],
                                    env={**os.environ, "PYTHONPATH": pypi_path}, stdout=pypi_log, stderr=pypi_log)
            _wait_http(f"http://127.0.0.1:{pypi_port}/simple/", pypi, "pypiserver")
            ours_index, theirs_index = f"{url}/simple/", f"http://127.0.0.1:{pypi_port}/simple/"
            _pip_install(ours_index, pip_names, tmp / "t-warm")
            _pip_install(theirs_index, pip_names, tmp / "t-warm")
            samples = interleave({
                "marketplace": lambda: _pip_install(ours_index, pip_names, tmp / "t-ours"),
                "pypiserver": lambda: _pip_install(theirs_index, pip_names, tmp / "t-theirs"),
            }, args.rounds)
            installed = sorted(p.name for p in (tmp / "t-ours").glob("*.dist-info"))
            ratio = paired_ratio(samples, "marketplace", "pypiserver")
            results["pip_install"] = {
                "wheels": len(pip_names), "versions_listed_each": args.versions, "rounds": args.rounds,
                "marketplace_median_s": round(statistics.median(samples["marketplace"]), 3),
                "pypiserver_median_s": round(statistics.median(samples["pypiserver"]), 3),
                "ratio_median": round(ratio, 3),
                "installed_newest": all(n.endswith(f"-1.{args.versions - 1}.0.dist-info") for n in installed)
                and len(installed) == len(pip_names),
                "pypiserver_version": subprocess.run(
                    [sys.executable, "-c", "import importlib.metadata as m; print(m.version('pypiserver'))"],
                    env={**os.environ, "PYTHONPATH": pypi_path}, capture_output=True, text=True).stdout.strip(),
            }
        finally:
            if pypi is not None:
                _stop(pypi)
            _stop(server)
            log.close()

    under = results["latency_under_load"]
    results["targets"] = {
        "pip_install_at_most_pypiserver": results["pip_install"]["ratio_median"] <= 1.0,
        "resolve_backtracked": results["resolve_50_backtracking"]["rejected_candidates"] > 0
        and results["resolve_50_backtracking"]["top_pinned"] == "1.1.0",
        "resolve_api_agrees": results["resolve_50_backtracking"]["api_pins_match"],
        "search_p99_under_load_below_1s": max(under[k]["p99_ms"] for k in under if k.startswith("search")) < 1000,
        "simple_p99_under_load_below_1s": max(under[k]["p99_ms"] for k in under if k.startswith("simple")) < 1000,
        "load_active_throughout": results["load"]["active_for_whole_measurement"],
    }
    results["wall_s"] = round(time.perf_counter() - started, 1)
    write(args.out, "marketplace_bench", {
        "database": "sqlite" if not args.database_url else args.database_url.split(":", 1)[0],
        "versions_per_package": args.versions,
        **results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
