#!/usr/bin/env bash
# mmdebstrap's customize hook for build.sh: makes the root file system ROOT a Vagrant box's, and copies its
# kernel and initrd to OUT (the box boots them directly).
#   customize.sh ROOT OUT VAGRANT_PUBLIC_KEY
set -euo pipefail
root=${1:?usage: customize.sh ROOT OUT KEY} out=${2:?usage: customize.sh ROOT OUT KEY} key=${3:?usage: customize.sh ROOT OUT KEY}

chroot "$root" useradd --create-home --shell /bin/bash --groups sudo vagrant
install -d -m 0700 "$root/home/vagrant/.ssh"
install -m 0600 "$key" "$root/home/vagrant/.ssh/authorized_keys"
chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
echo "vagrant ALL=(ALL) NOPASSWD:ALL" >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"

echo "/dev/vda / ext4 defaults 0 1" >"$root/etc/fstab"
echo p25-box >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 p25-box\n' >"$root/etc/hosts"
# The management network (eth0): DHCP from libvirt's isolated network, which hands out no router, so a machine
# has no route off the lab. Named to sort after Vagrant's own 50-vagrant-*.network files.
cat >"$root/etc/systemd/network/99-p25-management.network" <<'NET'
[Match]
Name=eth0

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
chroot "$root" systemctl enable --quiet systemd-networkd ssh
# Nothing to download from in the lab; and a boot must not wait for a network that is Vagrant's to configure.
chroot "$root" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer systemd-networkd-wait-online.service
# Debian's own unbound would resolve recursively from the real root (its trust anchor fetched from the internet);
# the internet host runs the lab's instead (provision/internet.sh: p25-dns.service), nothing else runs one
chroot "$root" systemctl mask --quiet unbound.service unbound-resolvconf.service
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

newest() { find "$root/boot" -name "$1" | sort -V | tail -n 1; }
cp "$(newest 'vmlinuz-*')" "$out/vmlinuz"
cp "$(newest 'initrd.img-*')" "$out/initrd.img"
