"""A backend of your own for `spawner dev`: one process per user or document.

Spawner starts it with PORT (where to listen, on 127.0.0.1),
SPAWNER_BACKEND_NAME and SPAWNER_BACKEND_KEY (its key; empty or unset
without one);
the browser reaches it through Spawner's proxy at /p/{name}/. This one
counts the requests it has served, in memory, so each backend has its own
count. The standard library only.
"""

import http.server
import json
import os
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    served = 0
    counting = threading.Lock()

    def do_GET(self):
        with Handler.counting:
            Handler.served += 1
            served = Handler.served
        body = json.dumps({
            "backend": os.environ.get("SPAWNER_BACKEND_NAME"),
            "key": os.environ.get("SPAWNER_BACKEND_KEY") or None,
            "user": self.headers.get("X-Spawner-User"),
            "served": served,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port = int(os.environ["PORT"])
print(f"listening on 127.0.0.1:{port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
