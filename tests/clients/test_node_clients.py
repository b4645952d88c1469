"""Runs the mongosh script and the Node driver suite against the proxy."""

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
TIMEOUT_S = 300


def run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_mongosh_script(proxy_uri):
    mongosh = NODE_DIR / "node_modules" / ".bin" / "mongosh"
    output = run([str(mongosh), "--quiet", "--norc", proxy_uri, "--file",
                  str(HERE / "mongosh" / "smoke.js")], cwd=NODE_DIR)
    assert "MONGOSH OK 11 checks" in output, output


def test_node_driver_suite(proxy_uri):
    env = dict(os.environ, LIKEWISE_URI=proxy_uri)
    output = run(["node", "--test", "proxy.test.js"], cwd=NODE_DIR, env=env)
    assert "# fail 0" in output and "# pass 6" in output, output
