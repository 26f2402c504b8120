#!/usr/bin/env bash
# Host packages the lab and the ABI test need, on Debian 12 (bookworm).
# QEMU 10 and linux-source-6.12 come from bookworm-backports (same archive, pinned with -t so
# nothing else on the machine is upgraded). Idempotent: a warm machine does no apt work.
set -euo pipefail

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

base_pkgs=(bc bison flex libelf-dev libssl-dev gcc make cpio busybox-static gzip xz-utils strace)
bpo_pkgs=(qemu-system-x86 linux-source-6.12 linux-libc-dev)

for p in "${base_pkgs[@]}"; do have "$p" || need+=("$p"); done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 --version | grep -qE 'version (1[0-9])\.'; then qemu_ok=1; fi
src_ok=0; ls /usr/src/linux-source-6.12.tar.* >/dev/null 2>&1 && src_ok=1
hdr_ok=0; [ -f /usr/include/linux/iommufd.h ] && grep -q IOMMU_HWPT_ALLOC /usr/include/linux/iommufd.h && hdr_ok=1

if [ ${#need[@]} -eq 0 ] && [ $qemu_ok = 1 ] && [ $src_ok = 1 ] && [ $hdr_ok = 1 ]; then
  echo "lab deps: already installed"; exit 0
fi

if [ ! -f /etc/apt/sources.list.d/bookworm-backports.sources ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then apt-get install -y -qq --no-install-recommends "${need[@]}"; fi
apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bpo_pkgs[@]}"
qemu-system-x86_64 --version | head -1
