"""The chaos suite's client: many tool calls through the official MCP Python SDK, each on a
session of its own, against a coordinator that the test keeps killing and restarting.

Usage:
    chaos_client.py URL_FILE WORKERS < calls.json

URL_FILE holds the coordinator's current URL (the test rewrites it after a restart); it is
read again for every call. calls.json is a list of {"tag": ..., "tool": ...}. For each call
one JSON line is printed (and flushed) as soon as it ends:
    {"tag": ..., "told": "ok", "agent": ...}
    {"tag": ..., "told": "error", "kind": ..., "outcome": ..., "agent": ...}
    {"tag": ..., "told": "nothing", "why": ...}      # no answer: the coordinator went away
"""

import json
import sys

import anyio
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

CALL_DEADLINE = 60


def report(line):
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def one(url_file, call):
    with open(url_file) as f:
        url = f.read().strip()
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


async def main():
    url_file = sys.argv[1]
    workers = int(sys.argv[2])
    calls = json.load(sys.stdin)
    send, receive = anyio.create_memory_object_stream(len(calls))
    for c in calls:
        send.send_nowait(c)
    send.close()

    async def worker():
        async for call in receive.clone():
            await one(url_file, call)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)


if __name__ == "__main__":
    anyio.run(main)
