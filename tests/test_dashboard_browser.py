"""The published dashboard in a real browser, with no internet.

A history measured by real asv (the stand-in project of ``asvproject``) is published with
``asv publish``, made self-contained with ``moebench publish-offline``, served on 127.0.0.1 and
opened in Debian's headless chromium, driven over the DevTools protocol. Every host but 127.0.0.1
resolves to nothing, so the page sees what an air-gapped runner sees. Asserted: no console error,
exception, failed or 4xx request, no request leaving localhost; the benchmark list names the
suite's benchmarks; a benchmark's graph plots its points (asv shows no error for a missing graph,
only a "No data" box, so flot's own data is counted). A screenshot goes to
``out/test-artifacts/dashboard.png`` (and to ``docs/dashboard.png`` with MOEBENCH_UPDATE_DOCS=1).

``MOEBENCH_DASHBOARD_HTML=html`` checks an already published directory instead of the stand-in
(``MOEBENCH_DASHBOARD_BENCHMARK`` picks the graph, default: the first benchmark), which is how the
README's screenshot is made from real results.

The first tests need no browser: the shipped files against the CDN's hashes, the rewrite of asv's
own template, and bad input.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import asv
import pytest
import websocket

from asvproject import build_history
from moebench import cli
from moebench.dashboard import LIBRARIES, VENDOR, make_offline, rewrite_page


REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "out" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Flags Debian's chromium needs headless as root in a container, minus every background fetch; the
# resolver rule makes every other host unreachable, as on an air-gapped GPU runner.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--disable-default-apps", "--hide-scrollbars", "--window-size=1280,860",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
MEANS = [{"permute": 20e-6, "unpermute": 31e-6},
         {"permute": 21e-6, "unpermute": 30e-6},
         {"permute": 26e-6, "unpermute": 30.5e-6}]
TIMEOUT_S = 60  # a generous ceiling for one page state, not a speed requirement


class DevTools:
    """One page's DevTools protocol session: commands, plus every event kept for the assertions."""

    def __init__(self, ws_url: str):
        # Chromium refuses DevTools websockets that carry an Origin header it was not told to allow.
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT_S, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0

    def send(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, what: str):
        deadline = time.monotonic() + TIMEOUT_S
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {TIMEOUT_S} s at {self.evaluate('location.href')}; "
                                     f"page problems: {self.problems(self.evaluate('location.origin'))}")
            time.sleep(0.1)
        return value

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)

    def settle(self) -> None:
        """Read events until every request the page started has finished or failed, so the
        errors of late requests are in self.events before anything is asserted."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            self.evaluate("0")  # a round trip: every event sent before its answer is now read
            started = {e["params"]["requestId"] for e in self.events
                       if e.get("method") == "Network.requestWillBeSent"
                       and not e["params"]["request"]["url"].startswith("data:")}
            ended = {e["params"]["requestId"] for e in self.events
                     if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
            if started <= ended:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"requests still pending after {TIMEOUT_S} s: {started - ended}")
            time.sleep(0.05)

    def problems(self, origin: str) -> list[str]:
        """Console errors, exceptions, failed/4xx requests and requests to other hosts, as text."""
        urls: dict[str, str] = {}
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Network.requestWillBeSent":
                url = urls[p["requestId"]] = p["request"]["url"]
                if not url.startswith((origin + "/", "data:")):
                    out.append(f"request leaves localhost: {url}")
            elif m == "Network.loadingFailed":
                out.append(f"request failed: {urls.get(p['requestId'], '?')}: {p['errorText']}")
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append("console." + p["type"] + ": "
                           + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description', d['text'])}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".rstrip())
        return out

    def screenshot(self, path: Path) -> None:
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)


ASV_TEMPLATE = Path(asv.__file__).parent / "www" / "index.html"
# Where npm ships the very bytes the CDN serves; flot (unminified on npm) and stupidtable (npm has
# 1.1.3, cdnjs 1.0.1) are npm's own builds.
SAME_BYTES_AS_CDN = {"jquery-3.3.1/jquery.min.js", "flot-orderbars-1.0.0/jquery.flot.orderBars.js",
                     "blueimp-md5-2.19.0/md5.min.js", "bootstrap-3.1.1/js/bootstrap.min.js",
                     "bootstrap-3.1.1/css/bootstrap.min.css"}


def test_shipped_libraries_match_the_cdn_hashes_in_asvs_template():
    tags = re.findall(r'(?:src|href)="(https://[^"]+)" integrity="(sha\d+)-([^"]+)"', ASV_TEMPLATE.read_text())
    assert {url for url, _, _ in tags} == set(LIBRARIES)  # every library asv loads is shipped
    same = {LIBRARIES[url] for url, algo, digest in tags
            if base64.b64encode(hashlib.new(algo, (VENDOR / LIBRARIES[url]).read_bytes()).digest()).decode() == digest}
    assert same == SAME_BYTES_AS_CDN


def test_publish_offline_rewrites_asvs_template_once(tmp_path):
    shutil.copy(ASV_TEMPLATE, tmp_path / "index.html")
    assert make_offline(tmp_path).rewritten == {"index.html": len(LIBRARIES)}
    text = (tmp_path / "index.html").read_text()
    assert re.findall(r"<(?:script|link)\b[^>]*https?://", text) == []
    assert "integrity=" not in text
    for local in LIBRARIES.values():
        assert f'"vendor/{local}"' in text and (tmp_path / "vendor" / local).is_file()
    # Idempotent: a second run finds nothing left to rewrite and changes nothing.
    assert make_offline(tmp_path).total == 0
    assert (tmp_path / "index.html").read_text() == text


def test_publish_offline_refuses_an_unknown_cdn_and_leaves_the_dir_alone(tmp_path, capsys):
    page = '<script src="https://cdn.example.org/chart.js"></script><link rel="alternate" href="https://x.org/feed">'
    (tmp_path / "index.html").write_text(page)
    assert cli.main(["publish-offline", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index.html loads https://cdn.example.org/chart.js" in err
    assert not (tmp_path / "vendor").exists() and (tmp_path / "index.html").read_text() == page
    # A feed link loads nothing: it is left as it is.
    assert rewrite_page('<link rel="alternate" href="https://x.org/feed">', "p") == (
        '<link rel="alternate" href="https://x.org/feed">', 0)


def test_publish_offline_without_published_dir_is_bad_input(tmp_path, capsys):
    assert cli.main(["publish-offline", str(tmp_path / "html")]) == 2
    assert "index.html not found: run `asv publish` first" in capsys.readouterr().err


@dataclass(frozen=True)
class Published:
    html: Path  # after publish-offline
    as_published: Path | None  # the same as asv wrote it (stand-in only)
    benchmark: str  # the one whose graph is checked
    expected: dict[str, int] | None  # stand-in: points per kernel line


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Published:
    root = tmp_path_factory.mktemp("dashboard")
    given = os.environ.get("MOEBENCH_DASHBOARD_HTML")
    if given:
        # A copy: the test never edits the directory it was pointed at.
        html = shutil.copytree(given, root / "html")
        index = json.loads((html / "index.json").read_text())
        benchmark = os.environ.get("MOEBENCH_DASHBOARD_BENCHMARK") or next(iter(index["benchmarks"]))
        make_offline(html)
        return Published(html, None, benchmark, None)
    history = build_history(root, MEANS)
    as_published = shutil.copytree(history.html, root / "as-published")
    make_offline(history.html)
    return Published(history.html, as_published, history.benchmark, {k: len(MEANS) for k in MEANS[0]})


@pytest.fixture(scope="module")
def serve():
    """serve(dir) -> origin: each directory on its own 127.0.0.1 port (python's http.server)."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # The browser drops connections when it navigates away (the control's redirect).
            pass

    def start(directory: Path) -> str:
        server = Server(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A fresh headless chromium (own profile, DevTools on a free port) and its one page."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser test (`make browser` installs it)")
        pytest.skip(f"{CHROMIUM} is not installed (`make browser` installs it)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    log = open(profile.parent / "chromium.log", "wb")
    proc = subprocess.Popen([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (see {log.name})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT_S) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        yield tools
        tools.ws.close()
    finally:
        # Our own process group: the browser and the helper processes it started, nothing else.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _screenshot(page, name: str) -> Path:
    """The page once it has painted, in out/test-artifacts/NAME (and docs/NAME with
    MOEBENCH_UPDATE_DOCS=1: the README's pictures come from here)."""
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    shot = ARTIFACTS / name
    page.screenshot(shot)
    if os.environ.get("MOEBENCH_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, REPO / "docs" / name)
    return shot


def _names(html: Path) -> list[str]:
    index = json.loads((html / "index.json").read_text())
    return [b.get("pretty_name") or name for name, b in index["benchmarks"].items()]


@pytest.mark.slow
def test_dashboard_offline_lists_benchmarks_and_plots_history(published, serve, page):
    html, benchmark, expected = published.html, published.benchmark, published.expected
    origin = serve(html)

    page.open(f"{origin}/index.html")  # the landing page: one summary plot per benchmark
    page.wait_for(f"window.jQuery && $('#summarygrid-display .benchmark-container').length === {len(_names(html))}"
                  " && $('#summarygrid-display .benchmark-plot canvas').length > 0", "benchmark grid")
    page.settle()
    assert page.problems(origin) == []

    page.open(f"{origin}/index.html#/summarylist")
    listed = page.wait_for("window.jQuery && $('#summarylist-display table tbody tr').length > 0 "
                           "&& $('#summarylist-display table tbody').text()", "benchmark list")
    assert page.evaluate("location.pathname") == "/index.html"  # not asv's error.html
    for name in _names(html):
        assert name in listed
    if expected:
        for value in expected:  # the parameter values label the rows
            assert repr(value) in listed
    page.settle()
    assert page.problems(origin) == []

    # A fresh load: after a hash change from the list, asv 0.6.6 can load the graph twice and
    # plot every series twice (its race, same data); a reader following a link sees a fresh load.
    page.open("about:blank")
    page.open(f"{origin}/index.html#{benchmark}")
    series = page.wait_for(
        "window.jQuery && (() => { const p = $('#main-graph').data('plot');"
        " const s = p ? p.getData().map(s => [s.label || '',"
        "   s.data.filter(d => d && d[1] !== null && isFinite(d[1])).length]) : [];"
        " return s.some(x => x[1] >= 2) && s; })()", f"graph with ≥2 points for {benchmark}")
    points = dict(map(tuple, series))
    assert len(points) == len({tuple(s) for s in series})  # a label never has two point counts
    assert max(points.values()) >= 2
    if expected:
        # One line per kernel, one point per measured commit.
        assert points == {f"kernel-{k}": n for k, n in expected.items()}
    page.settle()
    assert page.problems(origin) == []

    assert _screenshot(page, "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_dashboard_as_asv_publishes_it_fails_offline(published, serve, page):
    # The control: without publish-offline the same page, offline, is asv's error page. This is
    # what makes the test above an offline test, whatever network the machine running it has.
    if published.as_published is None:
        pytest.skip("the control runs on the stand-in history only")
    origin = serve(published.as_published)
    page.open(f"{origin}/index.html#/summarylist")
    page.wait_for("location.pathname === '/error.html' && document.readyState === 'complete'",
                  "redirect to error.html")
    # No settle(): the abandoned document's requests never finish.
    assert any("request failed" in p for p in page.problems(origin))


# ---------------------------------------------------------------- the overview landing page

OVERVIEW_TOKENS = (1, 256, 4096)
OVERVIEW_COMMITS, STEP_AT = 5, 2
REGRESSED = ("permute", "mA", "vllm-ops", 256)  # +12 % from commit 2


def _overview_means() -> list[dict[str, float]]:
    from asvproject import moe_key

    means = []
    for i in range(OVERVIEW_COMMITS):
        m = {}
        for op in ("permute", "unpermute"):
            for model in ("mA", "mB"):
                for impl in ("vllm-ops", "reference-custom"):
                    for t in OVERVIEW_TOKENS:
                        base = 1e-6 * (5 + t / 100) * (2 if impl != "vllm-ops" else 1) * (1.5 if op == "permute" else 1)
                        step = 1.12 if i >= STEP_AT and (op, model, impl, t) == REGRESSED else 1.0
                        m[moe_key(op, model, "auto", impl, t)] = base * step
        means.append(m)
    return means


@pytest.fixture(scope="module")
def overview_site(tmp_path_factory) -> Path:
    from moebench import overview

    history = build_history(tmp_path_factory.mktemp("overview"), _overview_means(), noise=0.005, samples=5,
                            shape="moe")
    overview.build(history.results, history.html)
    return history.html


def test_overview_replaces_the_landing_page_and_keeps_asv_one_click_away(overview_site):
    index = (overview_site / "index.html").read_text()
    assert "moebench overview" in index and 'href="asv.html"' in index
    assert "summarygrid" in (overview_site / "asv.html").read_text()  # asv's own page, moved
    # every library the page loads is vendored: nothing leaves the site
    assert not re.findall(r"""(?:src|href)=["']https?://""", index)


@pytest.mark.slow
def test_overview_rows_highlight_sort_and_link_into_asv(overview_site, serve, page):
    origin = serve(overview_site)
    page.open("about:blank")
    page.open(f"{origin}/index.html")
    rows = page.wait_for("window.jQuery && $.fn.stupidtable && $('#overview tbody tr').length", "overview rows")
    assert rows == 2 * 2 * 2  # op x model x impl (one dtype, one class)
    regressed = page.evaluate("$('#overview tbody tr.regressed').map((i, r) => $(r).text()).get()")
    assert len(regressed) == 1 and all(v in regressed[0] for v in ("permute", "mA", "vllm-ops"))
    # sort by the change against the start of the window: twice = descending, the +12 % row first
    page.evaluate("$('#overview thead th:contains(\"commits back\")').click().click(); 0")
    first = page.wait_for("$('#overview tbody tr:first').hasClass('regressed') && $('#overview tbody tr:first').text()",
                          "the regressed row on top after sorting by change")
    assert "+12." in first or "+11." in first
    page.settle()
    assert page.problems(origin) == []
    _screenshot(page, "overview.png")

    # follow the regressed T=256 value into asv's graph of that series
    href = page.evaluate("$('#overview tbody tr.regressed td.regressed-cell a').attr('href')")
    assert href.startswith("asv.html#suite.WarmL2.track_permute?") and "p-tokens=256" in href
    page.open("about:blank")
    page.open(f"{origin}/{href}")
    _wait_for_plotted_points(page)
    assert page.evaluate("location.pathname") == "/asv.html"
    page.settle()
    assert page.problems(origin) == []

    # an old link into index.html#<benchmark> (alerts, asv's feed) is forwarded to asv's page
    page.open("about:blank")
    page.open(f"{origin}/index.html#{href.split('#', 1)[1]}")
    page.wait_for("location.pathname === '/asv.html'", "forward to asv.html")
    _wait_for_plotted_points(page)


def _wait_for_plotted_points(page) -> None:
    page.wait_for("window.jQuery && (() => { const p = $('#main-graph').data('plot');"
                  " return p && p.getData().some(s => s.data.filter(d => d && d[1] !== null).length >= 2); })()",
                  "a graph with plotted points")


def test_publish_offline_names_a_page_that_is_not_text_and_skips_a_dangling_link(tmp_path, capsys):
    shutil.copy(ASV_TEMPLATE, tmp_path / "index.html")
    (tmp_path / "gone.html").symlink_to(tmp_path / "nowhere.html")
    assert make_offline(tmp_path).rewritten == {"index.html": len(LIBRARIES)}
    (tmp_path / "latin1.html").write_bytes("<p>caf\xe9</p>".encode("latin-1"))
    assert cli.main(["publish-offline", str(tmp_path)]) == 2
    assert "latin1.html is not UTF-8 text" in capsys.readouterr().err


RELEASES = REPO / "docs" / "releases"


@pytest.mark.slow
def test_committed_release_dashboard_plots_every_release_offline(serve, page):
    """The release history as committed (``moebench releases publish`` output in docs/releases):
    one permute series, Mixtral T=1 through vllm-ops, has a point for every release recorded."""
    from moebench.alerts import graph_url
    from moebench.asvresults import load_series

    manifest = json.loads((RELEASES / "releases.json").read_text())["releases"]
    timed = [r for r in manifest if r.get("loads")]
    assert len(timed) >= 10
    series = next(s for s in load_series(RELEASES / "results", None)
                  if s.benchmark == "moe.WarmL2.track_permute" and dict(s.params) ==
                  {"model": "'mistralai/Mixtral-8x7B-Instruct-v0.1'", "dtype": "'auto'", "impl": "'vllm-ops'", "tokens": "1"})
    origin = serve(RELEASES / "html")
    page.open("about:blank")
    page.open(f"{origin}/{graph_url('asv.html', series)}")
    counts = page.wait_for(
        "window.jQuery && (() => { const p = $('#main-graph').data('plot');"
        " return p && p.getData().map(s => s.data.filter(d => d && d[1] !== null && isFinite(d[1])).length)"
        "   .filter(n => n > 0); })()", "the release history graph")
    assert counts == [len(timed)]  # one line, one point per release
    page.settle()
    assert page.problems(origin) == []
    _screenshot(page, "releases.png")
