#!/bin/sh
# setup.sh installs what the VM rig needs and fetches the bookworm-backports
# kernel into the cache directory given as $1 (default: .cache/vm in the repo).
#
# The archive URI of the backports suite is taken from the system's own
# deb822 Debian sources at run time, so no registry host is named here.
set -eu

cache=${1:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)/.cache/vm}
mkdir -p "$cache"

need=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx modprobe && \
	file -L /bin/busybox 2>/dev/null | grep -q static || need="$need busybox-static"
command -v mke2fs >/dev/null 2>&1 || need="$need e2fsprogs"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v xz >/dev/null 2>&1 || need="$need xz-utils"
command -v depmod >/dev/null 2>&1 || need="$need kmod"
command -v file >/dev/null 2>&1 || need="$need file"
# The rdma transport plugin (cgo), its provider for Soft-RoCE, and rdma(8).
[ -e /usr/include/infiniband/verbs.h ] || need="$need libibverbs-dev"
[ -e /usr/include/rdma/rdma_cma.h ] || need="$need librdmacm-dev"
[ -e /etc/libibverbs.d/rxe.driver ] || need="$need ibverbs-providers"
command -v rdma >/dev/null 2>&1 || need="$need iproute2"
# The in-kernel DRBD 8.4 that make vmbench compares georepl with is driven
# by drbd-utils (drbdadm-84, drbdsetup-84), copied into the initramfs.
[ -x /lib/drbd/drbdadm-84 ] || need="$need drbd-utils"
# make vmbench counts the daemons' system calls per write with strace(1).
command -v strace >/dev/null 2>&1 || need="$need strace"

src=/etc/apt/sources.list.d/debian.sources
bp=/etc/apt/sources.list.d/georepl-backports.sources
if [ ! -f "$bp" ]; then
	# The URI of the stanza that carries the main suite (not -security).
	uri=$(awk '/^URIs:/{u=$2} /^Suites:/{for(i=2;i<=NF;i++) if($i=="bookworm") print u}' "$src" | head -n1)
	[ -n "$uri" ] || { echo "setup.sh: no bookworm URI in $src" >&2; exit 1; }
	keyring=$(awk '/^Signed-By:/{print $2; exit}' "$src")
	{
		echo "Types: deb"
		echo "URIs: $uri"
		echo "Suites: bookworm-backports"
		echo "Components: main"
		[ -n "$keyring" ] && echo "Signed-By: $keyring"
	} >"$bp"
	updated=0
else
	updated=1
fi

if [ -n "$need" ] || [ "$updated" = 0 ] || ! ls "$cache"/linux-image-6.12.*+deb12*-amd64_*.deb 2>/dev/null | grep -qv -e -rt- -e -cloud-; then
	apt-get update -qq
fi
if [ -n "$need" ]; then
	echo "installing:$need"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

if ! ls "$cache"/linux-image-6.12.*+deb12*-amd64_*.deb 2>/dev/null | grep -qv -e -rt- -e -cloud-; then
		# The generic flavour (not -rt, not -cloud: the latter lacks nbd).
	pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12[.0-9]*-amd64$' | awk '{print $1}' | sort -V | tail -n1)
	[ -n "$pkg" ] || { echo "setup.sh: no linux-image-6.12 package in bookworm-backports" >&2; exit 1; }
	(cd "$cache" && apt-get download -qq "$pkg")
fi
deb=$(ls "$cache"/linux-image-6.12.*+deb12*-amd64_*.deb | grep -v -e -rt- -e -cloud- | sort -V | tail -n1)
if [ ! -d "$cache/kernel" ] || [ "$deb" -nt "$cache/kernel" ]; then
	rm -rf "$cache/kernel"
	mkdir -p "$cache/kernel"
	dpkg-deb -x "$deb" "$cache/kernel"
	touch "$cache/kernel"
fi
echo "$cache/kernel"
