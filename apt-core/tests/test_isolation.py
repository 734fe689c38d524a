import sys

import pytest

from apt.errors import AptError
from apt.isolation import call_data_hook
from apt.providers import EmptyConfig, VoterProvider


class Voter(VoterProvider):
    name = "probe"
    vote_hook = "os:getenv"

    def build(self):
        return None


class SandboxedVoter(Voter):
    sandbox = "required"


def test_allowed_hooks_run_in_process_unless_asked(apt_home):
    assert call_data_hook(Voter(EmptyConfig()), "os:getenv", "APT_HOME") == str(apt_home)


def test_required_hooks_run_in_the_sandbox_with_a_scrubbed_environment(apt_home):
    pytest.importorskip("apt_sandbox")
    assert call_data_hook(SandboxedVoter(EmptyConfig()), "os:getenv", "APT_HOME") is None
    assert call_data_hook(Voter(EmptyConfig()), "os:getenv", "APT_HOME", sandboxed=True) is None


def test_required_sandbox_missing_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "apt_sandbox", None)
    with pytest.raises(AptError, match=r"voter.probe must run in a sandbox \(its package requires a sandbox\): "
                                       r"pip install apt-sandbox"):
        call_data_hook(SandboxedVoter(EmptyConfig()), "os:getenv", "APT_HOME")
