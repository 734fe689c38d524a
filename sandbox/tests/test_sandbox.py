"""Functional behaviour of one-shot calls: values, tensors, isolation report, policy options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from apt_sandbox import LAYERS, STATUSES, IsolationError, Limits, RawTensor, Sandbox, check

M = "apt_sandbox_cases"


def test_issue_example_shape(sb):
    res = sb.call(f"{M}:echo", {"candidates": ["a", "b", "a"]})
    assert res.status == "ok"
    assert res.status in STATUSES
    assert res.value == {"candidates": ["a", "b", "a"]}
    assert res.traceback is None
    assert set(res.isolation) == set(LAYERS)


def test_concurrent_calls_from_a_threaded_parent(sb):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: sb.call(f"{M}:echo", i), range(8)))
    assert [r.status for r in results] == ["ok"] * 8
    assert [r.value for r in results] == list(range(8))


def test_call_without_arguments(sb):
    res = sb.call(f"{M}:no_args")
    assert res.status == "ok"
    assert res.value == "called without arguments"


def test_isolation_achieved_on_this_host_is_reported_per_run(sb):
    res = sb.call(f"{M}:environment", None)
    assert res.status == "ok"
    probe = check()["isolation"]
    assert res.isolation == probe
    if res.isolation["pid_ns"]:
        assert res.value["pid"] == 1
    if res.isolation["net_ns"]:
        assert res.value["interfaces"] == {"lo": False}
    if res.isolation["uid_drop"]:
        assert res.value["uid"] != 0


def test_missing_target_module_is_an_error(sb):
    res = sb.call("no_such_module_anywhere:fn", None)
    assert res.status == "error"
    assert "ModuleNotFoundError" in res.detail


def test_exit_without_answer_is_an_error_with_the_code(sb):
    res = sb.call(f"{M}:exit_code", 3)
    assert res.status == "error"
    assert res.exit_code == 3


def test_bad_target_and_bad_values_fail_in_the_parent(sb):
    with pytest.raises(ValueError):
        sb.call("not-a-target", None)
    with pytest.raises(TypeError):
        sb.call(f"{M}:echo", {"x": object()})
    with pytest.raises(TypeError):
        sb.call(f"{M}:echo", {1: "non-str key"})


def test_required_layer_missing_raises(make_sandbox):
    sb = make_sandbox(disable={"seccomp"}, require=["seccomp"])
    with pytest.raises(IsolationError, match="seccomp"):
        sb.call(f"{M}:no_args")


def test_unknown_layer_names_are_rejected():
    with pytest.raises(ValueError, match="unknown isolation layer"):
        Sandbox(require=["warp_drive"])
    with pytest.raises(ValueError, match="contradicts"):
        Sandbox(network=True, require=["net_ns"])


def test_weakest_configuration_still_runs_and_says_so(make_sandbox):
    every_layer = {"user_ns", "net_ns", "pid_ns", "mount_ns", "ipc_ns", "seccomp", "uid_drop"}
    res = make_sandbox(disable=every_layer).call(f"{M}:echo", 7)
    assert res.status == "ok"
    assert res.value == 7
    for layer in every_layer:
        assert res.isolation[layer] is False
    assert res.isolation["rlimits"] is True
    assert res.isolation["no_new_privs"] is True


def test_user_namespace_path_probes(make_sandbox):
    iso, notes = make_sandbox(user_namespace=True).probe()
    if not iso["user_ns"]:
        pytest.skip(f"user namespaces unavailable here: {notes.get('user_ns')}")
    assert iso["net_ns"] and iso["pid_ns"] and iso["mount_ns"]


def test_user_namespace_path_runs_code(make_sandbox):
    """The unprivileged route (uid dropped first, then a user namespace) end to end.

    It needs an interpreter the dropped uid can execute, so it uses the system
    Python rather than one that may live in root's home.
    """
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if python is None or os.path.realpath(python).startswith(("/root/", "/home/")):
        pytest.skip("no system python3 outside home directories")
    version = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 10))"], capture_output=True)
    if version.stdout.strip() != b"True":
        pytest.skip("system python3 is older than 3.10")
    sb = make_sandbox(user_namespace=True, python=python, python_path=[os.path.dirname(__file__)])
    if not sb.probe()[0]["user_ns"]:
        pytest.skip("user namespaces unavailable here")
    res = sb.call(f"{M}:environment", None)
    assert res.status == "ok"
    assert res.isolation["user_ns"] and res.isolation["pid_ns"] and res.isolation["net_ns"]
    assert res.value["pid"] == 1
    assert res.value["interfaces"] == {"lo": False}


def test_limits_validation():
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=1)
    with pytest.raises(ValueError, match="wall_seconds"):
        Limits(wall_seconds=0)
    with pytest.raises(ValueError, match="open_files"):
        Limits(open_files=True)
    assert Limits(memory_mb=None, cpu_seconds=None).rlimits(worker=False)["as"] is None
    assert Limits().rlimits(worker=True)["cpu"] is None


@pytest.fixture(scope="module")
def tensor_worker():
    sb = Sandbox(
        Limits(memory_mb=4096, wall_seconds=120),
        python_path=[os.path.dirname(__file__), *sys.path],
    )
    with sb.worker(preload=["torch", "numpy"]) as w:
        yield w


def test_tensor_round_trip_keeps_dtype_shape_and_values(tensor_worker):
    torch = pytest.importorskip("torch")
    t = torch.randn(3, 4, 5)
    res = tensor_worker.call(f"{M}:identity_tensor", None, tensors={"x": t})
    assert res.status == "ok"
    assert isinstance(res.value, torch.Tensor)
    assert res.value.dtype == torch.float32 and res.value.shape == (3, 4, 5)
    assert torch.equal(res.value, t)


def test_tensors_can_also_travel_inside_args(tensor_worker):
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    res = tensor_worker.call(f"{M}:echo", {"a": a, "b": b"bytes", "$apt": 1})
    assert res.status == "ok"
    assert np.array_equal(res.value["a"], a)
    assert res.value["b"] == b"bytes"
    assert res.value["$apt"] == 1


def test_mixed_dtypes_from_the_child(tensor_worker):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    res = tensor_worker.call(f"{M}:make_tensors", None)
    assert res.status == "ok"
    v = res.value
    assert torch.equal(v["f32"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert v["bf16"].dtype == torch.bfloat16
    assert v["bool"].tolist() == [True, False]
    assert v["empty"].shape == (0, 5)
    assert v["scalar"].item() == 3.5
    assert v["np"].dtype == np.int16 and v["np"].tolist() == [0, 1, 2, 3]
    assert v["np_be"].tolist() == [0, 1, 2]
    assert v["raw"] == b"\x00\x01\xff"
    assert v["$apt"] == "escaped key"
    assert v["nested"] == [{"$apt": "tensor", "b": 99}]


def test_tensor_decoding_without_torch_or_numpy(monkeypatch):
    from apt_sandbox import codec

    monkeypatch.setattr(codec, "torch_available", lambda: False)
    monkeypatch.setattr(codec, "numpy_available", lambda: False)
    tree = {"$apt": "tensor", "lib": "torch", "dtype": "bfloat16", "shape": [2], "b": 0}
    value = codec.decode(tree, [bytearray(b"\x80\x3f\x00\x40")])
    assert value == RawTensor("bfloat16", (2,), b"\x80\x3f\x00\x40")
