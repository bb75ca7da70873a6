"""Make a published asv dashboard work with no internet: ``moebench publish-offline [HTML_DIR]``.

asv 0.6.6's ``index.html`` loads jQuery, flot, bootstrap, stupidtable and md5 from public CDNs and
redirects to ``error.html`` when one of them fails: on an air-gapped GPU runner, in CI, behind a
proxy or on an intranet mirror, the dashboard is an error page. moebench ships the same libraries,
taken from their npm packages with their licences (``vendor/README.md`` says which and how), and
this step copies them to ``HTML_DIR/vendor/`` and points every page at the local copies.

Run it after every ``asv publish``: asv rewrites ``index.html`` from its template each time. A CDN
reference this module does not know (a newer asv) is an error, never silently left in place.
"""

from __future__ import annotations

import argparse
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import BadInput

VENDOR = Path(__file__).with_name("vendor")
VENDOR_DIR = "vendor"  # under HTML_DIR

# The CDN address asv 0.6.6's index.html loads -> the shipped file (npm package-version/path).
# jQuery, bootstrap, flot-orderbars and md5 are the CDN's bytes exactly (same SRI hash); the
# flot and stupidtable files are the npm packages' own builds of the same versions (npm has no
# stupidtable 1.0.1; 1.1.3 keeps the `stupidtable()` API asv calls).
LIBRARIES: dict[str, str] = {
    "https://code.jquery.com/jquery-3.3.1.min.js": "jquery-3.3.1/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": "flot-0.8.3/jquery.flot.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": "flot-0.8.3/jquery.flot.time.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        "flot-0.8.3/jquery.flot.selection.js",
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        "flot-0.8.3/jquery.flot.categories.js",
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        "flot-orderbars-1.0.0/jquery.flot.orderBars.js",
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        "stupid-table-plugin-1.1.3/stupidtable.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": "blueimp-md5-2.19.0/md5.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": "bootstrap-3.1.1/js/bootstrap.min.js",
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": "bootstrap-3.1.1/css/bootstrap.min.css",
}

_TAG = re.compile(r"<(script|link)\b[^>]*>", re.IGNORECASE)
_REMOTE = re.compile(r"""\b(src|href)\s*=\s*["'](https?:)?//[^"']*["']""", re.IGNORECASE)
_URL = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
# The CDN's integrity hashes do not fit the npm builds of flot/stupidtable, and a same-origin
# file needs neither SRI nor CORS: dropped from the rewritten tags only.
_CDN_ATTRS = re.compile(r"""\s+(integrity|crossorigin|referrerpolicy)\s*=\s*["'][^"']*["']""", re.IGNORECASE)
_LINK_LOADS = re.compile(r"""\brel\s*=\s*["'][^"']*\b(stylesheet|icon|preload|modulepreload)\b""", re.IGNORECASE)


@dataclass(frozen=True)
class OfflineReport:
    """What `make_offline` did: rewritten references per page (relative name -> count)."""

    html_dir: Path
    rewritten: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rewritten.values())


def _loads_resource(tag: str, kind: str) -> bool:
    # <link rel="alternate"> (the Atom feed) only names an address; scripts and stylesheets load.
    return kind.lower() == "script" or bool(_LINK_LOADS.search(tag))


def rewrite_page(text: str, page: str) -> tuple[str, int]:
    """Point a page's CDN scripts/stylesheets at vendor/; raise BadInput on an unknown remote one."""
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        tag, kind = match.group(0), match.group(1)
        if not _loads_resource(tag, kind) or not _REMOTE.search(tag):
            return tag
        url = _URL.search(tag).group(1)
        local = LIBRARIES.get("https:" + url if url.startswith("//") else url)
        if local is None:
            raise BadInput(f"{page} loads {url}, which moebench does not ship (a newer asv?): "
                           "add it to moebench.dashboard.LIBRARIES and src/moebench/vendor/")
        count += 1
        return _CDN_ATTRS.sub("", tag.replace(url, f"{VENDOR_DIR}/{local}"))

    return _TAG.sub(replace, text), count


def make_offline(html_dir: str | Path) -> OfflineReport:
    """Copy the shipped libraries into html_dir/vendor and rewrite every top-level page. Idempotent."""
    html = Path(html_dir)
    if not (html / "index.html").is_file():
        raise BadInput(f"{html / 'index.html'} not found: run `asv publish` first "
                       "(or pass the html_dir of asv.conf.json)")
    missing = sorted({p for p in LIBRARIES.values() if not (VENDOR / p).is_file()})
    if missing:
        raise BadInput(f"moebench is installed without its vendored libraries ({', '.join(missing)} "
                       f"missing under {VENDOR}): reinstall moebench")
    pages = {}
    for page in sorted(html.glob("*.html")):
        if not page.is_file():
            continue  # a dangling link: nothing there to rewrite
        try:
            text = page.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{page} is not UTF-8 text ({exc.reason} at byte {exc.start}): not a page "
                           "asv published") from None
        pages[page.name] = rewrite_page(text, page.name)
    # Only after every page parsed: an unknown CDN reference leaves the directory untouched.
    shutil.copytree(VENDOR, html / VENDOR_DIR, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name, (text, n) in pages.items():
        if n:
            (html / name).write_text(text, encoding="utf-8")
    return OfflineReport(html, {name: n for name, (_, n) in pages.items()})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moebench publish-offline",
        description="After `asv publish`: make the dashboard load its JavaScript/CSS libraries "
                    "from HTML_DIR/vendor/ instead of public CDNs, so it works with no internet.")
    p.add_argument("html_dir", nargs="?", default="html", help="asv's published directory (default: html)")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    report = make_offline(args.html_dir)
    changed = ", ".join(f"{name} ({n})" for name, n in report.rewritten.items() if n) or "none (already offline)"
    print(f"{report.html_dir}/{VENDOR_DIR}: {len(LIBRARIES)} library files; CDN references rewritten: {changed}")
    return 0
