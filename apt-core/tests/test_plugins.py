import pytest

from apt.errors import PluginHookError
from apt.hookspecs import hookimpl
from apt.plugins import PluginHost


class Recorder:
    def __init__(self, log, tag):
        self.log, self.tag = log, tag

    @hookimpl
    def apt_step_end(self, step, metrics):
        self.log.append((self.tag, step))
        metrics[self.tag] = step


class Exploding:
    @hookimpl
    def apt_step_end(self, step):
        raise ValueError(f"boom at {step}")

    @hookimpl
    def apt_state_dict(self):
        return {"x": 1}


def test_failing_plugin_is_disabled_others_keep_running():
    log, failures = [], []
    host = PluginHost(on_failure=lambda name, hook, err, tb: failures.append((name, hook, str(err), "boom" in tb)))
    host.register(Recorder(log, "a"), "a")
    host.register(Exploding(), "bad")
    host.register(Recorder(log, "b"), "b")
    metrics = {}
    host.call("apt_step_end", trainer=None, step=1, metrics=metrics)
    host.call("apt_step_end", trainer=None, step=2, metrics=metrics)
    assert sorted(log) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert metrics == {"a": 2, "b": 2}
    assert failures == [("bad", "apt_step_end", "boom at 1", True)]
    assert "bad" in host.disabled and "bad" not in host.names()


def test_required_plugin_failure_stops():
    host = PluginHost(required={"bad"})
    host.register(Exploding(), "bad")
    with pytest.raises(PluginHookError, match="required plugin 'bad' failed in apt_step_end"):
        host.call("apt_step_end", trainer=None, step=1, metrics={})


def test_results_by_plugin_and_misspelled_hooks_rejected():
    host = PluginHost()
    host.register(Exploding(), "bad")
    assert host.call_each("apt_state_dict", trainer=None) == {"bad": {"x": 1}}

    class Typo:
        @hookimpl
        def apt_stepend(self):
            return None

    with pytest.raises(Exception, match="apt_stepend"):
        host.register(Typo(), "typo")
