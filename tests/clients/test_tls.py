"""TLS on both sides of the proxy, with certificates made by `openssl` for
127.0.0.1: pymongo connecting with `tls=true` to the proxy, and the proxy
connecting with `tls=true&tlsCAFile=...` to a SecantusDB serving TLS."""

import subprocess

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError
from pymongo.operations import SearchIndexModel

from conftest import start_proxy, start_upstream, wait_ready
from embed_server import DIMS as HTTP_DIMS
from embed_server import EmbedServer

DIMS = 8


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, and a server certificate it signed for 127.0.0.1 / localhost;
    another CA that signed nothing, for the refusal tests."""
    d = tmp_path_factory.mktemp("tls")
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                "-days", "2", "-subj", f"/CN=likewise test {name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                  "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    # Client certificates (certificate and key in one PEM file, as the
    # driver's tlsCertificateKeyFile takes them): the proxy's own identity,
    # and the one it presents for clients.
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name in ("proxy", "for-clients"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=likewise {name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "client.ext", cwd=d)
        (d / f"{name}.pem").write_text((d / f"{name}.crt").read_text() + (d / f"{name}.key").read_text())
    return d


def vector_search_works(client):
    coll = client.tls_suite.docs
    coll.drop()
    coll.insert_many([{"_id": i, "v": [float(i + j) for j in range(DIMS)]} for i in range(200)])
    coll.create_search_index(SearchIndexModel(name="v", type="vectorSearch", definition={
        "fields": [{"type": "vector", "path": "v", "numDimensions": DIMS, "similarity": "euclidean"}]}))
    wait_ready(coll, "v")
    got = list(coll.aggregate([{"$vectorSearch": {"index": "v", "path": "v", "queryVector": [42.0 + j for j in range(DIMS)],
                                                  "numCandidates": 50, "limit": 3}}]))
    assert [d["_id"] for d in got] == [42, 41, 43] or [d["_id"] for d in got] == [42, 43, 41]
    coll.insert_one({"_id": 1000, "v": [500.0 + j for j in range(DIMS)]})
    got = list(coll.find({"$like": {"vector": [500.0 + j for j in range(DIMS)], "n": 1}}))
    assert got[0]["_id"] == 1000


def test_clients_connect_to_the_proxy_with_tls(certs):
    # An upstream of its own: the index definition stays out of the shared one.
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/", "--tls-cert-file", str(certs / "server.pem"),
                        "--tls-key-file", str(certs / "server.key"))
    try:
        uri = f"mongodb://{proxy.address}/?tls=true&tlsCAFile={certs / 'ca.pem'}"
        with MongoClient(uri, serverSelectionTimeoutMS=10_000) as c:
            assert c.admin.command("ping")["ok"] == 1
            vector_search_works(c)
        # A client without TLS, or one that does not trust the certificate,
        # gets nowhere; the proxy goes on serving the others.
        with MongoClient(f"mongodb://{proxy.address}/", serverSelectionTimeoutMS=1_500) as plain:
            with pytest.raises(ServerSelectionTimeoutError):
                plain.admin.command("ping")
        distrust = f"mongodb://{proxy.address}/?tls=true&tlsCAFile={certs / 'other-ca.pem'}"
        with MongoClient(distrust, serverSelectionTimeoutMS=1_500) as wary:
            with pytest.raises(ServerSelectionTimeoutError):
                wary.admin.command("ping")
        with MongoClient(uri, serverSelectionTimeoutMS=10_000) as c:
            assert c.tls_suite.docs.count_documents({}) == 201
    finally:
        proxy.stop()
        upstream.stop()


def served_through(proxy):
    """A plain client is served through `proxy`, vector search included."""
    with MongoClient(f"mongodb://{proxy.address}/", serverSelectionTimeoutMS=10_000) as c:
        assert c.admin.command("ping")["ok"] == 1
        vector_search_works(c)


def test_the_proxy_connects_to_a_tls_upstream(certs):
    upstream = start_upstream("--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"))
    try:
        tls_uri = f"mongodb://{upstream.address}/?tls=true&tlsCAFile={certs / 'ca.pem'}"
        proxy = start_proxy(tls_uri)
        try:
            # Index builds and change streams run on the proxy's own TLS
            # connections.
            served_through(proxy)
        finally:
            proxy.stop()
        # An upstream whose certificate the proxy cannot verify is
        # unreachable, said so to the client, and never spoken to in clear.
        wary = start_proxy(f"mongodb://{upstream.address}/?tls=true&tlsCAFile={certs / 'other-ca.pem'}"
                           "&serverSelectionTimeoutMS=1000")
        try:
            with MongoClient(f"mongodb://{wary.address}/", serverSelectionTimeoutMS=3_000) as c:
                with pytest.raises((OperationFailure, ServerSelectionTimeoutError)) as err:
                    c.admin.command("ping")
                assert "unreachable" in str(err.value), err.value
                # The server's error says why (its certificate).
                assert "certificate" in str(err.value).lower(), err.value
        finally:
            wary.stop()
    finally:
        upstream.stop()


def test_an_upstream_requiring_client_certificates(certs):
    """An upstream that refuses TLS connections without a client
    certificate: the proxy's own connections (the driver) present the
    URI's tlsCertificateKeyFile; the connections it opens for clients
    present --upstream-client-cert, never the proxy's own certificate."""
    upstream = start_upstream("--tls-cert-file", str(certs / "server.pem"), "--tls-key-file",
                              str(certs / "server.key"), "--tls-ca-file", str(certs / "ca.pem"),
                              "--tls-require-client-cert")
    uri = (f"mongodb://{upstream.address}/?tls=true&tlsCAFile={certs / 'ca.pem'}"
           f"&tlsCertificateKeyFile={certs / 'proxy.pem'}&serverSelectionTimeoutMS=5000")
    try:
        # Without a certificate for clients, their connections are refused
        # by the upstream (TLS 1.3 says so at the first read), while the
        # proxy's own, with its certificate, found the primary.
        bare = start_proxy(uri)
        try:
            with MongoClient(f"mongodb://{bare.address}/", serverSelectionTimeoutMS=5_000) as c:
                with pytest.raises((OperationFailure, ServerSelectionTimeoutError)) as err:
                    c.admin.command("ping")
                assert "CertificateRequired" in str(err.value), err.value
        finally:
            bare.stop()
        proxy = start_proxy(uri, "--upstream-client-cert", str(certs / "for-clients.pem"))
        try:
            served_through(proxy)
        finally:
            proxy.stop()
    finally:
        upstream.stop()


def test_http_models_reach_https_endpoints(certs):
    """An `http` model over https://: verified against `tlsCAFile`; an
    endpoint whose certificate nobody vouches for is refused."""
    server = EmbedServer(tls=(certs / "server.pem", certs / "server.key"))
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/", "--allow-model-host", server.host_port,
                        "--allow-model-dir", str(certs))
    try:
        assert server.url.startswith("https://")
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            db = c.https_models
            with pytest.raises(OperationFailure) as untrusted:
                db.command({"createModel": "untrusted", "kind": "http", "url": server.url, "model": "hashed-bow",
                            "retries": 0})
            assert "certificate" in str(untrusted.value).lower()
            with pytest.raises(OperationFailure) as wrong_ca:
                db.command({"createModel": "wrong", "kind": "http", "url": server.url, "model": "hashed-bow",
                            "retries": 0, "tlsCAFile": str(certs / "other-ca.pem")})
            assert "certificate" in str(wrong_ca.value).lower()
            reply = db.command({"createModel": "secure", "kind": "http", "url": server.url, "model": "hashed-bow",
                                "tlsCAFile": str(certs / "ca.pem")})
            assert reply["model"]["dimensions"] == HTTP_DIMS
            assert reply["model"]["tlsCAFile"] == str(certs / "ca.pem")
            texts = ["red apples and pears", "blue sea and sky", "green grass in spring", "yellow sun at noon"]
            db.notes.insert_many([{"_id": i, "text": t} for i, t in enumerate(texts)])
            db.command({"createSemanticIndex": "notes", "name": "notes_idx", "models": ["secure"], "keys": ["text"],
                        "measure": "css"})
            info, _ = wait_ready(db.notes, "notes_idx")
            assert info["progress"]["vectorsIndexed"] == 4
            hit = list(db.notes.find({"$like": {"document": {"text": "blue sea and sky"}, "n": 1}}))
            assert hit[0]["_id"] == 1
            # A write after the build is encoded over TLS too.
            db.notes.insert_one({"_id": 9, "text": "white snow on mountains"})
            hit = list(db.notes.find({"$like": {"document": {"text": "white snow on mountains"}, "n": 1}}))
            assert hit[0]["_id"] == 9
    finally:
        proxy.stop()
        upstream.stop()
        server.close()
