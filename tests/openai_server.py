"""A tiny OpenAI-compatible chat server in a thread, for the tests of the "openai" sampling backend and of the
LLM judge (no network, no model)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Scripted:
    """A tiny OpenAI-like server in a thread that answers chat requests as its `script` says.

    Each chat request pops the next step of `script` (when it is empty: answer): an int is
    an HTTP status to fail with, "sleep" stalls past the client's timeout. An answer
    echoes the user message, after a delay that depends on it (so answers come back out
    of order); a message containing "FILTER" ends with finish_reason "content_filter",
    one containing "REFUSE" gets a 422, one containing "UNTRUSTED" vLLM's refusal of a chat template.
    With `answer`, an answer is `answer(messages)` instead of the echo.
    """

    def __init__(self, script: list | None = None, answer: Callable[[list[dict]], str] | None = None) -> None:
        self.script = list(script or [])
        self.answer = answer
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    step = outer.script.pop(0) if outer.script else None
                if step == "sleep":
                    time.sleep(1.0)
                    return
                if isinstance(step, int):  # retry-after-ms: the client's backoff honours it; keeps the test fast
                    self._send(step, {"error": {"message": f"scripted {step}"}}, {"retry-after-ms": "5"})
                    return
                content = body["messages"][-1]["content"]
                if "REFUSE" in content:
                    self._send(422, {"error": {"message": "unprocessable request"}})
                    return
                if "UNTRUSTED" in content:  # vLLM's answer to a chat_template without --trust-request-chat-template
                    self._send(400, {"error": {"message": "Chat template is passed with request, but ... not set."}})
                    return
                time.sleep((sum(map(ord, content)) % 7) / 200)
                finish = "content_filter" if "FILTER" in content else "stop"
                reply = outer.answer(body["messages"]) if outer.answer else f"echo {content} {body['seed']}"
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply},
                                "finish_reason": finish,
                            }
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
