#!/usr/bin/env python3
"""Checks that every place naming the release version agrees with VERSION; deploy/release.sh runs it first and
refuses to build anything when it fails.

  check-versions.py VERSION [--repo DIR]

The places (each a user-visible promise about which build they get):
  Cargo.toml [package] version        the binary's --version and ls_token_refresher_build_info{version}
  Cargo.lock's ls-token-refresher      so `cargo build --locked` does not rewrite it
  Chart.yaml version and appVersion    the chart package's name and the image tag it installs
  values.yaml image.tag                "" (= appVersion) or VERSION: the chart's default image
  deploy/*.yaml our image's tag        the plain manifests generated from the chart
  deploy/image/build.sh default tag    derived from Cargo.toml (checked here that it still is)
  CHANGELOG.md top released entry      the first "## [X.Y.Z]" after "## [Unreleased]" (Keep a Changelog)
Prints one line per disagreement and exits 1; exits 0 silently when all agree. Needs PyYAML.
"""
import argparse
import pathlib
import re
import sys
import tomllib

import yaml

# SemVer 2.0.0 without build metadata: what Cargo, Helm (chart versions must be SemVer 2) and an OCI tag (no '+')
# all accept.
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")
OUR_IMAGE = "ghcr.io/ls-token-refresher/ls-token-refresher"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("version")
    ap.add_argument("--repo", default=pathlib.Path(__file__).resolve().parent.parent)
    a = ap.parse_args()
    repo = pathlib.Path(a.repo)
    v = a.version
    bad = []

    if not SEMVER.match(v):
        bad.append(f"{v!r} is not a version X.Y.Z[-pre] (SemVer, no build metadata)")

    cargo = tomllib.loads((repo / "Cargo.toml").read_text())
    if cargo["package"]["version"] != v:
        bad.append(f"Cargo.toml: [package] version = {cargo['package']['version']!r}, release is {v!r}")
    lock = tomllib.loads((repo / "Cargo.lock").read_text())
    locked = [p["version"] for p in lock["package"] if p["name"] == cargo["package"]["name"]]
    if locked != [v]:
        bad.append(f"Cargo.lock: {cargo['package']['name']} is {locked}, release is {v!r} (run cargo build)")

    chart_dir = repo / "charts/ls-token-refresher"
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    for key in ("version", "appVersion"):
        if str(chart.get(key)) != v:
            bad.append(f"charts/ls-token-refresher/Chart.yaml: {key} = {chart.get(key)!r}, release is {v!r}")
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    tag = str((values.get("image") or {}).get("tag", ""))
    if tag not in ("", v):
        bad.append(f"charts/ls-token-refresher/values.yaml: image.tag = {tag!r} (want \"\" = appVersion, or {v!r})")

    for f in sorted((repo / "deploy").glob("*.yaml")):
        for m in re.finditer(rf"image:\s*[\"']?{re.escape(OUR_IMAGE)}:([^\s\"'@]+)", f.read_text()):
            if m.group(1) != v:
                bad.append(f"deploy/{f.name}: image tag {m.group(1)!r}, release is {v!r} (tests/chart/generate-deploy.sh)")

    build = (repo / "deploy/image/build.sh").read_text()
    if f'TAG="{OUR_IMAGE}:$VERSION"' not in build or "Cargo.toml" not in build:
        bad.append("deploy/image/build.sh: the default tag is no longer <image>:<Cargo.toml version>")

    changelog = repo / "CHANGELOG.md"
    if not changelog.is_file():
        bad.append("CHANGELOG.md: missing")
    else:
        heads = re.findall(r"^## \[([^\]]+)\]", changelog.read_text(), re.M)
        released = [h for h in heads if h.lower() != "unreleased"]
        if not released or released[0] != v:
            top = released[0] if released else None
            bad.append(f"CHANGELOG.md: top released entry is {top!r}, release is {v!r}")

    for b in bad:
        print(f"version mismatch: {b}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
