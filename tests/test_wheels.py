"""Every Python version the template allows can install requirements.txt from wheels alone.

Flex Consumption (Linux, x86_64) builds the app remotely: pip installs requirements.txt there, and
a pin with no wheel for that Python would have to be compiled (cramjam, for one, needs Rust). So
for each version in main.bicep's ``@allowed`` list of ``pythonVersion`` this asks PyPI, through
``pip download --only-binary=:all: --no-deps``, for a wheel of every pin, as a CPython of that
version on manylinux x86_64 would take it: any manylinux tag up to glibc 2.28 (assumed of the
Linux build image, and cramjam's only x86_64 wheels need it; pip does not widen an explicit
``--platform`` to older glibc versions by itself, so each tag is listed), plus pure-Python wheels
(``py3-none-any``, which pip accepts whatever the platform; ``any`` is listed all the same). A gap
fails, naming the package, the version and pip's reason.

PyPI is asked directly (the machine's own pip configuration, extra indexes and find-links, is
left out, as Azure's remote build knows none of it). The wheels are kept in
``.peers/wheel-check/cp<version>/`` (pip downloads a file only when it is not there yet, its hash
checked against the index; pip's HTTP cache helps too where the index sends cache headers), so a
second run only reads the index pages. When PyPI cannot be reached the test fails under CI
(CI=true) and is skipped elsewhere.
"""
from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from peers import in_ci
from test_infra import MAIN, Template

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
DEPLOY_DOC = ROOT / "docs" / "deploying.md"
PYPI = "https://pypi.org/simple/"
WHEELS = ROOT / ".peers" / "wheel-check"  # kept between runs (.peers/ is not in git)

# The platform tags a remote build on Flex Consumption (Linux x86_64, glibc >= 2.28) installs.
GLIBC_MINORS = range(5, 29)  # manylinux_2_5 .. manylinux_2_28
PLATFORMS = ([f"manylinux_2_{minor}_x86_64" for minor in GLIBC_MINORS]
             + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"])
PIP_TIMEOUT = 30  # seconds per connection; pip's own retries are cut to 1
RUN_TIMEOUT = 240  # seconds for one pip download


def allowed_python_versions() -> list[str]:
    """The ``@allowed`` values of main.bicep's ``pythonVersion`` parameter."""
    _, decorators = Template(MAIN).params["pythonVersion"]
    match = re.search(r"@allowed\(\[(.*?)\]\)", decorators, re.DOTALL)
    assert match, decorators
    return re.findall(r"'([^']+)'", match.group(1))


def pins() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    found = [line for line in lines if line]
    assert found and all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.]+", pin) for pin in found), found
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _pip_env() -> dict[str, str]:
    """This environment without what points pip elsewhere than PyPI (indexes, find-links,
    constraints), and without the user's pip configuration file; certificates, proxies and
    the cache stay."""
    dropped = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT",
               "PIP_REQUIREMENT", "PIP_ONLY_BINARY", "PIP_NO_BINARY", "PIP_PLATFORM", "PIP_PYTHON_VERSION",
               "PIP_REQUIRE_VIRTUALENV", "PIP_TARGET", "PIP_NO_CACHE_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PIP_CONFIG_FILE"] = os.devnull  # an existing file here: pip skips the per-user config
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def pip_download(version: str, requirements: list[str], dest: Path) -> subprocess.CompletedProcess:
    abi = "cp" + version.replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
               "--index-url", PYPI, "--timeout", str(PIP_TIMEOUT), "--retries", "1", "--progress-bar", "off",
               "--python-version", version, "--implementation", "cp", "--abi", abi, "-d", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += requirements
    return subprocess.run(command, capture_output=True, text=True, env=_pip_env(), timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def _reason(pin: str, result: subprocess.CompletedProcess) -> str:
    text = result.stdout + result.stderr
    python_only = re.search(r"require a different python version: (.*)", text)
    if python_only and pin.split("==")[1] in python_only.group(1):
        version = re.escape(pin.split("==")[1])
        requires = re.search(rf"(?:^|; ){version} (Requires-Python [^;\n]*)", python_only.group(1))
        return requires.group(1) if requires else "Requires-Python excludes it"
    missing = re.search(r"ERROR: (No matching distribution found for [^\n]*)", text)
    if missing:
        return f"no wheel for this Python on manylinux x86_64 ({missing.group(1)})"
    return "pip: " + " | ".join(text.strip().splitlines()[-3:])


@pytest.fixture(scope="module")
def pypi():
    """PyPI's simple index answers, or the test skips (fails under CI)."""
    cafile = os.environ.get("PIP_CERT") or None
    try:
        context = ssl.create_default_context(cafile=cafile)
        with urllib.request.urlopen(urllib.request.Request(PYPI + "pip/", method="HEAD"), timeout=15,
                                    context=context) as answer:
            answer.read()
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = f"PyPI ({PYPI}) cannot be reached: {exc}"
        if in_ci():
            pytest.fail(f"{reason} (CI=true, so this is a failure)", pytrace=False)
        pytest.skip(reason)
    return PYPI


@pytest.mark.parametrize("version", allowed_python_versions())
def test_every_pin_has_a_wheel_for_each_allowed_python(pypi, version):
    wanted = pins()
    dest = WHEELS / ("cp" + version.replace(".", ""))
    result = pip_download(version, ["-r", str(REQUIREMENTS)], dest)
    if result.returncode != 0:
        # pip stops at the first gap: ask for each pin alone to name them all.
        gaps = []
        for pin in wanted:
            alone = pip_download(version, [pin], dest)
            if alone.returncode != 0:
                gaps.append(f"{pin}: {_reason(pin, alone)}")
        assert gaps, f"pip download failed for Python {version}, yet each pin alone worked:\n{result.stderr[-2000:]}"
        pytest.fail(f"Python {version} (allowed by main.bicep's pythonVersion) has no wheel for:\n  "
                    + "\n  ".join(gaps), pytrace=False)
    pinned = {(_normalized(pin.split("==")[0]), pin.split("==")[1]) for pin in wanted}
    for path in dest.iterdir():  # wheels of earlier pins go
        if (_normalized(path.name.split("-")[0]), path.name.split("-")[1]) not in pinned:
            path.unlink()
    wheels = {path.name for path in dest.iterdir()}
    assert all(name.endswith(".whl") for name in wheels), wheels
    got = {(_normalized(name.split("-")[0]), name.split("-")[1]) for name in wheels}
    assert got == pinned, f"wheels {sorted(wheels)} for pins {wanted}"


def test_the_platforms_take_pure_python_and_older_manylinux_wheels():
    """The tag list is what lets pure-Python, abi3 and older manylinux wheels through and keeps
    out what a remote build could not install; checked offline with the tags pip derives from
    these options (packaging's cpython_tags and compatible_tags), on wheels of the kinds the pins
    ship."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    tags = set(cpython_tags((3, 11), ["cp311"], PLATFORMS)) | set(compatible_tags((3, 11), "cp311", PLATFORMS))
    for accepted in ("requests-2.34.2-py3-none-any.whl",
                     "jsonschema_rs-0.60.3-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                     "cramjam-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                     "protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl"):
        assert parse_wheel_filename(accepted)[3] & tags, accepted
    for refused in ("cramjam-2.14.0-cp310-cp310-manylinux_2_28_x86_64.whl",  # another Python
                    "x-1.0-cp311-cp311-manylinux_2_34_x86_64.whl",  # a newer glibc than the build has
                    "x-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "x-1.0-cp311-cp311-manylinux_2_28_aarch64.whl",
                    "x-1.0-cp311-cp311-win_amd64.whl"):
        assert not parse_wheel_filename(refused)[3] & tags, refused


def test_readme_names_the_allowed_python_versions():
    """The Deploy section (docs/deploying.md) says which Python versions the template takes
    (``INFRA_TEST_README`` may name another copy of that page, as for tests/test_infra.py)."""
    text = Path(os.environ.get("INFRA_TEST_README") or DEPLOY_DOC).read_text(encoding="utf-8")
    sentence = re.search(r"`pythonVersion`[^.]*?\ballows Python (?P<list>3\.\d+(?:(?:, | and | or )3\.\d+)*)", text)
    assert sentence, ("docs/deploying.md has no sentence saying \"`pythonVersion` ... allows Python 3.x and 3.y\" "
                      "(the Deploy section)")
    assert re.findall(r"3\.\d+", sentence.group("list")) == allowed_python_versions()
    default, _ = Template(MAIN).params["pythonVersion"]
    assert Template(MAIN).value(default) in allowed_python_versions()
