"""A real MTA behind the block: Debian's Postfix on a Pay-As-You-Go VM of the lab defers mail to gmail.com (port 25
times out), and delivers it through the authenticated relay once `relayhost` points there. Needs postfix and swaks
(apt-get install postfix swaks)."""

import shutil
import time

import pytest

pytestmark = pytest.mark.skipif(not (shutil.which("postfix", path="/usr/sbin:/usr/bin") and shutil.which("swaks")),
                                reason="needs Debian's postfix and swaks: apt-get install postfix swaks")


def wait_for(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.2)
    return found


def test_postfix_defers_on_port_25_then_delivers_through_the_relay(port25_lab):
    port25_lab.postfix("shop-web")  # by MX, as a fresh Postfix does
    sent = port25_lab.run("shop-web", ["swaks", "--server", "127.0.0.1", "--to", "frank@gmail.com"],
                          capture_output=True, text=True, timeout=60)
    assert "queued as" in sent.stdout

    def deferred():
        return [r["delay_reason"] for m in port25_lab.postfix_queue("shop-web") for r in m["recipients"]
                if "delay_reason" in r]
    [reason] = wait_for(deferred)
    assert ":25: Connection timed out" in reason  # what the mail log says in production
    mailq = port25_lab.run("shop-web", ["mailq"], capture_output=True, text=True, timeout=60).stdout
    assert "frank@gmail.com" in mailq and "Connection timed out" in mailq  # the host's own Postfix, as on the VM

    port25_lab.postfix("shop-web", relay=True)  # relayhost = [relay.lab]:587, SASL, TLS required; retried at once
    [mail] = wait_for(lambda: [m for m in port25_lab.mail if "frank@gmail.com" in m["to"]])
    assert mail["port"] == 587 and mail["authenticated"]
    assert port25_lab.postfix_queue("shop-web") == []
