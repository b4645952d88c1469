"""Starts a real SecantusDB upstream and the likewise binary, both on port 0.

Every suite in this folder talks to them with unmodified clients through a
plain ``mongodb://127.0.0.1:PORT/`` URI.
"""

import gzip
import hashlib
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
START_TIMEOUT_S = 60


# Every child process started so far, so a failing test's report shows
# what its proxies and servers printed (pytest_runtest_makereport).
STARTED = []
# Lines of a child's output a failing test's report shows, at most.
REPORTED_LINES = 200


class Process:
    """A child process whose announced address is read from its output."""

    def __init__(self, argv, marker, env=None):
        self.argv = argv
        STARTED.append(self)
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        found = queue.Queue()
        self.lines = []

        def drain(stream):
            for line in stream:
                self.lines.append(line)
                if marker in line:
                    found.put(line.split(marker, 1)[1].split()[0])

        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=drain, args=(stream,), daemon=True).start()
        try:
            self.address = found.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {''.join(self.lines)}")
        self.port = int(self.address.rsplit(":", 1)[1])

    def wait_for_line(self, text, timeout=60.0):
        """The first output line containing `text`. Logs come on stderr,
        drained apart from stdout, so they may arrive a moment later; lines
        from background work (a restore, a rebuild) may take a while on a
        loaded machine."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no output line with {text!r}: {''.join(self.lines)}")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def start_upstream(*extra):
    storage = [] if "--storage-path" in extra else ["--storage-path", ":memory:"]
    return Process(
        [str(VENV_BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", "0", *storage, *extra],
        "listening on ",
    )


def start_secured_upstream(storage, prepare):
    """SecantusDB with access control on `storage` (a directory):
    `prepare(client)` creates the users (and any data) on it first,
    without access control, as SecantusDB's docs say to; then the server
    restarts on the same storage with --auth."""
    from pymongo import MongoClient

    setup = start_upstream("--storage-path", storage)
    with MongoClient(f"mongodb://127.0.0.1:{setup.port}/", directConnection=True) as c:
        prepare(c)
    setup.proc.terminate()
    setup.proc.wait(timeout=60)
    return start_upstream("--storage-path", storage, "--auth")


def eventually(check, timeout=90.0):
    """Polls `check` until it holds (bounded); returns the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - start


def wait_ready(coll, name, timeout=180.0):
    """Polls $listSearchIndexes until `name` is READY; returns its entry and
    every status seen on the way."""
    from pymongo.errors import OperationFailure

    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            info = list(coll.list_search_indexes(name))
        except OperationFailure as e:
            # A proxy just started may still be loading its stored
            # definitions (NotYetInitialized: "try again shortly").
            if e.code != 94:
                raise
            if not seen or seen[-1] != "NotYetInitialized":
                seen.append("NotYetInitialized")
            time.sleep(0.05)
            continue
        assert len(info) == 1, info
        status = info[0]["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "READY":
            return info[0], seen
        assert status in ("PENDING", "BUILDING"), info
        time.sleep(0.05)
    raise AssertionError(f"{name} not READY after {timeout}s: {seen}")


def likewise_bin():
    return os.environ.get("LIKEWISE_BIN", str(ROOT / "target" / "debug" / "likewise"))


DEFAULT_MODEL = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"


def metrics_address(proxy):
    """The `host:port` a proxy started with `--metrics-listen` serves its
    metrics on (announced before it listens)."""
    [line] = [l for l in proxy.lines if l.startswith("likewise metrics on ")]
    return line.split()[-1]


def start_proxy(upstream_uri, *extra, log_level=None, env=None):
    # LIKEWISE_TEST_LOG_LEVEL raises every proxy's default level (to read
    # a failure's story in its report).
    log_level = log_level or os.environ.get("LIKEWISE_TEST_LOG_LEVEL", "warn")
    return Process(
        [likewise_bin(), "serve", "--listen", "127.0.0.1:0", "--upstream", upstream_uri,
         "--log-level", log_level, "--default-model", str(DEFAULT_MODEL), *extra],
        "likewise listening on ",
        env=env,
    )


DEBIAN = ROOT / "tests" / "fixtures" / "debian"
# The corpus's pinned bytes (tests/fixtures/debian/README.md).
DEBIAN_SHA256 = {
    "summaries.tsv.gz": "81b9cc1989e968d88e9aa1a7e6da1a7873e4c1788f88d6ce0b150f3cd011507c",
    "descriptions.jsonl.gz": "7c8bcf962465054d2003b97722c090c280d812fa52f41f22489d656cef7cfcf8",
}


def debian_file(name):
    """A corpus file, after checking it holds its pinned bytes."""
    path = DEBIAN / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == DEBIAN_SHA256[name], f"{path} is not the pinned corpus (sha256 {digest})"
    return path


def debian_long_descriptions(limit):
    """Real (title, long description) pairs, the same on every machine:
    `limit` packages spread evenly over the pinned Debian 12 corpus's 4,000
    long English package descriptions (tests/fixtures/debian)."""
    with gzip.open(debian_file("descriptions.jsonl.gz"), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) >= limit, f"the fixture holds {len(rows)} described packages"
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


def debian_packages(limit, also=lambda row: False):
    """Real text, the same on every machine: (package, section, one-line
    description) of `limit` packages spread evenly over the pinned Debian 12
    corpus (tests/fixtures/debian, 59,912 packages with distinct summaries),
    plus every package `also` picks."""
    rows = []
    with gzip.open(debian_file("summaries.tsv.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            name, section, summary = line.rstrip("\n").split("\t")
            rows.append({"_id": name, "section": section, "description": summary})
    assert len(rows) >= limit, f"the fixture holds {len(rows)} packages"
    step = len(rows) / limit
    picked = [rows[int(i * step)] for i in range(limit)]
    names = {r["_id"] for r in picked}
    return picked + [r for r in rows if also(r) and r["_id"] not in names]


# The modules that take longest, first: the runner (scripts/test) hands
# whole modules to its workers in this order, two at a time each, so the
# long ones start at once and a short one (test_cli) waits behind the
# longest.
SLOWEST_FIRST = ["test_fine_tuning.py", "test_training.py", "test_models.py", "test_cli.py", "test_node_clients.py",
                 "test_durability.py", "test_pymongo.py"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.started_before = len(STARTED)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report carries the output of every child process
    started during it (proxies, servers), the last REPORTED_LINES lines of
    each: what a proxy logged is often the failure's cause."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for n, process in enumerate(STARTED[getattr(item, "started_before", len(STARTED)):]):
        lines = list(process.lines)[-REPORTED_LINES:]
        name = Path(process.argv[0]).name
        report.sections.append((f"output of {name} #{n} ({call.when})", "".join(lines)))


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))


@pytest.fixture(scope="session")
def upstream():
    server = start_upstream()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def direct_uri(upstream):
    return f"mongodb://127.0.0.1:{upstream.port}/"


@pytest.fixture(scope="session")
def proxy(direct_uri):
    server = start_proxy(direct_uri, "--metrics-listen", "127.0.0.1:0")
    server.metrics_at = metrics_address(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy_uri(proxy):
    return f"mongodb://127.0.0.1:{proxy.port}/"


# A module's own upstream and proxy (with a data directory): for suites
# that restart proxies, so a restarted proxy restores only that module's
# indexes (from snapshots) instead of rebuilding every suite's.
@pytest.fixture(scope="module")
def module_upstream():
    server = start_upstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_direct_uri(module_upstream):
    return f"mongodb://127.0.0.1:{module_upstream.port}/"


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("likewise-data")


@pytest.fixture(scope="module")
def module_proxy_uri(module_direct_uri, module_data_dir):
    server = start_proxy(module_direct_uri, "--data-dir", str(module_data_dir))
    yield f"mongodb://127.0.0.1:{server.port}/"
    server.stop()
