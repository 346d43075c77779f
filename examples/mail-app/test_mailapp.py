"""The mail app's tests, run inside port25-enforcer's lab (the port25_lab fixture): as root, `python -m pytest`."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def send_from(lab, host: str, to: str):
    """Run the app on a lab host, configured with the lab's relay; what it printed (the route)."""
    relay = lab.relay
    done = lab.run(host, [sys.executable, "-m", "mailapp", "--to", to, "--timeout", "2"], cwd=HERE,
                   capture_output=True, text=True, timeout=60,
                   env={"MAILAPP_RELAY": f"{relay.host}:{relay.port}", "MAILAPP_RELAY_USER": relay.user,
                        "MAILAPP_RELAY_PASSWORD": relay.password, "MAILAPP_RELAY_CA": relay.ca})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def arrived(lab, to: str):
    return [m for m in lab.mail if to in m["to"]]


def test_my_app_falls_back_to_the_relay_when_port_25_is_blocked(port25_lab):
    # shop-web is a Pay-As-You-Go VM: Azure drops its SYNs to port 25
    assert send_from(port25_lab, "shop-web", "alice@gmail.com") == "relay relay.lab:587"
    [mail] = arrived(port25_lab, "alice@gmail.com")
    assert mail["port"] == 587 and mail["authenticated"]


def test_my_app_delivers_directly_where_port_25_is_open(port25_lab):
    # ea-vm is an Enterprise Agreement VM: port 25 is open
    assert send_from(port25_lab, "ea-vm", "bob@gmail.com").startswith("direct to")
    [mail] = arrived(port25_lab, "bob@gmail.com")
    assert mail["port"] == 25


def test_after_the_exemption_and_a_restart_port_25_works(port25_lab):
    # Enterprise Dev/Test: blocked until the diagnostic grants the exemption, which a running VM only picks up
    # when it is stopped, deallocated and started again
    assert send_from(port25_lab, "devtest-vm", "carol@gmail.com") == "relay relay.lab:587"
    port25_lab.change("diagnose", "devtest-lab")
    assert send_from(port25_lab, "devtest-vm", "dave@gmail.com") == "relay relay.lab:587"  # still the old policy
    port25_lab.change("vm", "restart", "devtest-vm")
    assert send_from(port25_lab, "devtest-vm", "erin@gmail.com").startswith("direct to")
    assert [m["port"] for m in arrived(port25_lab, "erin@gmail.com")] == [25]


@pytest.mark.parametrize("port", [465, 587])
def test_the_submission_ports_are_open_even_for_a_blocked_vm(port25_lab, port):
    assert port25_lab.smtp("shop-web", port)["outcome"] == "delivered"
