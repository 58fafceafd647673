#!/bin/sh
# Checks that BCC will find headers for the running kernel before starting the agent, so a node
# without them fails with instructions instead of a compiler error.
set -eu

release=$(uname -r)
if [ -e "/lib/modules/$release/build/include/linux/kconfig.h" ] \
   || [ -e "/lib/modules/$release/build/include/generated/autoconf.h" ] \
   || [ -e /sys/kernel/kheaders.tar.xz ] \
   || [ -n "${BCC_KERNEL_SOURCE:-}" ]; then
    exec podflame "$@"
fi

cat >&2 <<MSG
podflame agent: no kernel headers for the running kernel $release on this node.

BCC compiles the sampler against the kernel's headers. It looked for:
  /lib/modules/$release/build   (host /lib/modules and /usr/src are mounted read-only)
  /sys/kernel/kheaders.tar.xz   (kernels built with CONFIG_IKHEADERS, after 'modprobe kheaders')

Fix on the node, then restart this pod:
  Debian/Ubuntu:   apt-get install linux-headers-$release
  RHEL/Fedora:     dnf install kernel-devel-$release
  Other images:    load the kheaders module (modprobe kheaders), or set BCC_KERNEL_SOURCE in the
                   DaemonSet to a mounted header tree.
MSG
exit 78  # EX_CONFIG: CrashLoopBackOff shows this message in 'kubectl logs'
