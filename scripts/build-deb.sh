#!/usr/bin/env bash
# Builds a Debian 12 package of the checkout: dist/port25-enforcer_VERSION-1_ARCH.deb.
#
#   scripts/build-deb.sh [--out DIR]        on Debian 12 with scripts/install.sh's packages (gcc, python3-dev,
#                                           libnetfilter-queue-dev), libyaml-dev and git; ~1 minute
#
# The package holds a virtual environment at /usr/lib/port25-enforcer (the project, its C module and its Python
# dependencies, netfilterqueue built against Debian's libnetfilter_queue; Debian's python3 runs it), with
# /usr/bin/enforcer, the systemd unit (not enabled: `enforcer service install` makes the service user, or
# `systemctl enable --now enforcer` once it exists), /etc/enforcer/enforcer.toml, the profiles and the lab files
# (under the venv's share/port25-enforcer, where the CLI looks for them), bash and zsh completion, and the docs.
# The venv is built in a staging directory and then names its final path: nothing on this machine is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: $0 [--out DIR]"
out=dist
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=${2:?$usage}; shift 2 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument '$1'; $usage" >&2; exit 2 ;;
    esac
done
# Debian's interpreter, whatever else PATH finds first (pyenv, say): the package runs on it.
python=/usr/bin/python3
[ -x "$python" ] || { echo "build-deb.sh: Debian's $python is missing; run: scripts/install.sh" >&2; exit 2; }
for tool in dpkg-deb gcc git strip; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing; run: scripts/install.sh" >&2; exit 2; }
done

name=port25-enforcer
version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')-1"
arch=$(dpkg --print-architecture)
lib=/usr/lib/$name
work=$(mktemp -d /var/tmp/p25-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
stage="$root$lib"

# A copy of what git tracks (and what it would, uncommitted): pip builds in its source tree, not in ours.
mkdir "$work/source"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - | tar -xf - -C "$work/source"

echo "build-deb.sh: the virtual environment"
mkdir -p "$root/usr/lib"
"$python" -m venv "$stage"
"$stage/bin/python" -m pip install --quiet --no-compile --upgrade pip
# Built here, against Debian's libraries: no wheel cache (a wheel another interpreter built, with its RUNPATH),
# PyYAML against Debian's libyaml rather than the copy its binary wheel embeds.
"$stage/bin/python" -m pip install --quiet --no-compile --no-cache-dir --no-binary PyYAML,netfilterqueue \
    "$work/source"
"$stage/bin/python" -c 'import yaml, sys; sys.exit(not yaml.__with_libyaml__)' ||
    { echo "build-deb.sh: PyYAML was built without libyaml; install libyaml-dev" >&2; exit 2; }
"$stage/bin/python" -m pip uninstall --quiet --yes pip setuptools
# click's completion scripts, made by the command itself while it still runs from here
mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions"
_ENFORCER_COMPLETE=bash_source "$stage/bin/enforcer" >"$root/usr/share/bash-completion/completions/enforcer"
_ENFORCER_COMPLETE=zsh_source "$stage/bin/enforcer" >"$root/usr/share/zsh/vendor-completions/_enforcer"
# The venv names its final place, not the staging one: the scripts' #! lines; activate scripts are for people
# working in a venv, not for a package.
rm -f "$stage"/bin/[aA]ctivate* "$stage"/bin/pip*
for script in "$stage"/bin/*; do
    # not the interpreter's links: sed -i would put a copy of the interpreter in their place
    [ -L "$script" ] || sed -i "1s|^#!$stage/bin/|#!$lib/bin/|" "$script"
done
ln -sf ../../../bin/python3 "$stage/bin/python3"     # Debian's interpreter, relative within the package
ln -sf python3 "$stage/bin/python"
find "$root" -name direct_url.json -delete           # it names the staging source
find "$root" -name .gitignore -delete                 # a dependency's, meaningless in a package
sed -i '/^command = /d' "$stage/pyvenv.cfg"           # how it was made, with the staging path
find "$root" -name __pycache__ -type d -prune -exec rm -rf {} +   # compiled at install (postinst)
find "$root" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
if grep -rIl --exclude='*.so' "$work" "$root" >/dev/null; then
    echo "build-deb.sh: the staging path is left in: $(grep -rIl "$work" "$root" | head -n 3)" >&2
    grep -rI "$work" "$root" | head -n 3 >&2
    exit 1
fi

echo "build-deb.sh: the unit, the config, the completion, the docs"
mkdir -p "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/enforcer" "$root/usr/share/doc/$name"
ln -s "../lib/$name/bin/enforcer" "$root/usr/bin/enforcer"
sed "s|^ExecStart=/usr/local/bin/enforcer |ExecStart=/usr/bin/enforcer |" systemd/enforcer.service \
    >"$root/lib/systemd/system/enforcer.service"
grep -q "^ExecStart=/usr/bin/enforcer " "$root/lib/systemd/system/enforcer.service"
install -m 0644 systemd/enforcer.toml "$root/etc/enforcer/enforcer.toml"
install -m 0644 README.md RELIABILITY.md "$root/usr/share/doc/$name/"
gzip -9n -c CHANGELOG.md >"$root/usr/share/doc/$name/changelog.gz"
cat >"$root/usr/share/doc/$name/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $name
Comment: /usr/lib/$name also holds the project's Python dependencies from PyPI, each under its own license:
 click, PyYAML, rich, NetfilterQueue, pyroute2, scapy, prometheus-client and theirs (see their dist-info).

Files: *
Copyright: the port25-enforcer authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
EOF
gzip -9n -c >"$root/usr/share/doc/$name/changelog.Debian.gz" <<EOF
$name ($version) unstable; urgency=medium

  * Built from the checkout by scripts/build-deb.sh.

 -- port25-enforcer maintainers <maintainers@port25-enforcer.example.org>  $(date -R -d "@$(git log -1 --format=%ct)")
EOF

echo "build-deb.sh: the control files"
mkdir "$root/DEBIAN"
printf '/etc/enforcer/enforcer.toml\n' >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<EOF
#!/bin/sh
# The bytecode, for Debian's python3 of this machine (the package ships none).
set -e
if [ "\$1" = configure ]; then
    $lib/bin/python3 -m compileall -q $lib/lib >/dev/null || true
fi
EOF
cat >"$root/DEBIAN/prerm" <<EOF
#!/bin/sh
# What postinst compiled, so that removing the package leaves no directory behind.
set -e
find $lib -name __pycache__ -type d -prune -exec rm -rf {} +
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
# procps: /bin/kill, the unit's ExecReload
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: port25-enforcer maintainers <maintainers@port25-enforcer.example.org>
Installed-Size: $size
Depends: python3 (>= 3.11), python3 (<< 3.12), libc6 (>= 2.34), libnetfilter-queue1, libnfnetlink0, libyaml-0-2, iptables, iproute2, procps
Recommends: nftables, ipset, conntrack
Section: net
Priority: optional
Description: block outbound SMTP (TCP 25) on a Linux lab gateway the way Azure does
 A daemon binds NFQUEUE to forwarded port 25 SYNs and judges each by its
 source from a compiled table of the lab's subscriptions, VNets and VMs, as
 Azure's platform block does; the enforcer command models them, and a lab in
 network namespaces shows the block for real.
EOF
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$(cd "$out" && pwd)/${name}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "build-deb.sh: $deb"
