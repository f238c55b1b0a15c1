"""worldmodel.interrupts.StopRequest: the first SIGINT/SIGTERM asks the run to stop after the step
under way; a second stops at once, without saving."""

import os
import signal

import pytest

from worldmodel.interrupts import StopRequest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_requests_a_stop_and_a_second_stops_at_once(sig):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt, match=f"{sig.name} again: stopped without saving"):
        with StopRequest() as stop:
            os.kill(os.getpid(), sig)
            assert stop.requested == sig.name  # (the step under way goes on)
            os.kill(os.getpid(), sig)
            pytest.fail("the second signal did not stop at once")
    assert signal.getsignal(sig) is before  # the handlers put back


def test_no_signal_no_request_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) is not before
    assert stop.requested is None and signal.getsignal(signal.SIGINT) is before
