"""The chaos suite's client: many tool calls through the official MCP Python SDK, each on a
session of its own, against a coordinator that the test keeps killing and restarting.

Usage:
    chaos_client.py URL_FILE WORKERS < calls.json

URL_FILE holds the coordinator's current URL (the test rewrites it after a restart); it is
read again for every call, and a call still waiting on a coordinator that was replaced is
answered "nothing" at once. calls.json is a list of {"tag": ..., "tool": ...}. For each call
one JSON line is printed (and flushed) as soon as it ends:
    {"tag": ..., "told": "ok", "agent": ...}
    {"tag": ..., "told": "error", "kind": ..., "outcome": ..., "agent": ...}
    {"tag": ..., "told": "nothing", "why": ...}      # no answer: the coordinator went away
"""

import json
import os
import queue
import sys
import threading
import time

import anyio
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

CALL_DEADLINE = 60
# A call whose thread is still busy this long after its deadline (the SDK can hang on a
# connection whose peer was killed) is abandoned and answered as "nothing".
ABANDON_AFTER = CALL_DEADLINE + 15

print_lock = threading.Lock()


def report(line):
    with print_lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def current_url(url_file):
    with open(url_file) as f:
        return f.read().strip()


async def one(url, call, out):
    def report(line):
        out.append(line)

    try:
        with anyio.fail_after(CALL_DEADLINE):
            async with streamable_http_client(url) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    r = await session.call_tool(call["tool"], {"tag": call["tag"]})
    except BaseException as e:  # the coordinator died, or the connection did
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        report({"tag": call["tag"], "told": "nothing", "why": type(e).__name__})
        return
    sc = r.structured_content or {}
    if r.is_error and isinstance(sc.get("error"), dict):
        err = sc["error"]
        report(
            {
                "tag": call["tag"],
                "told": "error",
                "kind": err.get("kind"),
                "outcome": err.get("outcome"),
                "agent": sc.get("agent"),
            }
        )
    elif r.is_error and sc.get("exit_code") is None:
        text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
        report({"tag": call["tag"], "told": "error", "kind": "unknown", "outcome": "unknown", "text": text})
    else:
        report({"tag": call["tag"], "told": "ok", "agent": sc.get("agent"), "exit_code": sc.get("exit_code")})


def worker(url_file, pending):
    while True:
        try:
            call = pending.get_nowait()
        except queue.Empty:
            return
        out = []
        url = current_url(url_file)
        # Each call on an event loop of its own, in a thread that can be abandoned: the SDK
        # can hang on a connection whose peer was killed.
        t = threading.Thread(target=lambda: anyio.run(one, url, call, out), daemon=True)
        t.start()
        why = "client error"
        deadline = time.monotonic() + ABANDON_AFTER
        while t.is_alive():
            t.join(0.2)
            if not t.is_alive():
                break
            if current_url(url_file) != url:
                # The coordinator it went to was killed: no answer will come.
                why = "coordinator restarted"
                break
            if time.monotonic() > deadline:
                why = "client gave up"
                break
        if out:
            report(out[0])
        else:
            report({"tag": call["tag"], "told": "nothing", "why": why})


def main():
    url_file = sys.argv[1]
    workers = int(sys.argv[2])
    pending = queue.Queue()
    for c in json.load(sys.stdin):
        pending.put(c)
    threads = [threading.Thread(target=worker, args=(url_file, pending)) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stdout.flush()
    # Abandoned calls' threads must not keep the process alive.
    os._exit(0)


if __name__ == "__main__":
    main()
