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
                 "--shutdown-timeout-ms", "--log-format",
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
        logs = [line for line in proxy.lines if line.startswith("{")]
        assert logs, proxy.lines
        records = [json.loads(line) for line in logs]
        assert any(r["fields"].get("message") == "proxying" for r in records), records
        assert all(r["level"] in ("INFO", "WARN", "ERROR") for r in records)
    finally:
        proxy.stop()
