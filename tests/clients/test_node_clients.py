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


def mongosh(proxy_uri, script):
    binary = NODE_DIR / "node_modules" / ".bin" / "mongosh"
    return run([str(binary), "--quiet", "--norc", proxy_uri, "--file", str(HERE / "mongosh" / script)],
               cwd=NODE_DIR)


def test_mongosh_script(proxy_uri):
    output = mongosh(proxy_uri, "smoke.js")
    assert "MONGOSH OK 11 checks" in output, output


def test_mongosh_search_index_helpers(proxy_uri):
    output = mongosh(proxy_uri, "vector.js")
    assert "MONGOSH VECTOR OK 5 checks" in output, output


def test_mongosh_models_on_real_text(proxy_uri):
    output = mongosh(proxy_uri, "models.js")
    assert "MONGOSH MODELS OK 6 checks" in output, output


def test_mongosh_fine_tuning(proxy_uri):
    output = mongosh(proxy_uri, "fine_tune.js")
    assert "MONGOSH FINE-TUNE OK 4 checks" in output, output


def test_node_driver_suite(proxy_uri):
    env = dict(os.environ, LIKEWISE_URI=proxy_uri)
    output = run(["node", "--test", "proxy.test.js", "vector.test.js"], cwd=NODE_DIR, env=env)
    assert "# fail 0" in output and "# pass 7" in output, output
