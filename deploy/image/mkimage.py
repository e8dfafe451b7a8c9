#!/usr/bin/env python3
"""Builds a single-layer container image tarball without a container engine.

The output is one tar that is at the same time an OCI image layout (oci-layout, index.json, blobs/sha256/…)
and a `docker save` archive (manifest.json with RepoTags), the format Docker 25+ writes. It loads with
`ctr images import`, `docker load`, `podman load` and `skopeo copy oci-archive:…`.

The image is reproducible: every entry is owned by 0:0 unless told otherwise, has mtime SOURCE_DATE_EPOCH
(default 0), and entries are sorted; the same inputs give the same digests.

  mkimage.py --out img.tar --tag NAME:TAG
      [--file SRC:DEST[:MODE[:UID:GID]]]...   copy a file (symlinks in SRC are followed)
      [--dir DEST[:MODE[:UID:GID]]]...        an (empty) directory
      [--symlink DEST:TARGET]...
      [--text DEST:MODE:CONTENT]...           a file with this literal content (\\n is a newline)
      [--user U] [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir D]
      [--expose 9417/tcp]... [--label K=V]... [--gzip]
      [@ARGS_FILE]...                         more arguments, one per line (for images of many files)
--gzip compresses the layer (tar+gzip; smaller tarball and smaller content store, same rootfs diff ID).
Prints the manifest digest (sha256:…) on stdout.
Parent directories are created 0755 root:root. Standard library only.
"""
import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def parse_owner(parts, default_mode):
    mode = int(parts[0], 8) if parts and parts[0] else default_mode
    uid = int(parts[1]) if len(parts) > 1 else 0
    gid = int(parts[2]) if len(parts) > 2 else uid if len(parts) > 1 else 0
    return mode, uid, gid


class Layer:
    def __init__(self):
        self.entries = {}  # path (no leading /) -> (TarInfo, bytes|None)

    def _info(self, path, typ, mode, uid, gid):
        ti = tarfile.TarInfo(path)
        ti.type = typ
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = EPOCH
        return ti

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = (self._info(p, tarfile.DIRTYPE, 0o755, 0, 0), None)

    @staticmethod
    def norm(dest):
        p = os.path.normpath("/" + dest).lstrip("/")
        if not p or p.startswith(".."):
            sys.exit(f"mkimage: bad destination {dest!r}")
        return p

    def add_bytes(self, dest, data, mode, uid=0, gid=0):
        p = self.norm(dest)
        self._parents(p)
        ti = self._info(p, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        self.entries[p] = (ti, data)

    def add_file(self, src, dest, mode=None, uid=0, gid=0):
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = stat.S_IMODE(os.stat(src).st_mode)
        self.add_bytes(dest, data, mode, uid, gid)

    def add_dir(self, dest, mode=0o755, uid=0, gid=0):
        p = self.norm(dest)
        self._parents(p)
        self.entries[p] = (self._info(p, tarfile.DIRTYPE, mode, uid, gid), None)

    def add_symlink(self, dest, target):
        p = self.norm(dest)
        self._parents(p)
        ti = self._info(p, tarfile.SYMTYPE, 0o777, 0, 0)
        ti.linkname = target
        self.entries[p] = (ti, None)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for p in sorted(self.entries):
                ti, data = self.entries[p]
                t.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def jbytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 fromfile_prefix_chars="@")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", required=True, help="image reference, e.g. example.org/name:1.0")
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--dir", action="append", default=[])
    ap.add_argument("--symlink", action="append", default=[])
    ap.add_argument("--text", action="append", default=[])
    ap.add_argument("--user")
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir")
    ap.add_argument("--expose", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--gzip", action="store_true")
    a = ap.parse_args()

    layer = Layer()
    for spec in a.dir:
        dest, *rest = spec.split(":")
        layer.add_dir(dest, *parse_owner(rest, 0o755))
    for spec in a.file:
        src, dest, *rest = spec.split(":")
        mode, uid, gid = parse_owner(rest, None)
        layer.add_file(src, dest, mode, uid, gid)
    for spec in a.symlink:
        dest, target = spec.split(":", 1)
        layer.add_symlink(dest, target)
    for spec in a.text:
        dest, mode, content = spec.split(":", 2)
        layer.add_bytes(dest, content.replace("\\n", "\n").encode(), int(mode, 8))

    layer_tar = layer.tar()
    diff_id = sha(layer_tar)
    layer_type = "application/vnd.oci.image.layer.v1.tar"
    if a.gzip:
        # mtime 0 and no file name in the gzip header: the same layer gives the same blob.
        layer_tar = gzip.compress(layer_tar, compresslevel=6, mtime=0)
        layer_type += "+gzip"
    layer_digest = sha(layer_tar)

    cfg = {}
    if a.user:
        cfg["User"] = a.user
    if a.entrypoint:
        cfg["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg["Cmd"] = json.loads(a.cmd)
    cfg["Env"] = a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    if a.workdir:
        cfg["WorkingDir"] = a.workdir
    if a.expose:
        cfg["ExposedPorts"] = {(p if "/" in p else p + "/tcp"): {} for p in a.expose}
    if a.label:
        cfg["Labels"] = dict(kv.split("=", 1) for kv in a.label)
    created = datetime.datetime.fromtimestamp(EPOCH, datetime.timezone.utc)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created.strftime("%Y-%m-%dT%H:%M:%SZ"), "created_by": "mkimage.py"}],
    }
    config_b = jbytes(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config_b),
                   "size": len(config_b)},
        "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": len(layer_tar)}],
    }
    manifest_b = jbytes(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(manifest_b),
            "size": len(manifest_b),
            "annotations": {
                # containerd names the imported image after this one; OCI tools use the ref.name.
                "io.containerd.image.name": a.tag,
                "org.opencontainers.image.ref.name": a.tag.rsplit(":", 1)[-1] if ":" in a.tag.split("/")[-1] else "latest",
            },
        }],
    }
    blob = lambda d: "blobs/sha256/" + d.split(":", 1)[1]
    docker_manifest = [{"Config": blob(sha(config_b)), "RepoTags": [a.tag], "Layers": [blob(layer_digest)]}]

    files = [
        ("oci-layout", jbytes({"imageLayoutVersion": "1.0.0"})),
        ("index.json", jbytes(index)),
        ("manifest.json", jbytes(docker_manifest)),
        (blob(sha(config_b)), config_b),
        (blob(layer_digest), layer_tar),
        (blob(sha(manifest_b)), manifest_b),
    ]
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            t.addfile(ti)
        for name, data in sorted(files):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, EPOCH
            t.addfile(ti, io.BytesIO(data))
    os.replace(tmp, a.out)
    print(sha(manifest_b))


if __name__ == "__main__":
    main()
