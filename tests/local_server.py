"""A local HTTP server for tests: the real download code runs against 127.0.0.1, never the internet."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """A tiny HTTP/1.0 file server that supports Range and misbehaves on request.

    `plan[path]` is a list of modes used by successive requests to that path (then "ok"):
    "ok", "404", "500", "cut" (sends half of the body, then closes), "wrong" (other bytes),
    "norange" (ignores Range, answers 200), "slow" (sends in small timed chunks).
    """

    def __init__(self):
        self.files, self.plan, self.log = {}, {}, []
        self.sent = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return self.base + path

    def paths(self):
        return [p for p, _ in self.log]

    def handle(self, h):
        with self.lock:
            self.log.append((h.path, h.headers.get("Range")))
            queue = self.plan.get(h.path) or []
            mode = queue.pop(0) if queue else "ok"
        data = self.files.get(h.path)
        if data is None or mode == "404":
            h.send_error(404)
            return
        if mode == "500":
            h.send_error(500)
            return
        if mode == "wrong":
            data = bytes(b ^ 0xFF for b in data)
        start, rng = 0, h.headers.get("Range")
        if rng and mode != "norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                h.send_error(416)
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if mode == "cut":
            body = body[: len(body) // 2]
        if mode == "slow":
            for i in range(0, len(body), 30_000):
                h.wfile.write(body[i:i + 30_000])
                h.wfile.flush()
                time.sleep(0.05)
        else:
            h.wfile.write(body)
        h.wfile.flush()
        with self.lock:
            self.sent += len(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
