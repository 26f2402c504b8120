#!/usr/bin/env bash
# Exercise lab/install-deps.sh on a Debian 13 (trixie) host without one: build a minimal trixie
# root with mmdebstrap, mount /proc, /sys and /dev into it, and run the script there (dry run,
# cold run, warm run), then run the root's QEMU. Nothing outside DIR is touched (the lab cache is
# DIR/root/.cache/warpdrive-lab). About 5 minutes and 600 MB of downloads; run as root.
#
#   bash lab/check-debian13.sh [DIR]        # default DIR: /tmp/warpdrive-trixie-host
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
R=${1:-/tmp/warpdrive-trixie-host}
t0=$(date +%s)
if [ ! -f "$R/etc/debian_version" ]; then
  mmdebstrap --variant=minbase -q --aptopt='APT::Install-Recommends "false"' trixie "$R" \
    'deb http://deb.debian.org/debian trixie main'
fi
echo "trixie root: $R (Debian $(cat "$R/etc/debian_version")), $(( $(date +%s) - t0 )) s"
mkdir -p "$R/opt/warpdrive"
rm -rf "$R/opt/warpdrive/lab" && cp -r "$here" "$R/opt/warpdrive/lab"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
for m in proc sys dev; do mountpoint -q "$R/$m" || mount --rbind "/$m" "$R/$m"; done
trap 'for m in dev sys proc; do umount -R "$R/$m" 2>/dev/null || umount -l "$R/$m"; done' EXIT
in_root() { chroot "$R" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
in_root bash /opt/warpdrive/lab/install-deps.sh --dry-run
t1=$(date +%s)
in_root bash /opt/warpdrive/lab/install-deps.sh
echo "install-deps.sh cold in the trixie root: $(( $(date +%s) - t1 )) s"
t2=$(date +%s)
in_root bash /opt/warpdrive/lab/install-deps.sh
echo "install-deps.sh warm in the trixie root: $(( $(date +%s) - t2 )) s"
echo "host apt sources in the root (must be trixie only):"
in_root sh -c 'grep -rhs "^deb\|^Suites" /etc/apt/sources.list /etc/apt/sources.list.d/'
in_root sh -c 'ls /usr/src/linux-source-6.12.tar.* /root/.cache/warpdrive-lab/src/'
in_root sh -c 'r=$(echo /root/.cache/warpdrive-lab/qemu-root-*); "$r/lib64/ld-linux-x86-64.so.2" \
  --library-path "$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu" \
  "$r/usr/bin/qemu-system-x86_64" --version | head -1'
