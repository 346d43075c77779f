"""The lab's Postfix instances, their pure parts (issue 20, item 3): the config an instance gets, and how the mail
log's and the queue's words are read. The real Postfix runs in tests/integration/test_lab_mta.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.errors import UserError
from enforcer.lab import mta

INSTANCE = mta.Instance(Path("/run/enforcer-lab"), "shop-web")
RELAY = mta.RelayHost(587, "lab", "lab-relay", "/run/enforcer-lab/tls/relay.pem")


def settings(text: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))


def test_a_direct_instance_delivers_by_mx_with_its_own_files_and_no_local_mail():
    said = settings(mta.main_cf(INSTANCE, {4, 6}, None))
    assert said["config_directory"] == "/run/enforcer-lab/postfix/shop-web/etc"
    assert said["queue_directory"] == "/run/enforcer-lab/postfix/shop-web/queue"
    assert said["maillog_file"] == "/run/enforcer-lab/postfix-logs/shop-web.log"
    assert said["maillog_file_prefixes"] == "/run/enforcer-lab/postfix-logs"
    assert said["myhostname"] == "shop-web.lab" and said["mydestination"] == ""
    assert said["inet_interfaces"] == "loopback-only" and said["inet_protocols"] == "all"
    assert said["smtp_connect_timeout"] == mta.CONNECT_TIMEOUT
    assert "relayhost" not in said and "smtp_sasl_auth_enable" not in said


@pytest.mark.parametrize(("families", "protocols"), [({4}, "ipv4"), ({6}, "ipv6"), ({4, 6}, "all")])
def test_an_instance_speaks_the_families_its_host_has(families, protocols):
    assert settings(mta.main_cf(INSTANCE, families, None))["inet_protocols"] == protocols


def test_through_the_relay_an_instance_logs_in_only_over_tls_it_checked():
    said = settings(mta.main_cf(INSTANCE, {4}, RELAY))
    assert said["relayhost"] == "[relay.lab]:587"
    assert said["smtp_sasl_auth_enable"] == "yes" and said["smtp_sasl_security_options"] == "noanonymous"
    assert said["smtp_sasl_password_maps"] == "texthash:/run/enforcer-lab/postfix/shop-web/etc/sasl_passwd"
    assert said["smtp_tls_security_level"] == "secure" and said["smtp_tls_CAfile"] == RELAY.ca


def test_no_service_runs_chrooted():
    for line in mta.MASTER_CF.splitlines():
        assert line.split()[4] == "n", line  # the chroot column: the lab's files are outside any chroot


@pytest.mark.parametrize(("reason", "port", "block"), [
    ("connect to mx.lab[198.19.25.25]:25: Connection timed out", 25, True),
    ("delivery temporarily suspended: connect to mx.lab[2001:db8:ffff::25]:25: Connection timed out", 25, True),
    ("connect to relay.lab[198.19.25.25]:587: Connection refused", 587, False),
    ("SASL authentication failed; server relay.lab[198.19.25.25] said: 535 5.7.8 Authentication credentials "
     "invalid", None, False),
    ("Host or domain name not found. Name service error for name=gmail.com type=MX: Host not found, try again",
     None, False),
])
def test_a_deferral_is_the_block_only_when_it_is_a_time_out(reason, port, block):
    means, said_port = mta.deferral(reason)
    assert said_port == port
    assert ("how the provider's block looks" in means) == block


LOG = """\
Dec 07 07:10:45 shop-web postfix/qmgr[27296]: 3B89022A710: from=<app@shop-web.lab>, size=395, nrcpt=1 (queue active)
Dec 07 07:10:55 shop-web postfix/smtp[27326]: 3B89022A710: to=<someone@gmail.com>, relay=none, delay=10, \
delays=0.01/0.01/10/0, dsn=4.4.1, status=deferred (connect to mx.lab[198.19.25.25]:25: Connection timed out)
Dec 07 07:10:56 shop-web postfix/smtp[27327]: 4C00000A710: to=<other@gmail.com>, relay=mx.lab[198.19.25.25]:25, \
delay=1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 OK delivered)
Dec 07 07:11:02 shop-web postfix/smtp[27380]: 3B89022A710: to=<someone@gmail.com>, relay=relay.lab[198.19.25.25]:587, \
delay=17, delays=17/0.03/0.01/0, dsn=2.0.0, status=sent (250 OK delivered)
"""


def test_a_messages_attempts_are_read_from_the_mail_log_in_order():
    first, second = mta.deliveries(LOG, "3B89022A710")
    assert (first.status, first.relay, first.port) == ("deferred", "none", 25)
    assert first.said == "connect to mx.lab[198.19.25.25]:25: Connection timed out"
    assert (second.status, second.port) == ("sent", 587)
    assert [d.port for d in mta.deliveries(LOG, "4C00000A710")] == [25]
    assert mta.deliveries(LOG, "NOSUCH") == []


def test_the_queue_id_comes_from_postfixs_answer():
    assert mta.queue_id("<-  250 2.0.0 Ok: queued as 3B89022A710\n -> QUIT") == "3B89022A710"
    assert mta.queue_id("<** 554 5.7.1 Relay access denied") is None


def test_a_lab_directory_postfix_cannot_reach_is_refused_in_one_line(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(UserError, match=r"cannot reach .*closed/lab: .*closed lets no one else through \(mode 700\)"):
        mta.reachable(closed / "lab")
