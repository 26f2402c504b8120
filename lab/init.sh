#!/bin/sh
# PID 1 of the warpdrive lab guest (busybox sh from the initramfs built by lab/initramfs.py).
#
# Builds a root from the host's / (read-only 9p, with a throwaway tmpfs overlay so tools that write
# into the checkout or $HOME work and nothing reaches the host), sets up what tests need (hugepages,
# a NIC with an address and a default route), then runs $results/job.sh (written by lab/vm.py) in a
# chroot with an empty environment. The exit code goes into the writable 9p results share and, as a
# fallback, onto the console in the end marker. Always powers off: the host runs QEMU -no-reboot and
# the kernel runs with panic=-1, so even a crash here ends the VM.
export PATH=/bin
R=/newroot

mark() { printf '@@warpdrive-lab:%s@@\n' "$1"; }
die() {
    echo "warpdrive-lab: init: $*"
    mark "end 125"
    poweroff -f
    sleep 10
}

mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
    || die "cannot mount proc, sysfs or devtmpfs"
# No \n -> \r\n on the serial line: the host streams the command's bytes unchanged.
stty -onlcr </dev/console 2>/dev/null

results=
hugepages=16
net=10.0.2.15/24,10.0.2.2
cache=loose
expose=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        wd.results=*) results=${arg#wd.results=} ;;
        wd.hugepages=*) hugepages=${arg#wd.hugepages=} ;;
        wd.net=*) net=${arg#wd.net=} ;;
        wd.9pcache=*) cache=${arg#wd.9pcache=} ;;
        wd.expose=*) expose=${arg#wd.expose=} ;;
    esac
done
[ -n "$results" ] || die "no wd.results= on the kernel command line"

mkdir -p /host /rw "$R"
# cache=loose: nothing a test depends on changes on the host during a short-lived guest, and cached
# metadata spares 9p round trips on Python's import-time stat calls.
mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=512000,cache=$cache" hostroot /host \
    || die "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 rw /rw && mkdir -p /rw/upper /rw/work || die "cannot mount tmpfs"
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay "$R" \
    || die "cannot mount the overlay root"

mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t tmpfs -o mode=1777 vartmp "$R/var/tmp"
mount -t tmpfs -o mode=0755 run "$R/run"
# Host directories the command needs that the fresh tmpfs mounts above would hide (a checkout cloned
# into /tmp): overlay them back, writable the same throwaway way as the root.
n=0
for dir in $(echo "$expose" | tr ':' ' '); do
    n=$((n + 1))
    mkdir -p "/rw/x$n/upper" "/rw/x$n/work" "$R$dir"
    mount -t overlay -o "lowerdir=/host$dir,upperdir=/rw/x$n/upper,workdir=/rw/x$n/work" \
        overlay "$R$dir" || die "cannot expose the host's $dir"
done
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t debugfs debugfs "$R/sys/kernel/debug"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/hugepages"
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
mount -t hugetlbfs hugetlbfs "$R/dev/hugepages"
ln -sf /proc/self/fd "$R/dev/fd"
ln -sf /proc/self/fd/0 "$R/dev/stdin"
ln -sf /proc/self/fd/1 "$R/dev/stdout"
ln -sf /proc/self/fd/2 "$R/dev/stderr"
echo "$hugepages" > /proc/sys/vm/nr_hugepages

# The guest's NIC is configured the way a real machine's would be (address + default route), so
# the binding code's "this function carries a route" refusal has something real to refuse.
ip link set lo up
addr=${net%,*}
gw=${net#*,}
for dev in /sys/class/net/*; do
    ifname=${dev##*/}
    [ -e "$dev/device" ] || continue  # lo, sit0: not a NIC
    ip addr add "$addr" dev "$ifname" && ip link set "$ifname" up \
        && ip route add default via "$gw" dev "$ifname" || die "cannot configure $ifname"
    break
done

mkdir -p "$R$results"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$R$results" \
    || die "cannot mount the results share at $results"
[ -f "$R$results/job.sh" ] || die "no job.sh in the results share"

# From here the console is the command's stdout: keep kernel messages off it (only emergencies).
# They still reach the ring buffer, which is saved to $results/dmesg and scanned by the host.
dmesg -n 1
mark begin
env -i /bin/chroot "$R" /bin/sh "$results/job.sh" </dev/null
rc=$?
mark "end $rc"
echo "$rc" > "$R$results/exit-code"
dmesg > "$R$results/dmesg"
umount "$R$results"
poweroff -f
sleep 10
