"""``apt serve`` under concurrent streaming clients: aggregate tokens/s and time to first token.

A ``shakespeare_char``-shaped model (sdpa, block 256 so that a 64-token answer stays inside the
window) is trained for a few steps on tinyshakespeare (``SHARED_DATA``) and served on 127.0.0.1 with
``--max-batch 16``. For 1, 4 and 16 clients, each client runs a bounded loop of streaming requests
(``max_tokens`` 64, temperature 0.8) with httpx; the aggregate rate is all streamed tokens over the
wall time of the whole loop, and time to first token is taken per request from sending it to its
first SSE chunk. Continuous batching is what lets 16 clients get more than one client's rate.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import SHARED_DATA, arguments, write

from apt.profile import load_profile
from apt.trainer import Trainer


def train(workdir: Path) -> Path:
    profile = load_profile("shakespeare_char", [
        "model.attention=sdpa", "model.block_size=256", f"data.train_path={SHARED_DATA}", "train.threads=2",
        "train.max_iters=20", "train.eval_interval=20", "train.eval_iters=2", "train.warmup_iters=2",
        "logging.jsonl=false", "logging.progress=false", "logging.tensorboard=false",
        f"checkpoint.dir={workdir / 'run'}", "checkpoint.every=20"])
    Trainer(profile, echo=lambda s: None).run()
    return workdir / "run"


def client(base: str, requests: int, max_tokens: int, ttft: list[float], tokens: list[int]) -> None:
    with httpx.Client(timeout=600) as http:
        for _ in range(requests):
            start = time.perf_counter()
            first = None
            count = 0
            body = {"prompt": "ROMEO:", "max_tokens": max_tokens, "temperature": 0.8, "stream": True}
            with http.stream("POST", f"{base}/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    if first is None:
                        first = time.perf_counter() - start
                    count += len(json.loads(line[6:])["choices"][0]["text"])
            ttft.append(first if first is not None else float("nan"))
            tokens.append(count)


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="apt-serve-bench-") as tmp:
        run_dir = train(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "APT_HOME": str(Path(tmp) / "home"), "OMP_NUM_THREADS": "2"}
        server = subprocess.Popen([sys.executable, "-m", "apt", "serve", "--checkpoint", str(run_dir), "--port",
                                   str(port), "--max-batch", "16"], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            client(base, 1, args.max_tokens, [], [])
            for n in (int(c) for c in args.clients.split(",")):
                ttft: list[float] = []
                tokens: list[int] = []
                threads = [threading.Thread(target=client, args=(base, args.requests, args.max_tokens, ttft, tokens))
                           for _ in range(n)]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - start
                ordered = sorted(ttft)
                row = {"clients": n, "requests": len(ttft), "tokens": sum(tokens), "wall_s": wall,
                       "tokens_per_s": sum(tokens) / wall, "ttft_p50_s": statistics.median(ordered),
                       "ttft_p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}
                print(f"{n:3} clients: {row['tokens_per_s']:8.1f} tok/s, TTFT p50 {row['ttft_p50_s'] * 1e3:7.1f} ms, "
                      f"p99 {row['ttft_p99_s'] * 1e3:7.1f} ms", flush=True)
                results.append(row)
        finally:
            server.terminate()
            server.wait(timeout=30)
    rates = {row["clients"]: row["tokens_per_s"] for row in results}
    summary = {"speedup_16_vs_1": rates[16] / rates[1]} if 1 in rates and 16 in rates else {}
    write(args.out, "serve_bench", {"max_tokens": args.max_tokens, "requests_per_client": args.requests,
                                    "results": results, **summary})


if __name__ == "__main__":
    main()
