"""The Xen releases xensr builds for: one table, read by setup.py and tests.

The save/restore helper interface is the same from Xen 4.17 to 4.21; what
changes per release is how the two toolstack libraries are named.  Their
soname is ``lib<name>.so.<major>.<minor>`` (the file ``...<minor>.0``), and
their one exported symbol-version node was ``VERS_<major>.<minor>.0`` up to
4.17 and ``lib<name>_<major>.<minor>.0`` from 4.18 on (Xen then started to
generate the version script per library).  A helper binds to those exact
names, so the simulated host must carry the ones of the Xen it stands in for.

This file is plain Python with no imports from the project: setup.py loads
it by path before xensr exists.
"""

LIBRARIES = ("libxenctrl", "libxenguest")

#: What each simulated library exports: the four functions a libxl save
#: helper imports from it.
EXPORTS = {
    "libxenctrl": ("xc_interface_open", "xc_interface_close"),
    "libxenguest": ("xc_domain_save", "xc_domain_restore"),
}

#: Release -> (libxenctrl's node, libxenguest's node, the size of the
#: record header a COLO secondary writes on the back channel before its
#: dirty pfn list).  That header was the 8-byte type + length up to 4.17;
#: from 4.18 libxenguest writes its whole in-memory record instead, 16 bytes
#: on x86-64 (type, length and a NULL data pointer), while the primary still
#: reads 8: the zero pad is then read as the start of the next record.
RELEASES = {
    "4.17": ("VERS_4.17.0", "VERS_4.17.0", 8),
    "4.18": ("libxenctrl_4.18.0", "libxenguest_4.18.0", 16),
    "4.19": ("libxenctrl_4.19.0", "libxenguest_4.19.0", 16),
    "4.20": ("libxenctrl_4.20.0", "libxenguest_4.20.0", 16),
    "4.21": ("libxenctrl_4.21.0", "libxenguest_4.21.0", 16),
}


def release_of(modversion):
    """"4.20" from pkg-config's "4.20.0" (or "4.20"); ValueError when the
    release is not in RELEASES."""
    release = ".".join(modversion.strip().split(".")[:2])
    if release not in RELEASES:
        known = ", ".join(RELEASES)
        raise ValueError(f"Xen {modversion.strip()} is not one xensr knows ({known})")
    return release


def soname(lib, release):
    """The soname of LIB ("libxenctrl") in RELEASE ("4.20")."""
    return f"{lib}.so.{release}"


def node(lib, release):
    """The symbol-version node LIB's exports carry in RELEASE."""
    return RELEASES[release][LIBRARIES.index(lib)]


def colo_back_header(release):
    """Bytes of record header before a COLO secondary's dirty pfn list."""
    return RELEASES[release][2]


def version_script(lib, release):
    """A linker version script exporting LIB's EXPORTS at its node in
    RELEASE, and nothing else."""
    lines = [f"{node(lib, release)} {{", "    global:"]
    lines += [f"        {name};" for name in EXPORTS[lib]]
    lines += ["    local:", "        *;", "};", ""]
    return "\n".join(lines)


def c_defines(release):
    """The -D flags that tell simhost's C which release it simulates."""
    major, minor = release.split(".")
    return [f"-DSIM_XEN_MAJOR={major}", f"-DSIM_XEN_MINOR={minor}",
            f"-DSIM_COLO_BACK_HEADER={colo_back_header(release)}"]
