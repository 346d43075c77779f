"""The fleet soak's bookkeeping (benchmarks/fleet_soak.py): which verdict a probe has at a generation, and which
command gives it the other one. The soak itself runs real gateways; its verdict on a burst rests on these."""

from benchmarks.fleet_soak import INITIAL, PROBE, History, change_of
from enforcer.core import lifecycle


def test_a_generation_has_the_verdicts_of_the_last_change_at_or_before_it():
    history = History()
    history.record(10, {"devtest-vm": False})
    history.record(14, {"devtest-vm": True})
    history.record(20, {"devtest-vm": False})
    assert history.at(9) is None  # before the soak's first read: no single right verdict
    assert history.at(10) == {"devtest-vm": False}
    assert history.at(13) == {"devtest-vm": False}
    assert history.at(14) == {"devtest-vm": True}
    assert history.at(19) == {"devtest-vm": True}
    assert history.at(99) == {"devtest-vm": False}


def test_a_record_is_a_copy_not_the_soaks_live_dict():
    verdicts, history = {"mcae-vm": True}, History()
    history.record(1, verdicts)
    verdicts["mcae-vm"] = False
    assert history.at(1) == {"mcae-vm": True}


def test_each_probe_flips_both_ways():
    assert set(PROBE.values()) == set(INITIAL)
    for probe in INITIAL:
        assert change_of(probe, True)[-1][1:] != change_of(probe, False)[-1][1:] or probe == "devtest-vm"
    assert [step[1:] for step in change_of("mcae-vm", False)] == [(lifecycle.stop, ("mcae-vm",))]
    # the Dev/Test VM the platform's way: the exemption, then the restart that picks it up (its ASE is never
    # restarted, so keeps the policy it pulled: the steady blocked source behind that gateway)
    assert [step[1:] for step in change_of("devtest-vm", True)] == [
        (lifecycle.run_diagnostic, ("devtest-lab",)), (lifecycle.restart, ("devtest-vm",))]
    assert [step[1:] for step in change_of("devtest-vm", False)] == [
        (lifecycle.revoke_exemption, ("devtest-lab",)), (lifecycle.restart, ("devtest-vm",))]
