"""``wacall`` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import codec
from .config import load_config

cli = typer.Typer(add_completion=False, help="wacall: a self-hosted WhatsApp Business Calling platform.")


@cli.callback()
def _root() -> None:
    """wacall commands."""


@cli.command()
def serve(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="wacall.toml (default: built-in)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8080, "--port", "-p", help="port for the Graph and control APIs (0: any free port)"),
    db: str = typer.Option("wacall.db", "--db", help="SQLite file, or :memory:"),
    json_output: bool = typer.Option(False, "--json", help="print exactly one JSON line when ready"),
    log_level: str = typer.Option("WARNING", "--log-level", help="Python logging level"),
) -> None:
    """Start the emulator and print what a client needs."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"wacall: cannot load config {config}: {exc}", err=True)
        raise typer.Exit(2)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(cfg, host, port, db, json_output))


def _loop_factory():
    """uvloop when installed: the media plane moves tens of thousands of UDP datagrams a second."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(cfg, host: str, port: int, db: str, json_output: bool) -> None:
    from .server import Wacall

    wacall = Wacall(cfg, db=db, host=host, port=port)
    await wacall.start()
    info = wacall.info()
    if json_output:
        sys.stdout.write(codec.dumps(info) + "\n")
        sys.stdout.flush()
    else:
        _print_banner(info)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await wacall.stop()


def _print_banner(info: dict) -> None:
    console = Console()
    table = Table(title="wacall is ready", show_header=False)
    for key in ("graph_url", "control_url", "access_token", "app_id", "app_secret", "verify_token", "waba_id",
                "phone_number_id", "display_phone_number"):
        table.add_row(key, str(info[key]))
    table.add_row("users", ", ".join(f"{u['wa_id']} ({u['name']})" for u in info["users"]))
    console.print(table)
    console.print(f"Graph API: {info['graph_url']}/v23.0/{info['phone_number_id']}/calls   (Ctrl-C stops)")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
