#!/usr/bin/env bash
# What the lab and the ABI test need, on a Debian 12 (bookworm) or 13 (trixie) host, as root:
#  - host packages from the host's own release only (12: bookworm + bookworm-backports for
#    linux-source-6.12; 13: trixie), never another suite on the host;
#  - QEMU (lab/versions.env, trixie-backports; it has vfio-user-pci) in a small trixie root made
#    with mmdebstrap, cached outside the repo in $WARPDRIVE_LAB_CACHE (~/.cache/warpdrive-lab)/
#    qemu-root-<version>, built in a temp dir and renamed; the lab runs it through the root's own
#    dynamic loader (lab/qemu.py), on 12 and 13 alike;
#  - linux-source-7.3 (trixie-backports), downloaded by that root's apt and unpacked with
#    `dpkg-deb -x` into the cache (never installed anywhere).
# Idempotent: a warm machine does no apt or network work. Concurrent runs serialize on a lock.
#
#   bash lab/install-deps.sh                   # install what is missing
#   bash lab/install-deps.sh --dry-run         # print the plan for this host, change nothing
#   bash lab/install-deps.sh --dry-run --release 13   # ... for a Debian 13 host
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

die() { echo "lab/install-deps.sh: $*" >&2; exit 1; }

dry=0
release=
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --release) [ $# -ge 2 ] || die "--release wants 12 or 13"; release=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done

# The host's Debian release, from os-release (VERSION_ID / VERSION_CODENAME) or /etc/debian_version
# ("12.11", "13.1", "trixie/sid").
detect_release() {
  local id="" code="" dv=""
  if [ -r /etc/os-release ]; then
    id=$(. /etc/os-release && echo "${VERSION_ID:-}")
    code=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  fi
  [ -r /etc/debian_version ] && dv=$(cat /etc/debian_version)
  case "$id:$code:$dv" in
    12:*|*:bookworm:*|*:*:12.*|*:*:bookworm*) echo 12 ;;
    13:*|*:trixie:*|*:*:13.*|*:*:trixie*) echo 13 ;;
    *) die "unsupported host: Debian 12 (bookworm) or 13 (trixie) needed, found" \
           "VERSION_ID='$id' codename='$code' debian_version='$dv'" ;;
  esac
}
[ -n "$release" ] || release=$(detect_release)

base_pkgs=(bc bison flex libelf-dev libssl-dev gcc make cpio kmod busybox-static gzip xz-utils
           strace mmdebstrap debian-archive-keyring ca-certificates)
case $release in
  12) suite=bookworm; bpo_suite=bookworm-backports; bpo_pkgs=(linux-source-6.12 linux-libc-dev) ;;
  13) suite=trixie; bpo_suite=; bpo_pkgs=(); base_pkgs+=(linux-source-6.12 linux-libc-dev) ;;
  *) die "--release wants 12 or 13, not '$release'" ;;
esac

# The zip tests: CPython's own test_zlib/test_gzip judge warpdrive.zip (Debian ships them in
# libpythonX.Y-testsuite for the system Python); the CLI benchmark compares with pigz; the bundled
# ZIP model runs whole-buffer jobs on libdeflate (libdeflate0: 1.14 on 12, 1.23 on 13).
base_pkgs+=(pigz libdeflate0)
if command -v python3 >/dev/null && ! python3 -c 'import test.test_zlib' 2>/dev/null; then
  base_pkgs+=("libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-testsuite")
fi

cache=${WARPDRIVE_LAB_CACHE:-$HOME/.cache/warpdrive-lab}
qemu_ver=${QEMU_VERSION#*:}  # no epoch in a path
root=$cache/qemu-root-$qemu_ver
src73=$cache/src/linux-source-7.3.tar.xz

# The Debian archive this machine already uses (same mirror for the trixie root), unless overridden.
mirror=${WARPDRIVE_LAB_MIRROR:-}
if [ -z "$mirror" ] && command -v apt-get >/dev/null; then
  mirror=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null \
           | awk -v s="$suite" '$1 == s {print $2; exit}')
  mirror=${mirror%/}
fi
mirror=${mirror:-http://deb.debian.org/debian}

pin_file='Package: qemu-* seabios ipxe-qemu
Pin: release n=trixie-backports
Pin-Priority: 990'

if [ $dry = 1 ]; then
  echo "host: Debian $release ($suite)"
  echo "host apt: install from $suite: ${base_pkgs[*]}"
  if [ -n "$bpo_suite" ]; then
    echo "host apt: install from $bpo_suite (-t $bpo_suite): ${bpo_pkgs[*]}"
  fi
  echo "qemu root: mmdebstrap --variant=apt trixie $root" \
       "'deb $mirror trixie main' 'deb $mirror trixie-backports main'" \
       "--include=qemu-system-x86=$QEMU_VERSION (pinned: qemu-* seabios ipxe-qemu from trixie-backports)"
  echo "linux-source-7.3: apt-get download in the qemu root (trixie-backports)," \
       "dpkg-deb -x, tarball to $src73"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and builds a chroot with mmdebstrap)"
mkdir -p "$cache/src"
exec 9>"$cache/install-deps.lock"
flock 9  # a parallel `make test` may be running apt or building the root right now

have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
for p in "${base_pkgs[@]}"; do have "$p" || need+=("$p"); done
need_bpo=()
for p in "${bpo_pkgs[@]}"; do have "$p" || need_bpo+=("$p"); done
ls /usr/src/linux-source-6.12.tar.* >/dev/null 2>&1 || need_bpo+=(linux-source-6.12)
# The ABI test needs 6.12 uAPI headers on the host (bookworm's own linux-libc-dev is 6.1).
if [ -n "$bpo_suite" ] && ! grep -qs IOMMU_HWPT_ALLOC /usr/include/linux/iommufd.h; then
  need_bpo+=(linux-libc-dev)
fi

export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ] || [ ${#need_bpo[@]} -gt 0 ]; then
  if [ -n "$bpo_suite" ] && ! grep -rqs "$bpo_suite" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > "/etc/apt/sources.list.d/$bpo_suite.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $bpo_suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  if [ ${#need_bpo[@]} -gt 0 ]; then
    if [ -n "$bpo_suite" ]; then
      apt-get install -y -qq --no-install-recommends -t "$bpo_suite" "${need_bpo[@]}"
    else
      apt-get install -y -qq --no-install-recommends "${need_bpo[@]}"
    fi
  fi
fi

qemu_ok() { [ -f "$1/.warpdrive-lab-ok" ] && [ -x "$1/usr/bin/qemu-system-x86_64" ]; }

if ! qemu_ok "$root"; then
  echo "lab: building the QEMU root $root (QEMU $QEMU_VERSION from trixie-backports, about a minute)"
  tmp=$(mktemp -d "$cache/.qemu-root.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # Fails with a marker file when trixie-backports no longer has the pinned version (checked after
  # the essential packages, before the pinned --include would fail with apt's generic message).
  check="c=\$(APT_CONFIG=\"\$MMDEBSTRAP_APT_CONFIG\" apt-cache policy qemu-system-x86 |
    awk '/Candidate:/ {print \$2}'); [ \"\$c\" = '$QEMU_VERSION' ] ||
    { echo \"\$c\" > '$tmp/moved'; exit 1; }"
  if ! mmdebstrap --variant=apt --arch=amd64 -q \
      --aptopt='APT::Install-Recommends "false"' \
      --setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\"; printf '%s\n' '$pin_file' > \"\$1/etc/apt/preferences.d/qemu-bpo\"" \
      --essential-hook="$check" \
      --include="qemu-system-x86=$QEMU_VERSION" \
      trixie "$tmp/root" "deb $mirror trixie main" "deb $mirror trixie-backports main"; then
    if [ -f "$tmp/moved" ]; then
      die "trixie-backports no longer has qemu-system-x86 $QEMU_VERSION (it has" \
          "'$(cat "$tmp/moved")'): set QEMU_VERSION in lab/versions.env to it and rerun"
    fi
    die "mmdebstrap failed to build the QEMU root (output above)"
  fi
  # apt-get download inside the root needs a resolver config; the root gets the host's.
  cp -L /etc/resolv.conf "$tmp/root/etc/resolv.conf" 2>/dev/null || true
  ld="$tmp/root/lib64/ld-linux-x86-64.so.2"
  "$ld" --library-path "$tmp/root/usr/lib/x86_64-linux-gnu:$tmp/root/lib/x86_64-linux-gnu" \
    "$tmp/root/usr/bin/qemu-system-x86_64" --version | head -1
  touch "$tmp/root/.warpdrive-lab-ok"
  rm -rf "$root"  # an unfinished root left by an older version of this script
  mv "$tmp/root" "$root"
  rm -rf "$tmp"
  trap - EXIT
fi

if [ ! -f "$src73" ]; then
  echo "lab: fetching linux-source-7.3 (trixie-backports) through the QEMU root's apt"
  tmp=$(mktemp -d "$cache/src/.linux-7.3.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$root/tmp/deb" && chmod 1777 "$root/tmp/deb"  # apt downloads as _apt
  chroot "$root" apt-get update -qq
  chroot "$root" sh -c 'cd /tmp/deb && apt-get download -qq linux-source-7.3'
  deb=$(ls "$root"/tmp/deb/linux-source-7.3_*.deb)
  dpkg-deb -x "$deb" "$tmp/x"
  basename "$deb" .deb > "$tmp/version"
  mv "$tmp"/x/usr/src/linux-source-7.3.tar.* "$tmp/linux-source-7.3.tar.xz"
  rm -rf "$root/tmp/deb" "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin  # 180 MB
  mv "$tmp/version" "$cache/src/linux-source-7.3.version"
  mv "$tmp/linux-source-7.3.tar.xz" "$src73"
  rm -rf "$tmp"
  trap - EXIT
fi
echo "lab deps: ok (Debian $release host; QEMU $QEMU_VERSION in $root; $(cat "$cache/src/linux-source-7.3.version"))"
