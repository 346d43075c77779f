"""The daemon's `explain` on its control socket: what a queue worker asks instead of reading an etcd state itself
(a worker forked from a process running gRPC must not open a channel: worker.AskTheDaemon)."""

from support.states import lab_state
from enforcer.dataplane.daemon import Daemon
from enforcer.dataplane.worker import AskTheDaemon, explainer_for, Explainer
from enforcer.state.settings import Settings


def test_explain_names_the_resource_and_its_reason(tmp_path):
    lab_state(tmp_path / "state.db").close()
    daemon = Daemon(Settings(state=str(tmp_path / "state.db"), socket=str(tmp_path / "c.sock")))
    answer = daemon.handle({"cmd": "explain", "address": "198.18.2.10"})
    assert answer["ok"] and answer["resource"] == "shop-web" and "Pay-As-You-Go" in answer["reason"], answer
    assert daemon.handle({"cmd": "explain", "address": "198.19.99.99"})["resource"] is None


def test_explain_refuses_what_is_not_an_address(tmp_path):
    daemon = Daemon(Settings(state=str(tmp_path / "state.db"), socket=str(tmp_path / "c.sock")))
    for bad in ("shop-web", None, 7, "198.18.2.10; rm", "x" * 10_000):
        answer = daemon.handle({"cmd": "explain", "address": bad})
        assert answer["ok"] is False and "not an address" in answer["error"] and len(answer["error"]) < 100


def test_a_worker_on_an_etcd_state_asks_the_daemon(tmp_path):
    etcd = Settings(state="etcd://127.0.0.1:2379/lab", socket=str(tmp_path / "c.sock"))
    assert isinstance(explainer_for(etcd, None), AskTheDaemon)
    assert isinstance(explainer_for(Settings(state=str(tmp_path / "s.db")), None), Explainer)
    # no daemon answering: the drop log says why it has no explanation, and the worker goes on
    resource, reason = explainer_for(etcd, None)(bytes([198, 18, 2, 10]))
    assert resource is None and "the daemon did not answer" in reason
