#!/bin/sh
# dom0's init (PID 1 after the initramfs switched to the root disk; the
# payload disk is mounted read-only at /payload).  Starts Xen's daemons by
# hand (there is no systemd), runs the scenarios, prints the end marker and
# powers the machine off.  Everything it prints goes to the serial console.
# Xen's tools are those of the running hypervisor's release.
export LC_ALL=C.UTF-8 HOME=/root
XEN_RELEASE=$(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor) \
    || XEN_RELEASE=$(ls -d /usr/lib/xen-4.* | sed -n 's|.*/xen-||p' | head -n 1)
export XEN_RELEASE
export PATH=/usr/lib/xen-$XEN_RELEASE/bin:/usr/sbin:/usr/bin:/sbin:/bin

fatal() {
    echo "XENSR-FATAL dom0: $*"
    while :; do sleep 3600; done
}

stage() {
    echo "XENSR-STAGE $* $(cut -d' ' -f1 /proc/uptime)"
}

stage dom0-init
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /var/log
mount -t tmpfs tmpfs /var/lib/xen 2>/dev/null || mkdir -p /var/lib/xen
mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console /var/lib/xen
hostname xensr-dom0
[ -d "/usr/lib/xen-$XEN_RELEASE/bin" ] || fatal "no tools for Xen $XEN_RELEASE in /usr/lib"

# Disks after root and payload: a writable one is this boot's export (an
# xl save file for the next release's boot), a read-only one an earlier
# boot's export.
for dev in vdc vdd; do
    [ -b /dev/$dev ] || continue
    if [ "$(cat /sys/block/$dev/ro)" = 1 ]; then
        mount -t ext4 -o ro /dev/$dev /import || fatal "cannot mount /dev/$dev at /import"
    else
        mount -t ext4 /dev/$dev /export || fatal "cannot mount /dev/$dev at /export"
    fi
done

# The Xen device modules were loaded by the initramfs.
mount -t xenfs xenfs /proc/xen || fatal "cannot mount xenfs"
[ -e /dev/xen/privcmd ] || fatal "no /dev/xen/privcmd"

XENSTORED_ROOTDIR=/run/xenstored xenstored --pid-file=/run/xenstored.pid \
    || fatal "xenstored did not start"
xen-init-dom0 >/run/xen-init-dom0.log 2>&1 || { cat /run/xen-init-dom0.log; fatal "xen-init-dom0 failed"; }
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console \
    || fatal "xenconsoled did not start"
stage daemons

PYTHONPATH=/payload/site python3 -u /payload/dom0/scenarios.py /payload
status=$?
sync
! mountpoint -q /export || umount /export || echo "XENSR-LOG cannot unmount /export"
echo "XENSR-END status=$status"
echo o > /proc/sysrq-trigger
while :; do sleep 3600; done
