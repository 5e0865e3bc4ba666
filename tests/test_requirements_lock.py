"""The locks (requirements/*.lock, written by `./run lock`) against the pins people edit
(requirements/*.txt): every pin is in its lock at its version, every locked package is pinned
and hashed, and the images install what the tests ran. Files only, no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.environment import ROOT

REQUIREMENTS = ROOT / "requirements"
INPUTS = sorted(path.stem for path in REQUIREMENTS.glob("*.txt"))
IMAGES = ("api", "worker")  # the Dockerfile's; resolved against PyPI alone (see ./run lock)

ENTRY = re.compile(r"(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?P<hashes>(\s+--hash=\S+)*)\s*")


def pins(path: Path) -> dict[str, Requirement]:
    """What an input names, its `-r` includes followed."""
    found: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found.update(pins(path.parent / line.removeprefix("-r ").strip()))
        elif line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def locked(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """Each package of a lock: its version and its hashes. Fails on any other line."""
    entries = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = ENTRY.fullmatch(line)
        assert match, f"{path.name}: not a pinned package with its hashes: {line[:120]!r}"
        hashes = match["hashes"].split()
        for option in hashes:
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option), (path.name, option)
        entries[canonicalize_name(match["name"])] = (Version(match["version"]), hashes)
    return entries


def test_every_input_has_its_lock_and_every_lock_its_input():
    assert INPUTS, "no requirements/*.txt"
    assert sorted(path.stem for path in REQUIREMENTS.glob("*.lock")) == INPUTS


@pytest.mark.parametrize("name", INPUTS)
def test_every_pin_is_locked_at_its_version(name):
    lock = locked(REQUIREMENTS / f"{name}.lock")
    for package, requirement in pins(REQUIREMENTS / f"{name}.txt").items():
        # the inputs pin each direct dependency exactly; the lock adds what they pull in
        assert [spec.operator for spec in requirement.specifier] == ["=="], requirement
        assert package in lock, f"{name}.lock lacks {requirement} (run ./run lock)"
        version = lock[package][0]
        # PEP 440: torch==2.13.0 is met by the CPU build's 2.13.0+cpu
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}.lock has {package} {version}, {name}.txt pins {requirement} (./run lock)"
        )


@pytest.mark.parametrize("name", INPUTS)
def test_every_locked_package_is_pinned_with_hashes(name):
    lock = locked(REQUIREMENTS / f"{name}.lock")
    assert lock
    assert {package for package, (_version, hashes) in lock.items() if not hashes} == set()
    # no index or find-links lines: a lock names no machine's mirrors or wheel folders
    text = (REQUIREMENTS / f"{name}.lock").read_text()
    assert not re.search(r"^\s*--(index-url|extra-index-url|find-links)", text, re.M)


@pytest.mark.parametrize("image", IMAGES)
def test_the_images_install_what_the_tests_ran(image):
    """dev.lock is what the suite runs on; each package an image shares with it has its
    version (torch's +cpu label aside: the checkout's is the CPU build, the image's CUDA)."""
    dev, lock = locked(REQUIREMENTS / "dev.lock"), locked(REQUIREMENTS / f"{image}.lock")
    differ = {
        package: (str(dev[package][0]), str(version))
        for package, (version, _hashes) in lock.items()
        if package in dev and dev[package][0].public != version.public
    }
    assert differ == {}


def test_torch_is_the_cpu_build_here_and_pypis_in_the_worker_image():
    dev, worker = locked(REQUIREMENTS / "dev.lock"), locked(REQUIREMENTS / "worker.lock")
    assert dev["torch"][0].local == "cpu"  # never the multi-GB CUDA build on a CPU machine
    assert worker["torch"][0].local is None  # PyPI's: CUDA on x86_64 Linux, for GPU nodes


def test_setup_installs_the_dev_lock_with_hashes():
    run = (ROOT / "run").read_text()
    assert re.search(r"pip\" install -q --require-hashes -r requirements/dev\.lock\n", run)
    # a changed lock reinstalls
    assert re.search(r"want=\$\(cat requirements/dev\.lock ", run)
