"""The echo tool written with the official MCP Python SDK, as a user would write it instead of
using mcpfier: it runs /bin/echo per call. Usage: py_echo_server.py PORT async|sync

`async` spawns with asyncio (the fast way); `sync` with subprocess.run, as many tools are
written."""

import asyncio
import subprocess
import sys

from mcp.server.mcpserver import MCPServer

app = MCPServer("py-echo", log_level="WARNING")


async def echo_async(msg: str) -> str:
    """Echo a message through /bin/echo."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/echo", msg, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode()


def echo_sync(msg: str) -> str:
    """Echo a message through /bin/echo."""
    return subprocess.run(
        ["/bin/echo", msg], capture_output=True, stdin=subprocess.DEVNULL, text=True
    ).stdout


if __name__ == "__main__":
    app.tool(name="echo")(echo_async if sys.argv[2] == "async" else echo_sync)
    app.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
