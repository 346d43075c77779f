#!/usr/bin/env bash
# Installs what port25-enforcer needs on Debian 12, as root, idempotently: the system packages (kernel tools, the
# libnetfilter_queue headers that the netfilterqueue binding compiles against) and a virtual environment in .venv
# holding the project in editable mode, with the [etcd] extra (an etcd state: --state etcd://...). That is all the daemon and `enforcer lab demo` need (unbound: the lab's DNS).
# --test adds what the tests need: Vagrant, its libvirt plugin, libvirt and qemu (the Vagrant lab boots real VMs),
# mmdebstrap and e2fsprogs (they build the VMs' box from Debian packages), rsync and ssh (the synced folder, the
# tests' commands), the shell linter, systemd (systemd-analyze verifies the unit), prometheus (with promtool: the
# metrics and the alert rules are checked by the real ones), lintian and libyaml-dev (the Debian package is built
# and checked), bind9-dnsutils (dig: the lab's DNS is asked from inside its VMs), etcd-server and etcd-client (the
# etcd state's tests start their own etcd processes on loopback; nothing is enabled: no systemd runs them here) and
# the [test,dev] extras (pytest, the build backend, the linters); and what --mta adds.
# --mta adds Debian's Postfix and swaks, for `enforcer lab mta` and `lab demo --mta` (a real MTA inside lab hosts).
# Postfix comes preseeded as "No configuration": no system mail server is set up or started on this machine; the lab
# runs instances of its own. (On a machine with another MTA, apt replaces it: the reason this is not the default.)
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: $0 [--test] [--mta]"
with_tests=0
with_mta=0
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=1; with_mta=1 ;;
        --mta) with_mta=1 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "install.sh: unknown argument '$arg'; $usage" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it installs Debian packages): sudo $0 $*" >&2
    exit 2
fi

packages=(
    python3 python3-venv python3-dev gcc make pkg-config
    libnetfilter-queue-dev libnfnetlink-dev
    iproute2 iptables ipset nftables conntrack procps openssl unbound
)
extras="[etcd]"
if [ "$with_tests" -eq 1 ]; then
    packages+=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
               qemu-system-x86 qemu-utils dnsmasq-base mmdebstrap e2fsprogs rsync openssh-client shellcheck systemd
               prometheus lintian libyaml-dev bind9-dnsutils etcd-server etcd-client)
    extras="[test,dev,etcd]"
fi
if [ "$with_mta" -eq 1 ]; then
    # libsasl2-modules: Postfix's SASL client (PLAIN, LOGIN); the Perl modules: swaks's --tls, --auth and MX lookups
    packages+=(postfix libsasl2-modules swaks libnet-ssleay-perl libauthen-sasl-perl libnet-dns-perl
               libio-socket-inet6-perl)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
# the bytecode of every module, now: a shell with PYTHONDONTWRITEBYTECODE would otherwise compile them at every
# command (+50 ms a command)
.venv/bin/python -m compileall -q enforcer
if [ "$with_tests" -eq 1 ]; then
    echo "install.sh: ready: .venv/bin/python -m pytest"
else
    echo "install.sh: ready: .venv/bin/enforcer lab demo (the tests need ./scripts/install.sh --test)"
fi
