"""The `likewise` binary's interface, which scripts and later issues rely on."""

import signal
import subprocess

from pymongo import MongoClient

from conftest import likewise_bin, start_proxy


def test_help_documents_every_flag():
    top = subprocess.run([likewise_bin(), "--help"], capture_output=True, text=True, check=True)
    assert "serve" in top.stdout
    serve = subprocess.run([likewise_bin(), "serve", "--help"], capture_output=True, text=True,
                           check=True)
    for flag in ("--listen", "--upstream", "--data-dir", "--max-connections",
                 "--connect-timeout-ms", "--metadata-db", "--reconcile-interval-ms", "--metrics-listen",
                 "--shutdown-timeout-ms", "--log-format", "--config", "--max-vector-results", "--request-timeout-ms",
                 "--tls-cert-file", "--tls-key-file", "--upstream-client-cert",
                 "--allow-model-host", "--allow-model-dir", "--metadata-key-file",
                 "--max-search-indexes", "--max-unauthenticated-buffer-mb",
                 "--threads",
                 "--log-level"):
        assert flag in serve.stdout, flag


def test_serve_prints_one_ready_line_and_stops_on_sigterm(direct_uri, tmp_path):
    data_dir = tmp_path / "state"
    proxy = start_proxy(direct_uri, "--data-dir", str(data_dir))
    try:
        assert data_dir.is_dir()
        with MongoClient(f"mongodb://{proxy.address}/", serverSelectionTimeoutMS=5000) as c:
            assert c.admin.command("ping")["ok"] == 1
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=30) == 0
        stdout_lines = [line for line in proxy.lines if line.startswith("likewise listening on ")]
        assert stdout_lines == [f"likewise listening on {proxy.address}\n"]
    finally:
        proxy.stop()


def test_bad_upstream_uri_is_refused_with_a_message():
    result = subprocess.run([likewise_bin(), "serve", "--listen", "127.0.0.1:0",
                             "--upstream", "postgres://nope"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "mongodb://" in result.stderr


def test_json_logs(direct_uri):
    import json

    proxy = start_proxy(direct_uri, "--log-format", "json", log_level="info")
    try:
        record = json.loads(log_line(proxy, '"proxying"'))
        assert record["fields"]["message"] == "proxying"
        assert record["level"] == "INFO"
    finally:
        proxy.stop()


def test_index_builds_log_progress_with_rate_and_eta():
    import json

    from pymongo.operations import SearchIndexModel

    from conftest import start_upstream

    # An upstream of its own: the index definition stays out of the shared one.
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/", "--log-format", "json", log_level="info")
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            c.cli_suite.pts.insert_many([{"_id": i, "p": [float(i), 1.0]} for i in range(500)])
            c.cli_suite.pts.create_search_index(SearchIndexModel(name="p", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            record = json.loads(log_line(proxy, "building search index"))
            fields = record["fields"]
            assert fields["total"] == 500 and 0 < fields["scanned"] <= 500, fields
            assert fields["docs_per_s"] > 0 and fields["eta_s"] >= 0, fields
    finally:
        proxy.stop()
        upstream.stop()


def test_config_files_environment_and_flags_layer(direct_uri, tmp_path):
    import json
    import os

    config = tmp_path / "likewise.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nupstream = "{direct_uri}"\nlog-format = "json"\n'
                      'log-level = "info"\n')
    # The file alone: no --upstream on the command line.
    proxy = start_proxy_from_file(config)
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            assert c.admin.command("ping")["ok"] == 1
        assert log_line(proxy, "proxying").startswith("{")  # log-format from the file
    finally:
        proxy.stop()
    # A flag beats the file; the environment beats the file too.
    proxy = start_proxy_from_file(config, "--log-format", "human")
    try:
        assert not log_line(proxy, "proxying").startswith("{")
    finally:
        proxy.stop()
    proxy = start_proxy_from_file(config, env={**os.environ, "LIKEWISE_LOG_FORMAT": "human"})
    try:
        assert not log_line(proxy, "proxying").startswith("{")
    finally:
        proxy.stop()


def log_line(proxy, text):
    return proxy.wait_for_line(text)


def start_proxy_from_file(config, *extra, env=None):
    from conftest import Process
    return Process([likewise_bin(), "serve", "--config", str(config), *extra],
                   "likewise listening on ", env=env)


def test_config_check_explains_errors(tmp_path):
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "likewise.example.toml"
    ok = subprocess.run([likewise_bin(), "config", "check", str(example)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "listen = 127.0.0.1:27018" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = "127.0.0.1:1"\nthreds = 2\n')
    result = subprocess.run([likewise_bin(), "config", "check", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "threds" in result.stderr and "line 2" in result.stderr
    # Values `serve` would refuse are refused here too.
    for text, named in (('log-format = "xml"\n', "xml"), ('max-vector-results = 20000\n', "20000"),
                        ('listen = "banana"\n', "banana"), ('log-level = "loud"\n', "loud")):
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(text)
        refused = subprocess.run([likewise_bin(), "config", "check", str(wrong)], capture_output=True,
                                 text=True)
        assert refused.returncode == 1 and named in refused.stderr, (text, refused.stderr)
    secret = tmp_path / "secret.toml"
    secret.write_text('upstream = "mongodb://u:hunter2@db:1/"\n')
    shown = subprocess.run([likewise_bin(), "config", "check", str(secret)], capture_output=True, text=True)
    assert shown.returncode == 0 and "hunter2" not in shown.stdout and "u:***@db" in shown.stdout
