"""A worker process of the benchmark, driven synchronously over a multiprocessing pipe.

The worker's main function gets the child end of the pipe first, sends ``{"op": "hello", "pid"}``
when ready, answers commands, reports failures as ``{"op": "error", "error", "trace"}`` and
leaves on ``{"op": "stop"}``.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import traceback
from typing import Any, Awaitable, Callable


class WorkerProcess:
    def __init__(self, target: Callable[..., Any], *args: Any, name: str = "worker") -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        self.pid = self.recv(60)["pid"]

    def send(self, cmd: dict) -> None:
        self.conn.send(cmd)

    def recv(self, timeout: float = 300) -> dict:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.name} did not answer")
        msg = self.conn.recv()
        if msg.get("op") == "error":
            raise RuntimeError(f"{self.name}: {msg['error']}\n{msg.get('trace', '')}")
        return msg

    def stop(self, timeout: float = 10) -> None:
        try:
            self.conn.send({"op": "stop"})
            self.recv(timeout)
        except Exception:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


async def serve(conn, handlers: dict[str, Callable[[dict], Awaitable[dict]]],
                close: Callable[[], Awaitable[None]]) -> None:
    """The worker's side of the pipe, on its event loop: ``hello`` with its pid, then each command's answer from
    ``handlers[op](cmd)`` (or ``error``), until ``stop``; ``close`` runs before the last ``stopped``."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    conn.send({"op": "ready", "pid": os.getpid()})
    try:
        while True:
            cmd = await inbox.get()
            if cmd.get("op") == "stop":
                break
            try:
                conn.send(await handlers[cmd["op"]](cmd))
            except Exception as exc:
                conn.send({"op": "error", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
    finally:
        loop.remove_reader(conn.fileno())
        await close()
        try:
            conn.send({"op": "stopped"})
        except (BrokenPipeError, OSError):
            pass
