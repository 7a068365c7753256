#!/bin/busybox sh
# /init of the VM rig's initramfs: mounts, modules, network, then a shell on
# the console that the host drives (kmod/vmtest/rig_test.go).
/bin/busybox --install -s /bin
# No modprobe: kmod/nbdkernel must load nbd itself (finit_module of the
# compressed module), as on a host without kmod's tools.
rm -f /bin/modprobe /sbin/modprobe
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
dmesg -n 1
while read -r m; do
	insmod "/mods/$m.ko" 2>/dev/null || echo "@@WARN insmod $m failed"
done </mods/order

for arg in $(cat /proc/cmdline); do
	case "$arg" in
	georepl.node=*) NODE=${arg#georepl.node=} ;;
	georepl.ip=*) IP=${arg#georepl.ip=} ;;
	esac
done
# /usr/sbin holds e2fsprogs and iproute2's tc. busybox-static's shell runs
# its own applets before anything on PATH: call those by their full path.
export NODE IP PATH=/usr/sbin:/usr/bin:/sbin:/bin
hostname "$NODE"
ip link set lo up
ip addr add "$IP/24" dev eth0
ip link set eth0 up
# Soft-RoCE on eth0, for the rdma transport plugin.
rdma link add rxe0 type rxe netdev eth0 || echo "@@WARN rdma link add rxe0 failed"
mkdir -p /run/georepl

cat >/etc/rig.sh <<'RIG'
PS1=
PS2=
# size DEV: the device's size in 512-byte sectors, 0 when detached.
size() { cat "/sys/block/${1#/dev/}/size" 2>/dev/null || echo 0; }
# attach DEV RES: attach the export of RES to DEV unless the daemon did.
attach() {
	if [ "$(size "$1")" != 0 ]; then echo "@@ATTACHED $1 (by the daemon)"; return 0; fi
	vmguest attach -device "$1" -export "unix:/run/georepl/$2.sock" -name "$2"
}
# detach DEV: detach DEV unless it is detached already.
detach() {
	if [ "$(size "$1")" = 0 ]; then return 0; fi
	vmguest detach -device "$1"
}
# daemon CONFDIR: start the daemon and wait until it answers (a socket
# file left by a killed daemon is not enough).
daemon() {
	georepl daemon --config "$1" --node "$NODE" >>/tmp/daemon.log 2>&1 &
	i=0
	until georepl status >/dev/null 2>&1 || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
	georepl status >/dev/null 2>&1 || { tail -20 /tmp/daemon.log; false; }
}
# stopdaemon: SIGTERM the daemon and wait for it.
stopdaemon() {
	p=$(pidof georepl) || return 0
	kill $p
	while kill -0 $p 2>/dev/null; do sleep 0.1; done
}
RIG
. /etc/rig.sh
stty -echo
echo "@@BOOTED $NODE $(uname -r)"
exec env ENV=/etc/rig.sh sh
