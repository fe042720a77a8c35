"""An MCP client (the official Python SDK) driving bottle's supervise server.

client.py URL all       -> initialize, list tools, call each, abuse; prints one JSON line
client.py URL basic     -> initialize, list tools, call each; prints one JSON line
client.py URL status ID -> prints request_status of ID as one JSON line
"""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(session, name, args):
    r = await session.call_tool(name, args)
    out = {"error": bool(r.isError), "text": text(r)}
    if not r.isError:
        out["data"] = json.loads(out["text"])
    return out


async def main():
    url, mode = sys.argv[1], sys.argv[2]
    report = {}
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            report["server"] = init.serverInfo.name
            if mode == "status":
                report["status"] = await call(session, "request_status", {"id": sys.argv[3]})
                print(json.dumps(report))
                return
            tools = await session.list_tools()
            report["tools"] = sorted(t.name for t in tools.tools)
            report["descriptions"] = {t.name: t.description for t in tools.tools}
            report["egress"] = await call(session, "request_egress", {
                "host": "api.example.test", "port": 8443, "methods": ["GET"],
                "paths": ["/v1/"], "reason": "read the API docs"})
            report["route"] = await call(session, "request_route", {
                "host": "api.example.test", "reason": "authenticated calls"})
            report["capability"] = await call(session, "request_capability", {
                "name": "jq", "reason": "parse JSON"})
            report["policy"] = await call(session, "list_policy", {})
            report["status"] = await call(session, "request_status", {
                "id": report["egress"]["data"]["id"]})
            report["traversal"] = await call(session, "request_status", {"id": "../../etc/passwd"})
            if mode == "basic":
                print(json.dumps(report))
                return
            report["approve_tool"] = await call(session, "approve", {"id": report["egress"]["data"]["id"]})
            report["long_reason"] = await call(session, "request_capability", {
                "name": "jq", "reason": "x" * 3000})
    # 10 MB in one message: refused by the body cap (the SDK sees the
    # refusal as an HTTP error and ends the session).
    try:
        async with streamablehttp_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                report["huge_reason"] = await call(session, "request_capability", {
                    "name": "jq", "reason": "x" * (10 << 20)})
    except BaseException as e:  # noqa: BLE001 - any refusal will do
        report["huge_reason"] = {"error": True, "text": repr(e)[:300]}
    # A fresh session: the server still serves after the 10 MB body.
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            flood = {"filed": 0, "refused": 0, "last": ""}
            for _ in range(10_000):
                r = await call(session, "request_egress", {"host": "flood.test", "reason": "flood"})
                if r["error"]:
                    flood["refused"] += 1
                    flood["last"] = r["text"]
                else:
                    flood["filed"] += 1
            report["flood"] = flood
            report["after_flood"] = await call(session, "list_policy", {})
    print(json.dumps(report))


asyncio.run(main())
