"""``apt serve`` as a client sees it: a real server subprocess on 127.0.0.1, driven with httpx and openai."""

import json
import os
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from core_cli import SMALL, assert_one_line_error, run, serving


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["APT_HOME"] = str(root / "apt_home")
    result = run(["train", "-p", "tiny_debug", *SMALL, "--set", "train.max_iters=30",
                  "--set", "train.eval_interval=30", "--set", "model.block_size=32"], env=env, cwd=root)
    assert result.returncode == 0, result.stderr
    return root, env, root / "runs" / "tiny_debug"


@pytest.fixture(scope="module")
def server(checkpoint):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    root, env, ckpt = checkpoint
    with serving(["--checkpoint", str(ckpt), "--max-batch", "4"], env=env, cwd=root) as (base, proc):
        yield base, proc, ckpt


def _complete(base, **body):
    return httpx.post(f"{base}/v1/completions", json=body, timeout=120)


def _events(base, **body):
    with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


def test_models_health_and_a_completion_in_openais_shape(server):
    base, _, ckpt = server
    models = httpx.get(f"{base}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny_debug"]
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    r = _complete(base, model="tiny_debug", prompt="ROMEO:", max_tokens=12, temperature=0)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "tiny_debug"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}

    from apt.checkpoint import load_model
    from apt.generate import sample

    loaded = load_model(ckpt)
    alone = sample(loaded.model, loaded.tokenizer, "ROMEO:", max_new_tokens=12, temperature=0)[0]
    assert choice["text"] == alone.text


def test_streaming_sends_the_same_text_then_done(server):
    base, _, _ = server
    events = _events(base, prompt="JULIET:", max_tokens=40, temperature=0.8, seed=3)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["choices"][0]["index"] == 0 for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    whole = _complete(base, prompt="JULIET:", max_tokens=40, temperature=0.8, seed=3).json()
    assert streamed == whole["choices"][0]["text"] and len(streamed) == 40


def test_n_choices_seeds_and_stop_strings(server):
    base, _, _ = server
    body = _complete(base, prompt=["a", "b"], n=3, max_tokens=30, temperature=1.0, seed=7).json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    again = _complete(base, prompt=["a", "b"], n=3, max_tokens=30, temperature=1.0, seed=7).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in body["choices"]]
    assert len({c["text"] for c in body["choices"][:3]}) > 1
    text = body["choices"][0]["text"]
    stop = text[5:7]
    cut = _complete(base, prompt=["a", "b"], n=3, max_tokens=30, temperature=1.0, seed=7, stop=[stop, "@@"]).json()
    first = cut["choices"][0]
    assert first["finish_reason"] == "stop" and first["text"] == text[:text.index(stop)]
    streamed = _events(base, prompt="a", max_tokens=30, temperature=1.0, seed=7, stop=stop)
    assert "".join(json.loads(e)["choices"][0]["text"] for e in streamed[:-1]) == first["text"]


def test_a_long_request_outlives_the_servers_disconnect_checks(server):
    """The server looks for a vanished client every half second while a request runs; a request
    far longer than that (past the block size, so every token re-encodes a window) still completes."""
    base, _, _ = server
    body = _complete(base, prompt="a", max_tokens=600, temperature=1.0, seed=3).json()
    assert body["usage"]["completion_tokens"] == 600 and body["choices"][0]["finish_reason"] == "length"


def test_concurrent_requests_share_the_batch_and_match_alone(server):
    base, _, _ = server
    prompts = [f"{name}:" for name in ("ROMEO", "JULIET", "First Citizen", "All", "MENENIUS", "A", "B", "C")]
    alone = {p: _complete(base, prompt=p, max_tokens=48, temperature=0).json()["choices"][0]["text"] for p in prompts}
    results = {}

    def ask(p):
        results[p] = _complete(base, prompt=p, max_tokens=48, temperature=0).json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    metrics = httpx.get(f"{base}/metrics").text
    mean = float(re.search(r"^apt_serve_mean_batch_size (\S+)$", metrics, re.M).group(1))
    assert mean > 1.0, metrics
    assert re.search(r'^apt_serve_requests_total\{code="200"\} \d+$', metrics, re.M)
    assert re.search(r"^apt_serve_queue_depth 0$", metrics, re.M)


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    base, proc, _ = server
    with httpx.stream("POST", f"{base}/v1/completions", timeout=60,
                      json={"prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in got)
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/health").json()["batch_size"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{base}/health").json()["batch_size"] == 0
    assert proc.poll() is None
    assert _complete(base, prompt="x", max_tokens=3).status_code == 200


@pytest.mark.parametrize("body, status, param", [
    (b'{"prompt": "a", ', 400, None),
    (b'[1, 2]', 400, None),
    (b'{"prompt": "a", "temperature": 5}', 400, "temperature"),
    (b'{"prompt": "a", "max_tokens": -1}', 400, "max_tokens"),
    (b'{"prompt": "a", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": "a", "n": 0}', 400, "n"),
    (b'{"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}', 400, "stop"),
    (b'{"prompt": 12}', 400, "prompt"),
    (b'{"prompt": "\\u00e9\\u20ac"}', 400, "prompt"),
    (b'{"prompt": "a", "model": "gpt-4"}', 404, "model"),
])
def test_bad_requests_get_4xx_in_openais_error_shape(server, body, status, param):
    base, proc, _ = server
    r = httpx.post(f"{base}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param
    assert proc.poll() is None


def test_the_openai_client_works_unchanged(server):
    openai = pytest.importorskip("openai")
    base, _, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny_debug"]
    done = client.completions.create(model="tiny_debug", prompt="ROMEO:", max_tokens=10, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 10
    stream = client.completions.create(model="tiny_debug", prompt="ROMEO:", max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == done.choices[0].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny_debug", prompt="ROMEO:", temperature=9)


def test_without_fastapi_the_core_imports_and_serve_says_what_to_install(tmp_path):
    code = (
        "import sys\n"
        "for name in ('fastapi', 'uvicorn'):\n"
        "    sys.modules[name] = None\n"
        "import apt, apt.serve, apt.cli.serve\n"
        "from apt.cli import main\n"
        "sys.exit(main(['serve', '--checkpoint', 'nowhere']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "apt: error: apt serve needs FastAPI and uvicorn (fastapi is missing): pip install 'apt-core[serve]'"]


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny_profile):
    import queue

    import torch

    from apt.generate import Sampling, Sequence
    from apt.model import ModelBuilder
    from apt.serve import Engine, Job
    from apt.tokenizers import ByteTokenizer

    torch.manual_seed(0)
    tok = ByteTokenizer()
    engine = Engine(ModelBuilder(tiny_profile, tok.vocab_size).build().model, tok, 2)
    real_step, calls = engine.batcher.decoder.step, []

    def flaky(rows, tokens):
        calls.append(rows)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_step(rows, tokens)

    engine.batcher.decoder.step = flaky
    engine.start()
    try:
        events = queue.Queue()

        def job(prompt):
            seqs = [Sequence(tok.encode(prompt), max_new_tokens=8, sampling=Sampling(0.0), seed=0)]
            return Job(seqs, events.put)

        engine.submit(job("first"))
        got = [events.get(timeout=30)]
        while got[-1][0] != "error":
            got.append(events.get(timeout=30))
        assert got[-1] == ("error", "generation failed: RuntimeError: device lost") and len(got) <= 3
        engine.submit(job("second"))
        texts = []
        while True:
            kind, _, delta, reason = events.get(timeout=30)
            texts.append(delta)
            if reason:
                break
        assert reason == "length" and len("".join(texts)) > 0
        assert engine.counters["failed_batches"] == 1 and not engine.batcher.active
    finally:
        engine.stop()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--sandbox"], "--sandbox only applies with --vote"),
    (["--vote-threshold", "1"], "--vote-threshold only applies with --vote"),
    (["--retriever", "bm25"], "--retriever needs --index INDEX"),
    (["--passages", "0", "--index", "x"], "--passages must be >= 1"),
])
def test_retrieval_and_vote_flags_are_checked_as_generate_checks_them(checkpoint, args, fragment):
    root, env, ckpt = checkpoint
    assert_one_line_error(run(["serve", "--checkpoint", str(ckpt), *args], env=env, cwd=root), fragment)
