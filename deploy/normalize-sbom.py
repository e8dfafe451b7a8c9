#!/usr/bin/env python3
"""Makes cargo-cyclonedx's SBOM a function of the commit alone (deploy/release.sh runs it).

  normalize-sbom.py SBOM_JSON SOURCE_DIR COMMIT   > out.cdx.json

cargo-cyclonedx already takes metadata.timestamp from SOURCE_DATE_EPOCH; two things still vary per run:
  - bom-refs of the workspace package name its absolute source path (path+file:///that/dir#ls-token-refresher@…):
    SOURCE_DIR becomes /src, the same prefix the release binary's remapped paths use;
  - serialNumber is a random UUID: it becomes a UUIDv5 of the commit and the rest of the document, so one commit
    gives one serial number and a different SBOM a different one (CycloneDX wants it unique per BOM, not random).
The commit is recorded as the metadata property ls-token-refresher:git:commit.
"""
import json
import sys
import uuid


def main():
    path, source_dir, commit = sys.argv[1:4]
    text = open(path).read().replace(f"file://{source_dir.rstrip('/')}#", "file:///src#")
    if source_dir.rstrip("/") in text:
        sys.exit(f"normalize-sbom: {source_dir} still appears in the SBOM")
    bom = json.loads(text)
    bom["metadata"].setdefault("properties", []).append({"name": "ls-token-refresher:git:commit", "value": commit})
    bom.pop("serialNumber", None)
    canonical = json.dumps(bom, sort_keys=True, separators=(",", ":"))
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"ls-token-refresher:{commit}:{canonical}")
    out = {"bomFormat": bom.pop("bomFormat"), "specVersion": bom.pop("specVersion"), "serialNumber": serial.urn}
    out.update(bom)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
