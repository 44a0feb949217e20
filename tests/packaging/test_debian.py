"""debian/: what can be checked without building the package (bootstrap's
`deb` step builds it, runs lintian and installs it into a clean root)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


def test_changelog_carries_the_package_version():
    first = read("debian", "changelog").split("\n", 1)[0]
    m = re.match(r"xensr \(([^)-]+)-[^)]+\) ", first)
    assert m, first
    init = read("xensr", "__init__.py")
    assert re.search(rf'^__version__ = "{re.escape(m.group(1))}"', init, re.MULTILINE)


def test_build_depends_on_xen_and_the_python_toolchain():
    control = read("debian", "control")
    build_depends = re.search(r"^Build-Depends:(.*?)^\S", control, re.MULTILINE | re.DOTALL).group(1)
    names = {re.split(r"[\s(]", d.strip())[0] for d in build_depends.split(",") if d.strip()}
    assert {"libxen-dev", "cython3", "python3-setuptools", "pybuild-plugin-pyproject",
            "dh-sequence-python3"} <= names


def test_every_lintian_override_gives_its_reason():
    """An override is preceded by a comment saying why."""
    for name in sorted(os.listdir(os.path.join(ROOT, "debian"))):
        if not name.endswith("lintian-overrides"):
            continue
        lines = read("debian", name).splitlines()
        for i, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                assert i > 0 and lines[i - 1].startswith("#"), f"{name}: {line} has no reason"
