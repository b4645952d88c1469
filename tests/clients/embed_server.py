"""A local OpenAI-compatible embeddings endpoint for tests: POST
/v1/embeddings with {model, input: [...]} answers {data: [{index,
embedding}]}. Embeddings are a deterministic hashed bag of words (so the
nearest text is predictable), and the server can be told to fail (503) to
test that nothing is lost while a model is down."""

import hashlib
import json
import math
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIMS = 64


def embed(text):
    v = [0.0] * DIMS
    for word in text.lower().split():
        h = hashlib.sha256(word.encode()).digest()
        v[h[0] % DIMS] += 1.0 if h[1] % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


class EmbedServer:
    def __init__(self, api_key=None, tls=None, dims=DIMS):
        """`tls`: (certificate file, key file) to serve https instead;
        `dims`: the embedding size served (vectors are padded with zeros).
        `failing` answers 503; `fail_body` is the body failures carry.
        Every request's headers (names in lower case) and body are kept in
        `requests`."""
        self.failing = False
        self.fail_body = {"error": "down for the test"}
        self.api_key = api_key
        self.dims = dims
        self.batches = []
        self.requests = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.requests.append(({k.lower(): v for k, v in self.headers.items()}, raw))
                body = json.loads(raw)
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self.reply(401, {"error": "bad api key"})
                if server.failing:
                    return self.reply(503, server.fail_body)
                inputs = body["input"]
                with server.lock:
                    server.batches.append(len(inputs))
                pad = [0.0] * max(0, server.dims - DIMS)
                data = [{"object": "embedding", "index": i, "embedding": embed(t) + pad}
                        for i, t in enumerate(inputs)]
                self.reply(200, {"object": "list", "model": body["model"], "data": data})

            def reply(self, status, payload):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.host_port = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{scheme}://{self.host_port}/v1/embeddings"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
