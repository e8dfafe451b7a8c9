#!/usr/bin/env python3
"""Keeps the Dockerfile and the offline image recipe (deploy/image/build.sh) from drifting apart.

  check.py --dockerfile Dockerfile --image IMAGE.tar [--run]
      Parses the Dockerfile's final stage and the image tarball's config and layer, and checks that they declare
      the same user, entrypoint, command, exposed ports and labels, that every file the Dockerfile COPYs and every
      file its base image provides (the `# base-files:` comment) is in the image, that the USER exists in the
      image's /etc/passwd and /etc/group, and that the binary's ELF interpreter and DT_NEEDED libraries are in
      the image. --run also unpacks the image and runs `ENTRYPOINT --version` in it with chroot as the image's
      user (needs root): proof that it starts with nothing but what is in the image (no shell).
      Prints one `ok -`/`not ok -` line per check and `image-check: N passed, M failed`; exit 1 on a failure.

  check.py --dockerfile Dockerfile --print-mkimage-args
      Prints a bash array assignment `config_args=(…)` with mkimage.py's --user/--entrypoint/--cmd/--expose/--label
      options taken from the Dockerfile: build.sh uses it, so the config is the Dockerfile's by construction.
Standard library only.
"""
import argparse
import io
import json
import os
import posixpath
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile


# ------------------------------------------------------------------------------------------ Dockerfile

def parse_dockerfile(path):
    """The final stage's USER, EXPOSE, ENTRYPOINT, CMD, LABEL, COPY destinations and `# base-files:`."""
    with open(path) as f:
        text = f.read()
    base_files = []
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if s.startswith("#"):
            if s.startswith("# base-files:"):
                base_files += s.split(":", 1)[1].split()
            continue
        if not s and not cur:
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    stage = None
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        rest = rest.strip()
        if word == "FROM":
            stage = {"from": rest.split()[0], "user": None, "expose": [], "entrypoint": None, "cmd": None,
                     "labels": {}, "copies": []}
            continue
        if stage is None:
            continue
        if word == "USER":
            stage["user"] = rest
        elif word == "EXPOSE":
            stage["expose"] += [p if "/" in p else p + "/tcp" for p in rest.split()]
        elif word in ("ENTRYPOINT", "CMD"):
            if not rest.startswith("["):
                sys.exit(f"check.py: {word} must use the JSON (exec) form: {rest}")
            stage[word.lower()] = json.loads(rest)
        elif word == "LABEL":
            for kv in shlex.split(rest):
                k, _, v = kv.partition("=")
                stage["labels"][k] = v
        elif word in ("COPY", "ADD"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            *srcs, dest = parts
            for src in srcs:
                stage["copies"].append(dest + posixpath.basename(src) if dest.endswith("/") else dest)
    if stage is None:
        sys.exit("check.py: no FROM in the Dockerfile")
    stage["base_files"] = base_files
    return stage


def mkimage_args(df):
    a = []
    if df["user"]:
        a += ["--user", df["user"]]
    if df["entrypoint"] is not None:
        a += ["--entrypoint", json.dumps(df["entrypoint"])]
    if df["cmd"] is not None:
        a += ["--cmd", json.dumps(df["cmd"])]
    for p in df["expose"]:
        a += ["--expose", p]
    for k, v in df["labels"].items():
        a += ["--label", f"{k}={v}"]
    return "config_args=(" + " ".join(shlex.quote(x) for x in a) + ")"


# ------------------------------------------------------------------------------------------ image

class Image:
    def __init__(self, path):
        with tarfile.open(path) as outer:
            names = outer.getnames()
            read = lambda n: outer.extractfile(n).read()
            if "index.json" in names:
                index = json.loads(read("index.json"))
                desc = index["manifests"][0]
                manifest = json.loads(read("blobs/sha256/" + desc["digest"].split(":", 1)[1]))
                self.config = json.loads(read("blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1]))
                layers = ["blobs/sha256/" + l["digest"].split(":", 1)[1] for l in manifest["layers"]]
            else:
                m = json.loads(read("manifest.json"))[0]
                self.config = json.loads(read(m["Config"]))
                layers = m["Layers"]
            self.entries = {}  # path -> (TarInfo, bytes|None); later layers win
            self.layer_blobs = [read(l) for l in layers]
        for blob in self.layer_blobs:
            with tarfile.open(fileobj=io.BytesIO(blob)) as t:
                for ti in t:
                    p = "/" + ti.name.lstrip("./").rstrip("/")
                    data = t.extractfile(ti).read() if ti.isreg() else None
                    self.entries[p] = (ti, data)

    def resolve(self, path, depth=0):
        """Follows symlinks (in any path component) inside the image; returns the final path or None."""
        if depth > 20:
            return None
        parts = [p for p in path.split("/") if p]
        cur = "/"
        for i, part in enumerate(parts):
            nxt = posixpath.join(cur, part)
            ent = self.entries.get(nxt)
            if ent is None:
                return None
            ti = ent[0]
            if ti.issym():
                target = ti.linkname if ti.linkname.startswith("/") else posixpath.join(cur, ti.linkname)
                rest = "/".join(parts[i + 1:])
                return self.resolve(posixpath.normpath(posixpath.join(target, rest)), depth + 1)
            cur = nxt
        return cur

    def file(self, path):
        r = self.resolve(path)
        return self.entries.get(r) if r else None


def elf_interp_and_needed(data):
    """(PT_INTERP, [DT_NEEDED]) of a 64-bit little-endian ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF")
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    interp, dynamic, loads = None, None, []
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == 3:  # PT_INTERP
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
    needed_offs, strtab = [], None
    if dynamic:
        off, size = dynamic
        for j in range(0, size, 16):
            tag, val = struct.unpack_from("<qQ", data, off + j)
            if tag == 0:
                break
            if tag == 1:
                needed_offs.append(val)
            elif tag == 5:
                strtab = val
    needed = []
    if strtab is not None:
        for vaddr, offset, filesz in loads:
            if vaddr <= strtab < vaddr + filesz:
                base = strtab - vaddr + offset
                for o in needed_offs:
                    end = data.index(b"\0", base + o)
                    needed.append(data[base + o:end].decode())
                break
    return interp, needed


LIB_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


# ------------------------------------------------------------------------------------------ checks

class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok - {what}")
        else:
            self.failed += 1
            print(f"not ok - {what}" + (f": {detail}" if detail else ""))


def user_ids(img, user):
    """(uid, gid) for a Dockerfile USER (numeric or names looked up in the image)."""
    u, _, g = user.partition(":")
    passwd = (img.file("/etc/passwd") or (None, b""))[1] or b""
    group = (img.file("/etc/group") or (None, b""))[1] or b""
    pw = [l.split(":") for l in passwd.decode().splitlines() if l.count(":") >= 6]
    gr = [l.split(":") for l in group.decode().splitlines() if l.count(":") >= 3]
    uid = int(u) if u.isdigit() else next((int(e[2]) for e in pw if e[0] == u), None)
    if g:
        gid = int(g) if g.isdigit() else next((int(e[2]) for e in gr if e[0] == g), None)
    else:
        gid = next((int(e[3]) for e in pw if e[2] == str(uid)), None)
    return uid, gid, pw, gr


def run_in_image(img, entrypoint, uid, gid):
    """Unpacks the image and runs ENTRYPOINT --version under chroot as uid:gid. (returncode, output)."""
    root = tempfile.mkdtemp(prefix="lstr-image-check-")
    os.chmod(root, 0o755)  # the image's / (mkdtemp makes it 0700)
    try:
        for blob in img.layer_blobs:
            with tarfile.open(fileobj=io.BytesIO(blob)) as t:
                # Our own image, owners kept (65532 for /home/nonroot): no extraction filter.
                extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
                t.extractall(root, numeric_owner=True, **extra)
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        # An empty environment: only what is in the image can be used.
        r = subprocess.run([chroot, f"--userspec={uid}:{gid}", root, entrypoint[0], "--version"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30, env={})
        return r.returncode, r.stdout.decode(errors="replace").strip()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dockerfile", required=True)
    ap.add_argument("--image")
    ap.add_argument("--print-mkimage-args", action="store_true")
    ap.add_argument("--run", action="store_true")
    a = ap.parse_args()
    df = parse_dockerfile(a.dockerfile)
    if a.print_mkimage_args:
        print(mkimage_args(df))
        return
    if not a.image:
        ap.error("--image is required")

    img = Image(a.image)
    cfg = img.config.get("config", {})
    r = Report()
    r.check(df["user"] is not None, "Dockerfile sets USER")
    r.check(cfg.get("User") == df["user"], f"user {df['user']!r}", f"image has {cfg.get('User')!r}")
    r.check(cfg.get("Entrypoint") == df["entrypoint"], f"entrypoint {df['entrypoint']}",
            f"image has {cfg.get('Entrypoint')}")
    r.check(cfg.get("Cmd") == df["cmd"], f"cmd {df['cmd']}", f"image has {cfg.get('Cmd')}")
    ports = sorted(cfg.get("ExposedPorts", {}) or {})
    r.check(ports == sorted(df["expose"]), f"exposed ports {sorted(df['expose'])}", f"image has {ports}")
    labels = cfg.get("Labels") or {}
    r.check(labels == df["labels"], f"labels {df['labels']}", f"image has {labels}")
    r.check(img.config.get("os") == "linux" and img.config.get("architecture") == "amd64", "linux/amd64")

    for path in df["copies"]:
        ent = img.file(path)
        r.check(ent is not None and ent[0].isreg(), f"COPY destination {path} is a file in the image")
    if df["entrypoint"]:
        ent = img.file(df["entrypoint"][0])
        r.check(ent is not None and ent[0].isreg() and ent[0].mode & 0o111, "entrypoint is an executable file")
    r.check(bool(df["base_files"]), "Dockerfile lists its base image's files (# base-files:)")
    for path in df["base_files"]:
        r.check(img.file(path) is not None, f"base file {path} is in the image")

    uid, gid, pw, gr = user_ids(img, df["user"] or "")
    r.check(uid is not None and uid != 0, f"USER resolves to a non-root uid ({uid})")
    r.check(any(e[2] == str(uid) for e in pw), f"uid {uid} is in the image's /etc/passwd")
    r.check(any(e[2] == str(gid) for e in gr), f"gid {gid} is in the image's /etc/group")

    ent = img.file(df["entrypoint"][0]) if df["entrypoint"] else None
    if ent and ent[1]:
        try:
            interp, needed = elf_interp_and_needed(ent[1])
        except ValueError as e:
            interp, needed = None, []
            r.check(False, "entrypoint is an ELF binary", str(e))
        if interp:
            r.check(img.file(interp) is not None, f"ELF interpreter {interp} is in the image")
        for lib in needed:
            found = any(img.file(posixpath.join(d, lib)) for d in LIB_DIRS)
            r.check(found, f"shared library {lib} is in the image")
        r.check(img.file("/bin/sh") is None, "no shell in the image (like distroless)")

    if a.run:
        if os.geteuid() != 0:
            r.check(False, "--run needs root (chroot)")
        else:
            rc, out = run_in_image(img, df["entrypoint"], uid, gid)
            r.check(rc == 0, f"`{df['entrypoint'][0]} --version` runs in the image as {uid}:{gid} ({out!r})",
                    f"exit {rc}")
    print(f"image-check: {r.passed} passed, {r.failed} failed")
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
