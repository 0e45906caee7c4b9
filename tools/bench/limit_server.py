"""The reference server of ``cbhub bench fanout``/``limit``: the same fan-out done as plainly
as aiohttp allows, so the hub's figures can be read as a ratio to this library's limit on
this machine.

No provider, no parsing, no history: on ``POST /release?tokens=T&rate=R&stagger_ms=X`` one producer task
per channel that has subscribers makes ``T`` content events (then one ``completed``), each
encoded once as the hub would encode it (``content_chunk`` JSON with ``completionId``,
``seq``, ``content``), and for each event awaits ``ws.send_str`` for every subscriber in
turn. The content of event *i* is ``@<ns> `` with ``time.monotonic_ns()`` taken when the
event is made, like the mock provider's ``stamp=1`` tokens, so clients measure latency the
same way. ``rate`` is events per second per channel on an absolute schedule (0: as fast as
possible, yielding to the loop after each event); channel *i* of *n* starts ``i / n *
stagger_ms`` ms late, as the hub run's streams do.

WebSocket ``/ws``: the client sends ``{"type":"subscribe","channels":["completion:ID"]}`` and
gets ``{"type":"subscribed","channels":[...]}``.

Run: ``python -m tools.bench.limit_server --port 0`` (prints ``listening on http://...``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import orjson
from aiohttp import WSMsgType, web

__all__ = ["make_app", "main"]


def make_app() -> web.Application:
    """The reference server's aiohttp application (routes: ``/ws``, ``/release``)."""
    channels: dict[str, list[web.WebSocketResponse]] = {}
    producers: set[asyncio.Task[None]] = set()

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                break
            message = orjson.loads(msg.data)
            names = [name.partition(":")[2] for name in message.get("channels", [])]
            for name in names:
                channels.setdefault(name, []).append(ws)
            await ws.send_str(orjson.dumps({"type": "subscribed", "channels": message.get("channels", [])}).decode())
        for subscribers in channels.values():
            if ws in subscribers:
                subscribers.remove(ws)
        return ws

    async def produce(channel: str, subscribers: list[web.WebSocketResponse], tokens: int, rate: float,
                      offset_s: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate if rate else 0.0
        due = loop.time() + offset_s
        for seq in range(1, tokens + 2):
            if interval:
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                due += interval
            else:
                await asyncio.sleep(0)
            if seq <= tokens:
                event = {"type": "content_chunk", "completionId": channel, "seq": seq,
                         "content": f"@{time.monotonic_ns()} "}
            else:
                event = {"type": "completed", "completionId": channel, "seq": seq, "finishReason": "stop",
                         "provider": "limit", "model": "limit"}
            text = orjson.dumps(event).decode()  # encoded once for every subscriber
            for ws in subscribers:
                await ws.send_str(text)

    async def release(request: web.Request) -> web.Response:
        tokens = int(request.query.get("tokens", "100"))
        rate = float(request.query.get("rate", "0"))
        stagger_s = float(request.query.get("stagger_ms", "0")) / 1000
        started = 0
        live = [(channel, subscribers) for channel, subscribers in channels.items() if subscribers]
        for index, (channel, subscribers) in enumerate(live):
            if subscribers:
                offset_s = index / len(live) * stagger_s
                task = asyncio.create_task(produce(channel, list(subscribers), tokens, rate, offset_s))
                producers.add(task)
                task.add_done_callback(producers.discard)
                started += 1
        return web.json_response({"released": started})

    async def reset(request: web.Request) -> web.Response:
        channels.clear()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ws", websocket)
    app.router.add_post("/release", release)
    app.router.add_post("/reset", reset)
    return app


async def _serve(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"limit server listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the reference server until SIGINT/SIGTERM (``--port``, ``--loop asyncio|uvloop``)."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.limit_server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_serve(args.port))
    else:
        asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
