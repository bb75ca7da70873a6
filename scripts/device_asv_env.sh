# Sourced by the device scripts that run asv (gpu_asv.sh, gpu_alerts.sh): the device has no asv
# and starts bare, so install the carried wheels (.whl-asv: see gpu_asv.sh for how to download
# them) and make moebench importable by every process asv starts there.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl-asv/*.whl || exit 1
# asv's discovery and benchmark processes do not see PYTHONPATH's src/ entry, but they do import
# from /tmp/site (where asv_runner lives): put the package there too.
ln -sfn "$PWD/src/moebench" /tmp/site/moebench
# ... and asv may start them without PYTHONPATH at all: a .pth file in the interpreter's own
# site-packages is read by every process of that interpreter (the machine is thrown away after).
python3 -c 'import site, sys; open(site.getsitepackages()[0] + "/moebench-src.pth", "w").write("\n".join(sys.argv[1:]) + "\n")' "$PWD/src" /tmp/site
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
export HOME=$(mktemp -d)  # asv's machine file and the roofline cache start empty, as on a fresh runner
command -v git >/dev/null || { echo "no git here: asv needs it for the stand-in project repository"; exit 1; }
