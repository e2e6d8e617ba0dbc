"""Drives a real headless Chromium (Debian's `chromium`) over the DevTools protocol, for the
Rust integration tests. Standard library only: the protocol runs over a pipe
(--remote-debugging-pipe: Chromium reads commands on fd 3 and writes on fd 4, each message
JSON ending in a NUL byte).

Usage: browser.py PROFILE_DIR LOG_FILE

Reads one JSON command per line on stdin and answers one JSON line on stdout:
    {"op": "goto", "url": URL}            -> {"ok": true} once the page has loaded
    {"op": "eval", "expr": JS}            -> {"value": ...} (promises are awaited)
    {"op": "errors"}                      -> {"errors": [...]} console errors, uncaught
                                             exceptions and failed loads seen so far
    {"op": "screenshot", "path": PATH}    -> {"ok": true}, a PNG of the page
Chromium is closed when stdin ends.
"""

import base64
import json
import os
import signal
import sys
import threading

CHROMIUM = "/usr/bin/chromium"


class Browser:
    def __init__(self, profile, log):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        actions = [
            (os.POSIX_SPAWN_DUP2, to_chrome_r, 3),
            (os.POSIX_SPAWN_DUP2, from_chrome_w, 4),
            (os.POSIX_SPAWN_DUP2, logfd, 1),
            (os.POSIX_SPAWN_DUP2, logfd, 2),
        ]
        args = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "about:blank",
        ]
        self.pid = os.posix_spawn(CHROMIUM, args, dict(os.environ), file_actions=actions,
                                  setpgroup=0)
        for fd in (to_chrome_r, from_chrome_w, logfd):
            os.close(fd)
        self.next_id = 0
        self.pending = {}
        self.errors = []
        self.loaded = threading.Event()
        self.lock = threading.Lock()
        self.session = None
        threading.Thread(target=self.reader, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", {})

    def reader(self):
        buf = b""
        while True:
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                self.handle(json.loads(raw))
        with self.lock:
            for waiter in self.pending.values():
                waiter["reply"] = {"error": {"message": "chromium closed the pipe"}}
                waiter["done"].set()

    def handle(self, msg):
        if "id" in msg:
            with self.lock:
                waiter = self.pending.pop(msg["id"], None)
            if waiter:
                waiter["reply"] = msg
                waiter["done"].set()
            return
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(
                "exception: " + d.get("exception", {}).get("description", d.get("text", ""))
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            e = params["entry"]
            self.errors.append(f"log: {e['text']} {e.get('url', '')}".strip())
        elif method == "Page.loadEventFired":
            self.loaded.set()

    def call(self, method, params, timeout=30):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
            waiter = {"done": threading.Event()}
            self.pending[mid] = waiter
        msg = {"id": mid, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        if not waiter["done"].wait(timeout):
            raise RuntimeError(f"{method}: no answer within {timeout}s")
        reply = waiter["reply"]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply["result"]

    def close(self):
        try:
            self.session = None
            self.call("Browser.close", {}, timeout=5)
        except Exception:
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


def main():
    browser = Browser(sys.argv[1], sys.argv[2])
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                if cmd["op"] == "goto":
                    browser.loaded.clear()
                    browser.call("Page.navigate", {"url": cmd["url"]})
                    if not browser.loaded.wait(30):
                        raise RuntimeError("the page did not load within 30s")
                    out = {"ok": True}
                elif cmd["op"] == "eval":
                    r = browser.call(
                        "Runtime.evaluate",
                        {"expression": cmd["expr"], "returnByValue": True, "awaitPromise": True},
                    )
                    if "exceptionDetails" in r:
                        out = {"error": r["exceptionDetails"].get("text", "exception")}
                    else:
                        out = {"value": r["result"].get("value")}
                elif cmd["op"] == "errors":
                    out = {"errors": list(browser.errors)}
                elif cmd["op"] == "screenshot":
                    shot = browser.call("Page.captureScreenshot", {"format": "png"})
                    with open(cmd["path"], "wb") as f:
                        f.write(base64.b64decode(shot["data"]))
                    out = {"ok": True}
                else:
                    out = {"error": f"unknown op {cmd['op']!r}"}
            except RuntimeError as e:
                out = {"error": str(e)}
            print(json.dumps(out), flush=True)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
