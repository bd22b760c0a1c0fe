"""Checks of what bin/build-wheels made (called by .ci/wheels).

    check_dist.py files SDIST WHEEL...   the archives' contents and metadata
                                         (any Python 3.11+, stdlib only)
    check_dist.py installed              run by the interpreter of a fresh
                                         venv the package was installed into

Each failed check is printed; the exit status is 1 if any failed.
"""

import email.parser
import os
import re
import subprocess
import sys
import tarfile
import zipfile

PYTHONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
# libraries a repaired wheel must carry instead of loading the system's
BUNDLED = ["libssh2", "libcrypto"]

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def project_version():
    here = os.path.dirname(os.path.abspath(__file__))
    import tomllib

    with open(os.path.join(here, os.pardir, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["version"]


def check_metadata(name, text, version):
    meta = email.parser.Parser().parsestr(text)
    check(meta["Name"] == "execnet", f"{name}: Name is execnet ({meta['Name']})")
    check(meta["Version"] == version, f"{name}: Version {version} ({meta['Version']})")
    check(meta["License"] == "MIT", f"{name}: License MIT ({meta['License']})")
    check(
        meta["Requires-Python"] == ">=3.8",
        f"{name}: Requires-Python >=3.8 ({meta['Requires-Python']})",
    )
    classifiers = set(meta.get_all("Classifier") or [])
    for python in PYTHONS:
        classifier = "Programming Language :: Python :: " + python
        check(classifier in classifiers, f"{name}: classifier {classifier!r}")


def check_wheel(path, version):
    name = os.path.basename(path)
    check(
        re.fullmatch(r"execnet-[^-]+-cp3\d+-cp3\d+-manylinux_\d+_\d+_x86_64\.whl", name)
        is not None,
        f"{name}: a manylinux CPython wheel",
    )
    with zipfile.ZipFile(path) as whl:
        files = whl.namelist()
        dist_info = f"execnet-{version}.dist-info/"
        check_metadata(name, whl.read(dist_info + "METADATA").decode(), version)
        record = whl.read(dist_info + "RECORD").decode()
    check("execnet/py.typed" in files, f"{name}: execnet/py.typed in the files")
    check(
        re.search(r"^execnet/py\.typed,", record, re.M) is not None,
        f"{name}: execnet/py.typed in RECORD",
    )
    for module in ["_execnet", "_ssh"]:
        check(
            any(re.fullmatch(rf"execnet/{module}\.cpython-3\d+-.*\.so", f) for f in files),
            f"{name}: extension execnet.{module}",
        )
    for lib in BUNDLED:
        check(
            any(re.fullmatch(rf"execnet\.libs/{lib}-[0-9a-f]+\.so[.0-9]*", f) for f in files),
            f"{name}: {lib} bundled in execnet.libs/",
        )
    check("execnet/gateway_base.py" in files, f"{name}: the portable core")


def check_sdist(path, version, checkout):
    name = os.path.basename(path)
    top = f"execnet-{version}/"
    with tarfile.open(path) as sdist:
        files = {m.name[len(top):] for m in sdist.getmembers() if m.name.startswith(top)}
        check_metadata(name, sdist.extractfile(top + "PKG-INFO").read().decode(), version)
    wanted = ["setup.py", "pyproject.toml", "README.md", "CHANGELOG.md", "execnet/py.typed"]
    for folder in ["csrc", "testing", "execnet"]:
        for entry in sorted(os.listdir(os.path.join(checkout, folder))):
            if entry.endswith((".c", ".h", ".py", ".typed")):
                wanted.append(f"{folder}/{entry}")
    for wanted_file in wanted:
        check(wanted_file in files, f"{name}: {wanted_file}")
    check(
        not any(f.endswith((".so", ".pyc")) for f in files),
        f"{name}: no built objects",
    )


def shared_libraries(path):
    """{name: resolved path or None} of a shared object's dependencies."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$", line)
        if m:
            found[m.group(1)] = None if m.group(2) == "not found" else m.group(2)
    return found


def check_installed():
    check("LD_LIBRARY_PATH" not in os.environ, "LD_LIBRARY_PATH is unset")
    import execnet
    from execnet import gateway_base

    check(gateway_base.BACKEND == "c", f"BACKEND is 'c' ({gateway_base.BACKEND!r})")
    from execnet import _execnet, _ssh

    site = os.path.dirname(os.path.dirname(os.path.abspath(execnet.__file__)))
    libs = os.path.join(site, "execnet.libs")
    check(os.path.isdir(libs), f"{libs} exists")
    for module in [_execnet, _ssh]:
        deps = shared_libraries(module.__file__)
        label = os.path.basename(module.__file__)
        for dep, where in deps.items():
            check(where is not None, f"{label}: {dep} resolves ({where})")
        for lib in BUNDLED:
            hits = {d: w for d, w in deps.items() if d.startswith(lib)}
            if module is _ssh:
                check(bool(hits), f"{label}: depends on {lib}")
            for dep, where in hits.items():
                check(
                    where is not None and os.path.dirname(os.path.realpath(where))
                    == os.path.realpath(libs),
                    f"{label}: {dep} is the bundled copy ({where})",
                )
    from execnet import gateway_ssh

    check(gateway_ssh.HAVE_NATIVE, "gateway_ssh.HAVE_NATIVE")


def main(argv):
    if argv[:1] == ["files"] and len(argv) >= 3:
        version = project_version()
        checkout = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
        check_sdist(argv[1], version, checkout)
        for wheel in argv[2:]:
            check_wheel(wheel, version)
    elif argv == ["installed"]:
        check_installed()
    else:
        sys.exit(__doc__)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
