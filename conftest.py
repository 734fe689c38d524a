"""Suite-wide setup, loaded for every test folder (this is the rootdir).

A shell without job control starts background commands with SIGINT ignored, and an ignored
signal stays ignored in every child; the tests that press Ctrl-C on an ``apt`` process (or on
themselves) need it delivered however the suite was launched.
"""

import signal


def pytest_configure(config):
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
