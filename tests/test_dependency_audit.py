"""Zero known vulnerabilities in what we ship: the runtime dependencies of `broadcast`
(install_requires and theirs, as installed; not the test extras).

pip-audit does the audit where its vulnerability service answers. On this project's
machines (developers' and CI's) the package index is reachable but pip-audit's services
are not: PyPI's per-version JSON API answers 404 through the index we reach, and OSV is
not reachable at all, so pip-audit can only skip every package. There the test falls
back on the one advisory feed that does answer, the index's per-project JSON, whose
`vulnerabilities` are those of the project's newest release (the same PyPA/OSV data
pip-audit reads):

* a package installed at its newest release is audited exactly;
* a package held back from its newest release by our Python (the newest needs a newer
  one) is checked against what affects the newest release, and named in the output;
* a package held back for any other reason (a pin of ours or of a dependency) cannot be
  audited here: the test fails and says so, so that the pin is raised or the package
  audited by hand (`pip-audit` where its service is reachable).

A feed that does not answer at all fails the test: it never passes without an audit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from pip._internal.models.index import PyPI

TIMEOUT_S = 30
# It needs the package index: the test command runs it before entering the network
# namespace (`pytest -m network`), and the rest inside it (`-m "not network"`).
pytestmark = pytest.mark.network


def runtime_dependencies() -> dict[str, str]:
    """Name -> installed version of everything `pip install broadcast` brings."""
    found: dict[str, str] = {}
    todo = ["broadcast"]
    while todo:
        for line in metadata.requires(todo.pop()) or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra (ours: test) or another platform's dependency
            name = canonicalize_name(requirement.name)
            if name not in found:
                found[name] = metadata.version(name)
                todo.append(name)
    return found


def run_pip_audit(pins: dict[str, str], tmp_path: Path) -> dict[str, Any] | None:
    """pip-audit's JSON report, or None when its service could not audit (unreachable)."""
    requirements = tmp_path / "runtime.txt"
    requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip_audit", "--vulnerability-service", "pypi"),
            *("--requirement", str(requirements), "--no-deps", "--disable-pip"),
            *("--strict", "--format", "json", "--progress-spinner", "off"),
            *("--timeout", str(TIMEOUT_S)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = None
    if report is not None and not any(
        d.get("skip_reason") for d in report["dependencies"]
    ):
        return report
    # --strict: a package the service could not find (404) or reach ends the audit.
    if "could not be audited" in result.stderr or "connect" in result.stderr.lower():
        return None
    raise AssertionError(f"pip-audit failed:\n{result.stdout}\n{result.stderr}")


def findings_of(report: dict[str, Any]) -> list[str]:
    return [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v['fix_versions'])})"
        for d in report["dependencies"]
        for v in d.get("vulns", [])
    ]


def project(name: str) -> dict[str, Any]:
    url = f"{PyPI.pypi_url}/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return json.load(response)
    except (urllib.error.URLError, TimeoutError) as error:
        raise AssertionError(
            f"the advisory feed did not answer for {name} ({url}: {error}):"
            " the dependencies could not be audited"
        ) from None


def audit_from_newest_releases(pins: dict[str, str]) -> tuple[list[str], list[str]]:
    """(findings, notes) from the advisories of each project's newest release."""
    findings: list[str] = []
    notes: list[str] = []
    python = Version(".".join(map(str, sys.version_info[:3])))
    with ThreadPoolExecutor(8) as pool:
        projects = dict(zip(pins, pool.map(project, pins), strict=True))
    for name, version in sorted(pins.items()):
        data = projects[name]
        installed, newest = Version(version), Version(data["info"]["version"])
        for vuln in data.get("vulnerabilities") or []:
            fixes = [Version(f) for f in vuln.get("fixed_in") or []]
            if vuln.get("withdrawn") or any(f <= installed for f in fixes):
                continue
            findings.append(
                f"{name} {version}: {vuln['id']} (fixed in"
                f" {', '.join(map(str, fixes)) or 'no release yet'})"
                f" {vuln.get('summary') or ''}".rstrip()
            )
        if installed >= newest:
            continue
        needs = data["info"].get("requires_python") or ""
        if needs and python not in SpecifierSet(needs):
            notes.append(
                f"{name} {version}: newest {newest} needs Python {needs}; checked"
                " against the newest release's advisories only"
            )
        else:
            findings.append(
                f"{name} {version} is not the newest release ({newest}): only the"
                " newest release's advisories are reachable here, so it cannot be"
                " audited. Raise the pin that holds it back (setup.cfg, or the"
                " dependency that pins it), or audit it with pip-audit where its"
                " vulnerability service is reachable."
            )
    return findings, notes


def test_runtime_dependencies_have_no_known_vulnerability(tmp_path: Path) -> None:
    pins = runtime_dependencies()
    assert {"aiohttp", "aiortc", "aioice", "cryptography"} <= set(pins), pins
    report = run_pip_audit(pins, tmp_path)
    if report is not None:
        findings = findings_of(report)
        assert not findings, "pip-audit: known vulnerabilities:\n" + "\n".join(findings)
        return
    findings, notes = audit_from_newest_releases(pins)
    print("pip-audit's service is unreachable: audited from each newest release.")
    print("\n".join(notes))
    assert not findings, "known vulnerabilities, or unaudited packages:\n" + "\n".join(
        findings
    )
