#!/usr/bin/env bash
# Prepares this host for the Vagrant lab (libvirt), as root; idempotent, run before every `vagrant up`:
#   1. routes every lab range to `unreachable` in the host's own table, so that nothing addressed to a lab
#      machine can leave through the default route (198.18.0.0/15, 2001:db8::/32 and any range given);
#   2. makes libvirt usable where PID 1 is not systemd: /dev/kvm group kvm, mode 0660 (or libvirt re-probes
#      qemu on every call), then virtlogd and libvirtd;
#   3. defines the isolated management network p25-mgmt (DHCP with a fixed address per machine, no DNS, no
#      router handed out, no forwarding): SSH reaches each machine there, at the address the Vagrantfile sets;
#   4. finds whether KVM can boot the lab box's kernel, and writes the libvirt driver to use (kvm, or qemu:
#      software emulation) to vagrant/.vagrant/p25-libvirt-driver, which the Vagrantfile reads;
#   5. builds the project and its dependencies as wheels into vagrant/.wheels (with the checkout's .venv, or
#      P25_PYTHON): the gateway installs them with no index, as the lab's machines have no internet.
# libvirt's own `default` network (NAT to the outside) is never started.
#
#   vagrant/host/prepare.sh [--box NAME] [EXTRA_RANGE ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lab_dir=$(dirname "$here")

usage="usage: $0 [--box NAME] [EXTRA_RANGE ...]"
box=${P25_BOX:-p25/bookworm}
ranges=(198.18.0.0/15 2001:db8::/32)
while [ $# -gt 0 ]; do
    case $1 in
        --box) box=${2:?$usage}; shift 2 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        -*) echo "prepare.sh: unknown option '$1'; $usage" >&2; exit 2 ;;
        *) ranges+=("$1"); shift ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "prepare.sh: run as root (it changes routes and starts libvirt): sudo $0" >&2
    exit 2
fi

# 1. Routes first: before libvirt or Vagrant can send anything.
for range in "${ranges[@]}"; do
    if [[ $range == *:* ]]; then family=-6; else family=-4; fi
    ip "$family" route replace unreachable "$range"
done
echo "prepare.sh: unreachable on this host: ${ranges[*]}"

# 2. libvirt
for tool in virsh libvirtd virtlogd qemu-system-x86_64; do
    command -v "$tool" >/dev/null || { echo "prepare.sh: $tool is missing; run: scripts/install.sh --test" >&2; exit 2; }
done
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi
# libvirt's `default` network forwards and masquerades to the outside: it must never start with libvirtd.
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
if [ "$(cat /proc/1/comm)" = systemd ]; then
    systemctl start virtlogd.service libvirtd.service
else
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
fi
virsh=(virsh --quiet --connect qemu:///system)
for _ in $(seq 50); do
    "${virsh[@]}" version >/dev/null 2>&1 && break
    sleep 0.2
done
"${virsh[@]}" version >/dev/null

# 3. The management network: machine N of the Vagrantfile (from 0) has MAC 52:54:00:19:fe:NN and address
#    198.19.254.(10+N) (P25Lab.management in the Vagrantfile).
if ! "${virsh[@]}" net-info p25-mgmt >/dev/null 2>&1; then
    xml=$(mktemp)
    {
        echo "<network><name>p25-mgmt</name><bridge name='p25mgmt0' stp='off'/><dns enable='no'/>"
        echo "<ip address='198.19.254.1' netmask='255.255.255.0'><dhcp>"
        for n in $(seq 0 239); do
            printf "<host mac='52:54:00:19:fe:%02x' ip='198.19.254.%d'/>\n" "$n" $((10 + n))
        done
        echo "</dhcp></ip></network>"
    } >"$xml"
    "${virsh[@]}" net-define "$xml" >/dev/null
    rm -f "$xml"
fi
if ! "${virsh[@]}" net-info p25-mgmt | grep '^Active: *yes$' >/dev/null; then
    "${virsh[@]}" net-start p25-mgmt >/dev/null
fi
echo "prepare.sh: management network p25-mgmt (198.19.254.0/24, isolated) is up"

# 4. KVM or software emulation: the box's own kernel, booted with no root file system, must reach its panic
#    (a working KVM takes about a second; a paravirtual KVM that cannot run it hangs or aborts).
box_dir=${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${box//\//-VAGRANTSLASH-}
kernel=
# A box not built yet (a fresh machine) is no error here: find must not end the script under pipefail.
if [ -d "$box_dir" ]; then
    kernel=$(find "$box_dir" -name vmlinuz -print -quit)
fi
driver=qemu
if [ -z "$kernel" ]; then
    echo "prepare.sh: box $box not found (build it: vagrant/box/build.sh); assuming software emulation" >&2
elif [ -w /dev/kvm ] && timeout 20 qemu-system-x86_64 -accel kvm -m 256 -nographic -no-reboot -kernel "$kernel" \
        -append "console=ttyS0 panic=-1 root=/dev/p25-none" 2>&1 | grep "Kernel panic" >/dev/null; then
    driver=kvm
fi
mkdir -p "$lab_dir/.vagrant"
echo "$driver" >"$lab_dir/.vagrant/p25-libvirt-driver"
echo "prepare.sh: libvirt driver: $driver$([ "$driver" = qemu ] && echo " (software emulation: KVM cannot boot the box here)")"

# 5. The project for the gateway, as wheels.
project=$(dirname "$lab_dir")
python=${P25_PYTHON:-$project/.venv/bin/python}
if [ -f "$project/pyproject.toml" ] && [ -x "$python" ]; then
    rm -rf "$lab_dir/.wheels.new"
    "$python" -m pip wheel --quiet --disable-pip-version-check -w "$lab_dir/.wheels.new" "$project"
    rm -rf "$lab_dir/.wheels"
    mv "$lab_dir/.wheels.new" "$lab_dir/.wheels"
    echo "prepare.sh: wheels for the gateway in $lab_dir/.wheels ($(find "$lab_dir/.wheels" -name '*.whl' | wc -l) files)"
else
    echo "prepare.sh: no checkout with a .venv at $project (set P25_PYTHON): the gateway will need the internet" >&2
fi
