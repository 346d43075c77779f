#!/usr/bin/env bash
# Builds the lab's Vagrant box for libvirt from Debian 12 packages alone (no box download), and adds it to
# Vagrant. The lab's machines have no internet: every Debian package any of them needs is baked in here, and
# the project reaches the gateway as wheels (vagrant/box/wheels.sh).
#
#   vagrant/box/build.sh [--name NAME] [--force]     as root; ~2 minutes; default name: p25/bookworm
#
# The box boots its kernel directly (no boot loader): a raw ext4 root on /dev/vda, converted to qcow2. It has a
# `vagrant` user with Vagrant's insecure key and passwordless sudo, and systemd-networkd asking DHCP on eth0
# (the management network; the lab's networks are Vagrant's private networks on eth1 and up).
# Use it: P25_BOX=p25/bookworm vagrant up (or `box:` under `lab:` in lab.yml).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage="usage: $0 [--name NAME] [--force]"
name=p25/bookworm
force=0
while [ $# -gt 0 ]; do
    case $1 in
        --name) name=${2:?$usage}; shift 2 ;;
        --force) force=1; shift ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1'; $usage" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "build.sh: run as root (mmdebstrap builds a root file system): sudo $0" >&2
    exit 2
fi
for tool in mmdebstrap mkfs.ext4 qemu-img vagrant; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing; run: scripts/install.sh --test" >&2; exit 2; }
done
# The recipe's digest (this script and customize.sh): a box added by an older recipe (without a package the lab now
# needs, say) is built again, as the lab's machines can install nothing themselves.
recipe=$(cat "$here/build.sh" "$here/customize.sh" | sha256sum | cut -c1-16)
stamp="/var/lib/p25-box/${name//\//-}.recipe"
if [ "$force" -eq 0 ] && vagrant box list --machine-readable 2>/dev/null | grep -q ",box-name,$name\$" \
    && [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ]; then
    echo "build.sh: box $name is already added, from this recipe (rebuild: $0 --force)"
    exit 0
fi

# What the three roles run: the gateway (the enforcer: netfilterqueue's library, iptables, conntrack, a venv),
# the internet host (the SMTP sink: aiosmtpd; the lab's DNS: unbound, its config written by enforcer.lab.dns, which
# reads the lab file: python3-yaml) and the resources (the probe: scapy). Vagrant needs ssh, sudo and rsync (the
# synced folder).
packages=(
    systemd-sysv udev dbus kmod openssh-server sudo rsync iproute2 iputils-ping procps less
    linux-image-amd64 initramfs-tools
    python3 python3-venv python3-aiosmtpd python3-scapy python3-yaml unbound
    iptables nftables ipset conntrack libnetfilter-queue1 libnfnetlink0
)
key=$(dpkg -L vagrant | grep '/keys/vagrant.pub$' | head -n 1)
[ -r "$key" ] || { echo "build.sh: Vagrant's insecure public key is missing (package vagrant)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/p25-box.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir "$root"

echo "build.sh: root file system (mmdebstrap)"
mmdebstrap --quiet --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    --customize-hook="'$here/customize.sh' \"\$1\" '$work' '$key'" \
    bookworm "$root" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"

echo "build.sh: disk image"
truncate -s 3G "$work/root.raw"
mkfs.ext4 -q -L p25-root -d "$root" "$work/root.raw"
qemu-img convert -c -O qcow2 "$work/root.raw" "$work/box.img"
rm -f "$work/root.raw"
cat >"$work/metadata.json" <<'JSON'
{"provider": "libvirt", "format": "qcow2", "virtual_size": 3}
JSON
boot="/var/lib/libvirt/boot/${name//\//-}"
cat >"$work/Vagrantfile" <<RUBY
# The port25-enforcer lab box: direct kernel boot (no boot loader in the image). qemu runs as its own user, which
# cannot read the box's copy under Vagrant's home (/root is private): libvirt's boot directory holds the kernel.
require "fileutils"
boot = "$boot"
%w[vmlinuz initrd.img].each do |file|
  next if File.exist?(File.join(boot, file)) && File.size(File.join(boot, file)) == File.size(File.join(__dir__, file))
  FileUtils.mkdir_p(boot)
  FileUtils.install(File.join(__dir__, file), boot, mode: 0o644)
end
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(boot, "vmlinuz")
    lv.initrd = File.join(boot, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0"
  end
end
RUBY
rm -rf "$boot"  # a rebuilt box brings its own kernel
tar -C "$work" -cf "$work/p25.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
vagrant box add --force --name "$name" "$work/p25.box"
mkdir -p "$(dirname "$stamp")"
echo "$recipe" >"$stamp"
echo "build.sh: added box $name ($(du -h "$work/box.img" | cut -f1) qcow2)"
