"""Drives mcpfier with the official MCP Python SDK, for the Rust integration tests.

Usage:
    mcp_driver.py stdio -- PROGRAM [ARGS...]   < ops.json
    mcp_driver.py http URL                      < ops.json

Over HTTP, MCP_DRIVER_BEARER (when set) is sent as `Authorization: Bearer ...`, and
MCP_DRIVER_CA (when set) is the CA file the server's HTTPS certificate must chain to.

ops.json is a list of operations; the results (one per operation) are printed as one JSON
array on stdout. Operations:
    {"op": "list_tools"}
    {"op": "call", "name": ..., "arguments": {...}, "progress": true,   # a JSON-RPC error
                                                   # comes back as {"error": {code, message}}
     "cancel_when_file": PATH,   # abandon the call once PATH exists (sends notifications/cancelled)
     "meta": {...}}              # the request's _meta (e.g. a W3C traceparent)
    {"op": "call_many", "name": ..., "arguments": {...}, "count": N}   # N calls at once
    {"op": "touch", "path": PATH}                  # create PATH (a sync point for the test)
    {"op": "wait_list_changed", "timeout": SECS}   # wait for notifications/tools/list_changed
"""

import json
import os
import ssl
import sys
import time

import anyio
import httpx2
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def wait_for_file(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return True
        await anyio.sleep(0.02)
    return False


async def run_ops(session, init, ops, list_changed):
    results = []
    for op in ops:
        kind = op["op"]
        if kind == "touch":
            with open(op["path"], "w") as f:
                f.write("x")
            results.append({"touched": True})
        elif kind == "wait_list_changed":
            with anyio.move_on_after(op.get("timeout", 10)):
                await list_changed.wait()
            results.append({"changed": list_changed.is_set()})
        elif kind == "call_many":
            # `count` concurrent calls of the same tool; results in order.
            out = [None] * op["count"]

            async def one(i):
                r = await session.call_tool(op["name"], op.get("arguments"))
                out[i] = {
                    "is_error": bool(r.is_error),
                    "structured_content": r.structured_content,
                    "text": [c.text for c in r.content if getattr(c, "type", "") == "text"],
                }

            async with anyio.create_task_group() as tg:
                for i in range(op["count"]):
                    tg.start_soon(one, i)
            results.append({"results": out})
        elif kind == "init":
            results.append(dump(init))
        elif kind == "list_tools":
            listed = await session.list_tools()
            results.append({"tools": [dump(t) for t in listed.tools]})
        elif kind == "call":
            progress = []

            async def on_progress(value, total, message):
                progress.append({"progress": value, "message": message})

            cb = on_progress if op.get("progress") else None
            outcome = {}
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    if op.get("cancel_when_file"):
                        async def watch():
                            found = await wait_for_file(op["cancel_when_file"])
                            outcome["file_seen"] = found
                            scope.cancel()
                        tg.start_soon(watch)

                    async def call():
                        try:
                            result = await session.call_tool(
                                op["name"],
                                op.get("arguments"),
                                progress_callback=cb,
                                meta=op.get("meta"),
                            )
                        except MCPError as e:
                            outcome["error"] = {"code": e.code, "message": e.message}
                            tg.cancel_scope.cancel()
                            return
                        outcome["result"] = result
                        tg.cancel_scope.cancel()

                    tg.start_soon(call)
            if "error" in outcome:
                results.append({"error": outcome["error"]})
            elif "result" in outcome:
                r = outcome["result"]
                results.append(
                    {
                        "is_error": bool(r.is_error),
                        "structured_content": r.structured_content,
                        "text": [c.text for c in r.content if getattr(c, "type", "") == "text"],
                        "progress": progress,
                    }
                )
            else:
                results.append({"cancelled": True, "file_seen": outcome.get("file_seen", False)})
        else:
            raise SystemExit(f"unknown op {kind!r}")
    return results


async def main():
    ops = json.load(sys.stdin)
    mode = sys.argv[1]
    if mode == "stdio":
        argv = sys.argv[sys.argv.index("--") + 1 :]
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=json.loads(os.environ.get("MCP_DRIVER_SERVER_ENV", "{}")))
        transport = stdio_client(params, errlog=sys.stderr)
    elif mode == "http":
        headers = {}
        if os.environ.get("MCP_DRIVER_BEARER"):
            headers["Authorization"] = "Bearer " + os.environ["MCP_DRIVER_BEARER"]
        verify = True
        if os.environ.get("MCP_DRIVER_CA"):
            verify = ssl.create_default_context(cafile=os.environ["MCP_DRIVER_CA"])
        client = httpx2.AsyncClient(
            headers=headers,
            verify=verify,
            timeout=httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        )
        transport = streamable_http_client(sys.argv[2], http_client=client)
    else:
        raise SystemExit("mode is stdio or http")
    list_changed = anyio.Event()

    async def on_message(message):
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
            list_changed.set()

    async with transport as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            init = await session.initialize()
            results = await run_ops(session, init, ops, list_changed)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    anyio.run(main)
