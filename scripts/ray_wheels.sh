#!/usr/bin/env bash
# Wheels that let `moebench --ray` run on the device machines, which have no Ray and no network
# (Python 3.12, x86-64; KINDS.md lists what they have). Run here, in the repository root, with
# network to PyPI; the result goes to .whl/ray (git-ignored), which a device call names in `carry`.
#
# Ray needs click, filelock, jsonschema, msgpack, packaging, protobuf, pyyaml and requests; the
# device image has all of them but jsonschema, whose own needs add referencing,
# jsonschema-specifications and rpds-py (attrs and typing-extensions are there).
#
# Ray's wheel (79 MB) is larger than what a device call can carry (64 MiB with the tree), so it is
# repacked without ray/jars (Java workers, 31 MB) and the dashboard's web client (the fan-out
# starts Ray with include_dashboard=False); their RECORD lines go too, so pip installs it cleanly.
set -euo pipefail
DEST=${1:-.whl/ray}
mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$tmp" ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==2026.9.1
python3 - "$tmp" "$DEST" <<'EOF'
import pathlib, shutil, sys, zipfile

src, dest = map(pathlib.Path, sys.argv[1:])
DROP = ("ray/jars/", "ray/dashboard/client/build/")
for whl in sorted(src.glob("*.whl")):
    out = dest / whl.name
    if not whl.name.startswith("ray-"):
        shutil.copy(whl, out)
        continue
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename.startswith(DROP):
                continue
            data = zin.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.startswith(DROP[0].encode()) and not line.startswith(DROP[1].encode()))
            zout.writestr(item, data)
for f in sorted(dest.glob("*.whl")):
    print(f"{f.stat().st_size / 2**20:7.1f} MiB  {f}")
EOF
