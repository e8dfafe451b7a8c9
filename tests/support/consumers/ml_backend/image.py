#!/usr/bin/env python3
"""Builds the stock ML backend (label-studio-ml 1.0.9) as a container image, offline, for the pods test of
deploy/proxy-sidecar.yaml. No container engine, no registry: deploy/image/mkimage.py makes the tarball.

  python3 image.py --venv-python PATH [--cache DIR] [--tag REF]

  --venv-python  bin/python of the label-studio-ml 1.0.9 venv (LSTR_ML_PYTHON from tests/support/consumers/
                 provision.sh)
  --cache        where built tarballs are kept (default ${LSTR_CACHE:-/var/tmp/ls-token-refresher}/ml-backend-image)
  --tag          image reference (default lstr.local/label-studio-ml:1.0.9)

Prints the tarball's path. The tarball is cached as CACHE/<key>.tar, the key a hash of every input: this script,
mkimage.py, the tag and, for each file that goes in, its source path, size, mtime and mode (so a rebuilt venv, a
changed model.py or a different interpreter gives a new key). A warm call only stats the inputs. Older tarballs
in CACHE are removed after a build (the images are ~50 MB).

What goes in (one gzip layer, reproducible), nothing else:
  /usr/local/bin/python3.11        the venv's base interpreter (its `home` in pyvenv.cfg), found by prefix landmark
  /usr/local/lib/python3.11/       its standard library, without test suites, IDLE, tkinter, turtledemo, ensurepip,
                                   lib2to3, the static library, optimised .pyc variants and the interpreter's own
                                   site-packages (the venv does not include system site-packages)
  /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
                                   the interpreter's shared library, in the loader's built-in search path (the
                                   interpreter's RUNPATH names the build machine's prefix, absent in the image)
  /opt/ml-backend/venv/            the venv, relocated: pyvenv.cfg with home = /usr/local/bin, bin/python a
                                   symlink to the interpreter, its site-packages unchanged except pip (no package
                                   manager in the image); the venv's other bin/ scripts are left out (their
                                   shebangs name the build path)
  /opt/ml-backend/app/             what `label-studio-ml init backend --script model.py:DownloadProbe` renders: the
                                   stock _wsgi.py and the test model (tests/support/consumers/ml_backend/model.py)
  the glibc loader and every shared object that ldd finds for the interpreter, libpython and every extension
  module kept (libssl, libcrypto, libsqlite3, libffi, libz …), at their paths on this machine
  /etc/passwd, /etc/group (root, nobody, mlbackend 10001), /etc/nsswitch.conf, /tmp (1777)
No shell. Config: USER 10001:10001, WORKDIR /opt/ml-backend/app,
ENTRYPOINT [/opt/ml-backend/venv/bin/python, /opt/ml-backend/app/_wsgi.py], CMD [--host 0.0.0.0 --port 9090
--log-level INFO] (the stock _wsgi.py's options), EXPOSE 9090, PYTHONUNBUFFERED=1 (logs reach `kubectl logs` at
once), PYTHONDONTWRITEBYTECODE=1 (the root filesystem is read-only in the pod).
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
MKIMAGE = REPO / "deploy" / "image" / "mkimage.py"
MODEL = HERE / "model.py"
MODEL_CLASS = "DownloadProbe"

PY_BIN = "/usr/local/bin"
PY_LIB = "/usr/local/lib"
SYSTEM_LIBDIR = "/usr/lib/x86_64-linux-gnu"
VENV = "/opt/ml-backend/venv"
APP = "/opt/ml-backend/app"
UID = 10001

# Standard library parts a server never imports (and the interpreter's own site-packages, which the venv excludes).
STDLIB_SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages"}
STDLIB_SKIP_DIR_RE = re.compile(r"^config-\d+\.\d+")
# Extension modules for tests and Tk (libtk is not wanted in the image).
DYNLOAD_SKIP_RE = re.compile(r"^(_test|_tkinter|xxlimited|_xxtestfuzz|_ctypes_test)")
# Only the plain .pyc of each module (no -O / -OO variants).
OPT_PYC_RE = re.compile(r"\.opt-\d\.pyc$")
VENV_SKIP_TOP = re.compile(r"^(pip|pip-[^/]*\.dist-info)$")


def log(msg):
    print(f"[ml-image] {msg}", file=sys.stderr)


def interpreter_facts(venv_python):
    """What the venv's interpreter says about itself and its base installation."""
    code = r"""
import json, sys, sysconfig
print(json.dumps({
    "base_prefix": sys.base_prefix,
    "stdlib": sysconfig.get_paths()["stdlib"],
    "purelib": sysconfig.get_paths()["purelib"],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "ldlibrary": sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY"),
    "version": "%d.%d" % sys.version_info[:2],
    "full_version": sys.version.split()[0],
}))
"""
    out = subprocess.run([venv_python, "-c", code], check=True, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout)


def walk(src_root, dest_root, skip):
    """(src, dest) of every regular file under src_root; skip(rel_path, is_dir) prunes. Symlinks are refused
    (none in the trees this copies; a link could point outside the image)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(src_root):
        rel_dir = os.path.relpath(dirpath, src_root)
        rel = (lambda n: n) if rel_dir == "." else (lambda n, d=rel_dir: f"{d}/{n}")
        dirnames[:] = sorted(d for d in dirnames if not skip(rel(d), True))
        for name in sorted(filenames):
            r = rel(name)
            if skip(r, False):
                continue
            src = os.path.join(dirpath, name)
            if os.path.islink(src):
                sys.exit(f"ml-image: unexpected symlink {src}")
            out.append((src, f"{dest_root}/{r}"))
    return out


def ldd_closure(objects):
    """Host paths of the shared objects (and the loader) that ldd resolves for `objects`."""
    libs = set()
    for obj in objects:
        out = subprocess.run(["ldd", obj], capture_output=True, text=True)
        if out.returncode != 0 and "not a dynamic executable" in out.stdout + out.stderr:
            continue
        for line in out.stdout.splitlines():
            line = line.strip()
            if "=> not found" in line:
                sys.exit(f"ml-image: ldd {obj}: {line}")
            if "=> /" in line:
                libs.add(line.split("=> ", 1)[1].split(" (", 1)[0])
            elif line.startswith("/"):
                libs.add(line.split(" (", 1)[0])
    return libs


def render_app(venv_python, workdir):
    """The stock `label-studio-ml init` of the test model, as launch.sh does it; returns the project dir."""
    subprocess.run(
        [venv_python, "-m", "label_studio_ml.server", "init", "backend", "--script", f"{MODEL}:{MODEL_CLASS}"],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "HOME": str(workdir)},
    )
    return Path(workdir) / "backend"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv-python", required=True)
    cache_default = Path(os.environ.get("LSTR_CACHE", "/var/tmp/ls-token-refresher")) / "ml-backend-image"
    ap.add_argument("--cache", default=str(cache_default))
    ap.add_argument("--tag", default="lstr.local/label-studio-ml:1.0.9")
    a = ap.parse_args()
    t0 = time.monotonic()

    venv_python = a.venv_python
    venv_dir = Path(venv_python).parent.parent  # not resolved: bin/python links to the base interpreter
    facts = interpreter_facts(venv_python)
    ver = facts["version"]
    base = Path(facts["base_prefix"])
    interpreter = (base / "bin" / f"python{ver}").resolve()
    libpython = Path(facts["libdir"]) / facts["ldlibrary"]
    stdlib = Path(facts["stdlib"])
    site = Path(facts["purelib"])  # the venv's site-packages
    if not (interpreter.is_file() and libpython.is_file() and site.is_dir() and str(site).startswith(str(venv_dir))):
        sys.exit(f"ml-image: unexpected layout: {facts}")

    def stdlib_skip(rel, is_dir):
        top = rel.split("/", 1)[0]
        if is_dir and "/" not in rel and (top in STDLIB_SKIP_DIRS or STDLIB_SKIP_DIR_RE.match(top)):
            return True
        name = rel.rsplit("/", 1)[-1]
        if rel.startswith("lib-dynload/") and DYNLOAD_SKIP_RE.match(name):
            return True
        return not is_dir and bool(OPT_PYC_RE.search(name))

    def site_skip(rel, is_dir):
        return "/" not in rel and bool(VENV_SKIP_TOP.match(rel))

    files = [(str(interpreter), f"{PY_BIN}/python{ver}", "0755"),
             (str(libpython.resolve()), f"{SYSTEM_LIBDIR}/{libpython.name}", "0755")]
    files += [(s, d, "") for s, d in walk(stdlib, f"{PY_LIB}/python{ver}", stdlib_skip)]
    files += [(s, d, "") for s, d in walk(site, f"{VENV}/{site.relative_to(venv_dir)}", site_skip)]

    # Shared objects of everything executable that goes in, except those inside the copied trees.
    elf = [str(interpreter), str(libpython)] + [s for s, _, _ in files if s.endswith(".so") or ".so." in s]
    inside = (str(venv_dir) + "/", str(base) + "/")
    for lib in sorted(ldd_closure(elf)):
        if not lib.startswith(inside):
            files.append((os.path.realpath(lib), lib, "0755"))

    with tempfile.TemporaryDirectory(prefix="lstr-ml-image-") as tmp:
        app = render_app(venv_python, tmp)
        files += [(s, d, "0644") for s, d in walk(app, APP, lambda rel, is_dir: "__pycache__" in rel)]

        texts = [
            f"{VENV}/pyvenv.cfg:0644:home = {PY_BIN}\\ninclude-system-site-packages = false\\n"
            f"version = {facts['full_version']}\\n",
            f"/etc/passwd:0644:root:x:0:0:root:/root:/sbin/nologin\\nnobody:x:65534:65534:nobody:/nonexistent:"
            f"/sbin/nologin\\nmlbackend:x:{UID}:{UID}:mlbackend:/tmp:/sbin/nologin\\n",
            f"/etc/group:0644:root:x:0:\\nnobody:x:65534:\\nmlbackend:x:{UID}:\\n",
            "/etc/nsswitch.conf:0644:passwd: files\\ngroup: files\\nhosts: files dns\\n",
        ]
        symlinks = [f"{PY_BIN}/python3:python{ver}", f"{VENV}/bin/python:{PY_BIN}/python{ver}",
                    f"{VENV}/bin/python3:python", f"{VENV}/bin/python{ver}:python", f"{VENV}/lib64:lib"]
        config = [
            "--user", f"{UID}:{UID}",
            "--workdir", APP,
            "--entrypoint", json.dumps([f"{VENV}/bin/python", f"{APP}/_wsgi.py"]),
            "--cmd", json.dumps(["--host", "0.0.0.0", "--port", "9090", "--log-level", "INFO"]),
            "--expose", "9090/tcp",
            "--env", f"PATH={VENV}/bin:{PY_BIN}:/usr/bin:/bin",
            "--env", "PYTHONUNBUFFERED=1",
            "--env", "PYTHONDONTWRITEBYTECODE=1",
            "--label", "org.opencontainers.image.description=label-studio-ml 1.0.9 with the DownloadProbe test model",
        ]

        # The cache key: every input, by path, size, mtime and mode (content for the sources of this image).
        h = hashlib.sha256()
        for p in (Path(__file__).resolve(), MKIMAGE, MODEL):
            h.update(p.read_bytes())
        h.update(json.dumps([a.tag, texts, symlinks, config]).encode())
        for src, dest, mode in sorted(files, key=lambda f: f[1]):
            if dest.startswith(APP + "/"):
                # Rendered anew in a temp dir on every call: by content.
                ident = f"{dest}\0{mode}\0".encode() + Path(src).read_bytes()
            else:
                st = os.stat(src)
                ident = f"{src}\0{dest}\0{mode}\0{st.st_size} {st.st_mtime_ns} {st.st_mode}".encode()
            h.update(ident + b"\n")
        key = h.hexdigest()[:16]
        cache = Path(a.cache)
        cache.mkdir(parents=True, exist_ok=True)
        out = cache / f"{key}.tar"
        if out.is_file():
            log(f"cached {out} ({time.monotonic() - t0:.1f} s)")
            print(out)
            return

        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not out.is_file():
                args_file = Path(tmp) / "mkimage.args"
                lines = []
                for src, dest, mode in files:
                    if ":" in src or ":" in dest:
                        sys.exit(f"ml-image: ':' in a path: {src}")
                    lines += ["--file", f"{src}:{dest}" + (f":{mode}" if mode else "")]
                for t in texts:
                    lines += ["--text", t]
                for s in symlinks:
                    lines += ["--symlink", s]
                lines += ["--dir", "/tmp:1777"] + config + ["--gzip"]
                args_file.write_text("\n".join(lines) + "\n")
                part = cache / f".{key}.tar.part"
                subprocess.run([sys.executable, str(MKIMAGE), "--out", str(part), "--tag", a.tag, f"@{args_file}"],
                               check=True, stdout=subprocess.DEVNULL, env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
                os.replace(part, out)
                for old in cache.glob("*.tar"):
                    if old != out:
                        old.unlink()
                log(f"built {a.tag} -> {out} ({out.stat().st_size >> 20} MiB, {len(files)} files, "
                    f"{time.monotonic() - t0:.1f} s)")
    print(out)


if __name__ == "__main__":
    main()
