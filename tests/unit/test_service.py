"""The systemd unit and the daemon's config file."""

import os
import shutil
import subprocess

import pytest

from support.paths import ROOT
from enforcer.cli.main import main

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (./scripts/install.sh --test installs it)")


@needs_systemd_analyze
def test_installed_unit_passes_systemd_analyze_verify(tmp_path, capsys):
    assert main(["service", "install", "--root", str(tmp_path)]) == 0
    unit = tmp_path / "etc/systemd/system/enforcer.service"
    text = unit.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "ExecReload=" in text
    assert "Restart=on-failure" in text and "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
    # a dedicated system user holding CAP_NET_ADMIN alone, system calls filtered, no IP peer but this host
    for line in ("User=enforcer", "Group=enforcer", "CapabilityBoundingSet=CAP_NET_ADMIN\n",
                 "AmbientCapabilities=CAP_NET_ADMIN\n", "SystemCallFilter=@system-service", "IPAddressDeny=any",
                 "ReadWritePaths=-/var/lib/enforcer", "RuntimeDirectory=enforcer", "ConfigurationDirectory=enforcer"):
        assert line in text, line
    # StateDirectory= would give the state's directory to the service user, and root's commands would refuse it
    assert "\nStateDirectory=" not in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert (tmp_path / "etc/enforcer/enforcer.toml").read_text() == (ROOT / "systemd/enforcer.toml").read_text()


def test_install_never_overwrites_the_config(tmp_path, capsys):
    config = tmp_path / "etc/enforcer/enforcer.toml"
    config.parent.mkdir(parents=True)
    config.write_text("queue = 30\n")
    assert main(["service", "install", "--root", str(tmp_path)]) == 0
    assert config.read_text() == "queue = 30\n"
    assert "kept" in capsys.readouterr().out


def test_install_refuses_to_replace_a_changed_unit_without_force(tmp_path, capsys):
    assert main(["service", "install", "--root", str(tmp_path)]) == 0
    unit = tmp_path / "etc/systemd/system/enforcer.service"
    unit.write_text(unit.read_text() + "# local change\n")
    assert main(["service", "install", "--root", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["service", "install", "--root", str(tmp_path), "--force"]) == 0
    assert "# local change" not in unit.read_text()


def test_shipped_config_documents_every_key_and_loads(tmp_path, capsys):
    """Every key `enforcer run` reads is in the shipped file, and the file itself passes validation."""
    from enforcer.state.settings import BY_NAME, ETCD_KEYS
    text = (ROOT / "systemd/enforcer.toml").read_text()
    for key in ["state", *BY_NAME, *ETCD_KEYS]:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key
    # the daemon's preflight stops it later (no state here); the config itself must pass
    code = main(["--state", str(tmp_path / "none.db"), "run", "--config", str(ROOT / "systemd/enforcer.toml")])
    err = capsys.readouterr().err
    assert code == 2 and "enforcer.toml" not in err


@pytest.mark.parametrize("text, message", [
    ("queue = 70000\n", "queue: 70000 is not in the range"),
    ("colour = 1\n", "unknown key 'colour'"),
    ('when_down = "maybe"\n', "when_down: 'maybe' is not one of 'block', 'allow'"),
    ("check_interval = 0\n", "check_interval"),
    ('kernel_cache = "maybe"\n', "kernel_cache: 'maybe' is not a valid boolean"),
    ("kernel_cache_timeout = 0\n", "kernel_cache_timeout: 0 is not in the range 1<=x<=86400"),
    ("kernel_cache_timeout = 86401\n", "kernel_cache_timeout: 86401 is not in the range 1<=x<=86400"),
    ('kernel_cache_timeout = "soon"\n', "kernel_cache_timeout: 'soon' is not a valid integer"),
    ("state = 5\n", "state: expected a path"),
    ("etcd_user = 7\n", "etcd_user: expected a string"),
    ("queue = \n", "not valid TOML"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    config = tmp_path / "enforcer.toml"
    config.write_text(text)
    assert main(["--state", str(tmp_path / "s.db"), "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and err.count("\n") == 1


@pytest.mark.parametrize("config, options, cache, timeout", [
    ("", [], False, 300),
    ("", ["--kernel-cache"], True, 300),
    ("kernel_cache = true\nkernel_cache_timeout = 30\n", [], True, 30),
    ("kernel_cache = true\nkernel_cache_timeout = 30\n", ["--no-kernel-cache", "--kernel-cache-timeout", "2"],
     False, 2),
])
def test_kernel_cache_settings_from_the_option_over_the_file(tmp_path, monkeypatch, config, options, cache, timeout):
    """--kernel-cache/--no-kernel-cache and --kernel-cache-timeout reach the daemon's Settings, an option given on
    the command line over the file's key."""
    seen = []

    class Daemon:
        def __init__(self, settings):
            seen.append(settings)

        def run(self):
            return 0
    monkeypatch.setattr("enforcer.dataplane.daemon.Daemon", Daemon)
    path = tmp_path / "enforcer.toml"
    path.write_text(config)
    assert main(["--state", str(tmp_path / "s.db"), "run", "--config", str(path), *options]) == 0
    assert (seen[0].kernel_cache, seen[0].kernel_cache_timeout) == (cache, timeout)


@pytest.mark.parametrize("options, message", [
    (["--kernel-cache-timeout", "0"], "0 is not in the range 1<=x<=86400"),
    (["--kernel-cache=yes"], "Option '--kernel-cache' does not take a value"),
])
def test_bad_kernel_cache_option_is_one_line_and_exit_2(tmp_path, capsys, options, message):
    assert main(["--state", str(tmp_path / "s.db"), "run", *options]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_install_refuses_an_executable_the_service_user_cannot_reach(capsys):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory(dir="/tmp") as base:  # pytest's own tmp_path is itself private
        os.chmod(base, 0o755)
        check_private_part(Path(base))


def check_private_part(tmp_path):
    private = tmp_path / "home"
    (private / "venv/bin").mkdir(parents=True)
    exe = private / "venv/bin/enforcer"
    exe.write_text("#!/usr/bin/python3\n")
    exe.chmod(0o755)
    private.chmod(0o700)
    from enforcer.dataplane.service import private_part
    assert private_part(str(exe)) == private
    private.chmod(0o755)
    assert private_part(str(exe)) is None
    assert private_part(str(tmp_path / "missing")) == tmp_path / "missing"


@pytest.mark.parametrize("config, options, expected", [
    ('etcd_cacert = "/etc/enforcer/etcd/ca.pem"\netcd_user = "gateway"\n', [],
     ("/etc/enforcer/etcd/ca.pem", None, "gateway")),
    ('etcd_cacert = "/from/file.pem"\netcd_cert = "/c.pem"\n', ["--etcd-cacert", "/from/option.pem"],
     ("/from/option.pem", "/c.pem", None)),
    ("", [], (None, None, None)),
])
def test_etcd_settings_from_the_option_over_the_file(tmp_path, monkeypatch, config, options, expected):
    """The config file's etcd_* keys reach the daemon's etcd options; a global --etcd-* option over the key."""
    seen = []

    class Daemon:
        def __init__(self, settings, etcd=None):
            seen.append(etcd)

        def run(self):
            return 0
    monkeypatch.setattr("enforcer.dataplane.daemon.Daemon", Daemon)
    path = tmp_path / "enforcer.toml"
    path.write_text(config)
    assert main([*options, "--state", "etcd://127.0.0.1:2379/lab", "run", "--config", str(path)]) == 0
    assert (seen[0].cacert, seen[0].cert, seen[0].user) == expected


def test_an_etcd_password_in_the_config_is_refused(tmp_path, capsys):
    path = tmp_path / "enforcer.toml"
    path.write_text('etcd_password = "secret"\n')
    assert main(["--state", "etcd://127.0.0.1:2379/lab", "run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'etcd_password'" in err and "etcd_user" in err and err.count("\n") == 1
