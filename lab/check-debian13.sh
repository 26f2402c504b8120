#!/usr/bin/env bash
# Exercise lab/install-deps.sh as a Debian 13 (trixie) host runs it, without one. Run as root.
#
#   bash lab/check-debian13.sh --quick [--no-apt]   # seconds: the lab's cached trixie root
#   bash lab/check-debian13.sh [DIR]                # minutes: a fresh trixie root, a real cold run
#
# --quick: a throwaway overlay (tmpfs on top, private mount namespace) over the lab's own trixie
#   root (~/.cache/warpdrive-lab/qemu-root-*, left untouched), with the host's apt sources of a
#   Debian 13 machine (trixie main only). There: install-deps.sh --dry-run must detect Debian 13
#   from the root's os-release and plan trixie only; then (unless --no-apt) apt-get update and
#   `apt-get install --simulate` of exactly the planned host packages must resolve from trixie.
# DIR (default /tmp/warpdrive-trixie-host): mmdebstrap a minimal trixie root there and run
#   install-deps.sh in it for real (dry run, cold run, warm run), then the root's QEMU. Nothing
#   outside DIR is touched (its lab cache is DIR/root/.cache/warpdrive-lab). About 5 minutes and
#   600 MB of downloads.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "lab/check-debian13.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (chroot and mounts)"

quick=0 apt=1 R=/tmp/warpdrive-trixie-host
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --no-apt) apt=0 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) R=$1 ;;
  esac
  shift
done

# Mounts below live in a private mount namespace: they vanish with this script, whatever happens.
if [ -z "${WD_CHECK13_NS:-}" ]; then
  exec unshare --mount --propagation private env WD_CHECK13_NS=1 bash "$0" \
    $([ $quick = 1 ] && echo --quick) $([ $apt = 0 ] && echo --no-apt) "$R"
fi

in_root() { chroot "$1" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin "${@:2}"; }

if [ $quick = 1 ]; then
  . "$here/versions.env"
  lower=${WARPDRIVE_LAB_CACHE:-$HOME/.cache/warpdrive-lab}/qemu-root-${QEMU_VERSION#*:}
  [ -f "$lower/.warpdrive-lab-ok" ] || die "no trixie root at $lower: run bash lab/install-deps.sh"
  t=$(mktemp -d /tmp/warpdrive-check13.XXXXXX)
  trap 'umount -R "$t" 2>/dev/null; rm -rf "$t"' EXIT
  mount -t tmpfs check13 "$t"
  mkdir "$t/up" "$t/work" "$t/root"
  mount -t overlay check13 -o "lowerdir=$lower,upperdir=$t/up,workdir=$t/work" "$t/root"
  S=$t/root
  # A Debian 13 host's apt: trixie main only (the lab root's trixie-backports and pin removed).
  rm -f "$S/etc/apt/sources.list.d/"* "$S/etc/apt/preferences.d/"*
  mirror=${WARPDRIVE_LAB_MIRROR:-http://deb.debian.org/debian}
  echo "deb $mirror trixie main" > "$S/etc/apt/sources.list"
  mkdir -p "$S/opt/warpdrive/lab"
  mount --bind -o ro "$here" "$S/opt/warpdrive/lab"
  echo "trixie root: overlay on $lower (Debian $(cat "$S/etc/debian_version"))"
  plan=$(in_root "$S" bash /opt/warpdrive/lab/install-deps.sh --dry-run)
  echo "$plan"
  grep -qx 'host: Debian 13 (trixie)' <<<"$plan" || die "the dry run did not detect Debian 13"
  ! grep '^host apt:' <<<"$plan" | grep -q bookworm || die "the Debian 13 plan names bookworm"
  [ $apt = 1 ] || exit 0
  pkgs=$(sed -n 's/^host apt: install from trixie: //p' <<<"$plan")
  [ -n "$pkgs" ] || die "no trixie package list in the plan"
  cp -L /etc/resolv.conf "$S/etc/resolv.conf"
  mount -t proc proc "$S/proc"
  in_root "$S" apt-get update -qq
  # shellcheck disable=SC2086  # a word list
  out=$(in_root "$S" apt-get install --simulate --no-install-recommends $pkgs) \
    || die "apt-get --simulate of the Debian 13 plan failed: $out"
  echo "apt-get install --simulate on trixie: $(grep -c '^Inst ' <<<"$out") packages to install, " \
       "suites: $(grep '^Inst ' <<<"$out" | grep -o '(\S* [^ ]*' | awk '{print $2}' | sort -u | tr '\n' ' ')"
  ! grep '^Inst ' <<<"$out" | grep -q 'bookworm' || die "the Debian 13 plan pulled bookworm packages"
  echo "Debian 13 plan: ok"
  exit 0
fi

t0=$(date +%s)
if [ ! -f "$R/etc/debian_version" ]; then
  mmdebstrap --variant=minbase -q --aptopt='APT::Install-Recommends "false"' trixie "$R" \
    "deb ${WARPDRIVE_LAB_MIRROR:-http://deb.debian.org/debian} trixie main"
fi
echo "trixie root: $R (Debian $(cat "$R/etc/debian_version")), $(( $(date +%s) - t0 )) s"
mkdir -p "$R/opt/warpdrive"
rm -rf "$R/opt/warpdrive/lab" && cp -r "$here" "$R/opt/warpdrive/lab"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t sysfs -o ro sysfs "$R/sys"  # read-only: nothing in the root may write to the host's sysfs
in_root "$R" bash /opt/warpdrive/lab/install-deps.sh --dry-run
t1=$(date +%s)
in_root "$R" bash /opt/warpdrive/lab/install-deps.sh
echo "install-deps.sh cold in the trixie root: $(( $(date +%s) - t1 )) s"
t2=$(date +%s)
in_root "$R" bash /opt/warpdrive/lab/install-deps.sh
echo "install-deps.sh warm in the trixie root: $(( $(date +%s) - t2 )) s"
echo "host apt sources in the root (must be trixie only):"
in_root "$R" sh -c 'grep -rhs "^deb\|^Suites" /etc/apt/sources.list /etc/apt/sources.list.d/'
in_root "$R" sh -c 'ls /usr/src/linux-source-6.12.tar.* /root/.cache/warpdrive-lab/src/'
in_root "$R" sh -c 'r=$(echo /root/.cache/warpdrive-lab/qemu-root-*); "$r/lib64/ld-linux-x86-64.so.2" \
  --library-path "$r/usr/lib/x86_64-linux-gnu:$r/lib/x86_64-linux-gnu" \
  "$r/usr/bin/qemu-system-x86_64" --version | head -1'
