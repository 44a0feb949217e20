"""The real-Xen tier: Xen (4.17 from Debian 12, 4.20 from Debian 13) and a
PV dom0 booted under QEMU (TCG), one boot per release.

``images`` builds everything from Debian's packages and this checkout (with
a cache), ``qemu`` boots it and reads the scenario results from the serial
console, ``dom0/`` holds what runs inside the machine and ``guest/`` the tiny
PV guest whose console proves it keeps running.
"""
