"""``wacall`` command line."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from typing import Optional

# numpy's OpenBLAS keeps a pool of threads that spin after a call; wacall's vectors are 20 ms audio frames, far
# below what OpenBLAS splits across threads, so the pool only burns CPU (set before anything imports numpy)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer
from rich.console import Console
from rich.table import Table

from . import codec, logs
from .cli_client import register as _register_client_commands  # users, call, trigger...: docs/cli.md
from .cli_client import version_option
from .config import DEFAULT_PORT, load_config
from .loop import loop_factory

cli = typer.Typer(add_completion=False, help="wacall: a self-hosted WhatsApp Business Calling platform.")


@cli.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_option, is_eager=True,
                                       help="print wacall's version and exit")) -> None:
    """wacall: a self-hosted WhatsApp Business Calling platform."""


@cli.command()
def serve(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="wacall.toml (default: built-in)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", min=0, max=65535,
                             help="port for the Graph and control APIs (0: every listener takes a free port)"),
    db: str = typer.Option("wacall.db", "--db", help="SQLite file, or :memory:"),
    json_output: bool = typer.Option(False, "--json", help="print exactly one JSON line when ready"),
    log_level: str = typer.Option("WARNING", "--log-level",
                                  help="DEBUG, INFO (a line per request, call event, webhook attempt), WARNING, "
                                       "ERROR"),
    log_format: str = typer.Option("text", "--log-format", help="text (for people) or json (one object a line)"),
    media_workers: Optional[int] = typer.Option(None, "--media-workers",
                                                help="media worker processes (0: media in the server process)"),
    media_port: Optional[int] = typer.Option(None, "--media-port", min=0, max=65535,
                                             help="the media relay's shared UDP port (default: any free port)"),
    sip_port: Optional[int] = typer.Option(None, "--sip-port",
                                           help="SIP/TLS port of the gateway (default: 5061 with --port 8080, "
                                                "else any free port; 0: any free port; -1: no SIP gateway)"),
    pki_dir: Optional[str] = typer.Option(None, "--pki-dir", help="the local CA directory (default ~/.wacall/pki)"),
    sip_t1: Optional[float] = typer.Option(None, "--sip-t1", help="RFC 3261 T1 in seconds (default 0.5)"),
    sip_idle_timeout: Optional[float] = typer.Option(
        None, "--sip-idle-timeout", help="close a SIP/TLS connection idle this many seconds (CRLF keep-alives "
                                         "count; connections carrying a call are kept; default 300; 0: never)"),
    sip_max_connections: Optional[int] = typer.Option(
        None, "--sip-max-connections", help="incoming SIP/TLS connections at once; more are closed before the "
                                            "TLS handshake (default 512; 0: no limit)"),
    sip_handshake_timeout: Optional[float] = typer.Option(
        None, "--sip-handshake-timeout", help="seconds a SIP/TLS client has to finish its handshake (default 10)"),
    sip_hosts: list[str] = typer.Option([], "--sip-host",
                                        help="NAME=ADDRESS: resolve a business SIP hostname to a loopback address"),
    allowed_hosts: list[str] = typer.Option([], "--allowed-host",
                                            help="a Host name the APIs answer besides loopback (repeatable; "
                                                 "'*': any)"),
    control_token: Optional[str] = typer.Option(None, "--control-token", envvar="WACALL_CONTROL_TOKEN",
                                                help="bearer token the control API demands (required with a "
                                                     "non-loopback --host)"),
) -> None:
    """Start the emulator and print what a client needs."""
    if log_level.upper() not in logs.LEVELS or log_format not in logs.FORMATS:
        typer.echo(f"wacall: --log-level is one of {', '.join(logs.LEVELS)} and --log-format one of "
                   f"{', '.join(logs.FORMATS)}", err=True)
        raise typer.Exit(2)
    logs.setup(log_level.upper(), log_format)
    try:
        cfg = load_config(config)
    except ValueError as exc:           # ConfigError: names the file, the line and the key
        typer.echo(f"wacall: {exc}", err=True)
        raise typer.Exit(2)
    if media_workers is not None:
        cfg.media_workers = max(0, media_workers)
    if media_port is not None:
        cfg.media_port = media_port
    sip_options = {"port": sip_port, "pki_dir": pki_dir, "t1": sip_t1, "idle_timeout": sip_idle_timeout,
                   "max_connections": sip_max_connections, "handshake_timeout": sip_handshake_timeout}
    for name, value in sip_options.items():     # [sip] keys the command line overrides
        if value is not None:
            setattr(cfg.sip, name, value)
    try:
        cfg.sip.check()
    except ValueError as exc:
        typer.echo(f"wacall: {exc}", err=True)
        raise typer.Exit(2)
    for mapping in sip_hosts:
        name, _, address = mapping.partition("=")
        if not name or not address:
            typer.echo(f"wacall: --sip-host wants NAME=ADDRESS, got {mapping!r}", err=True)
            raise typer.Exit(2)
        cfg.sip.hosts[name] = address
    cfg.server.allowed_hosts += allowed_hosts
    if control_token is not None:
        cfg.server.control_token = control_token or None
    if not listens_on_loopback(host):
        typer.echo(f"wacall: warning: --host {host} is not a loopback address: whoever reaches it can drive this "
                   "emulator. The control API demands the control token; the Graph API answers only Host names "
                   "given with --allowed-host.", err=True)
        if not cfg.server.control_token:
            typer.echo("wacall: a non-loopback --host needs a control token (--control-token, "
                       "WACALL_CONTROL_TOKEN or [server] control_token)", err=True)
            raise typer.Exit(2)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(cfg, host, port, db, json_output))


def listens_on_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only listen addresses that need no control token."""
    from .guard import host_name, is_loopback

    return is_loopback(host_name(host) or host)


async def _serve(cfg, host: str, port: int, db: str, json_output: bool) -> None:
    from .server import Wacall, raise_open_file_limit

    raise_open_file_limit()
    wacall = Wacall(cfg, db=db, host=host, port=port)
    try:
        await wacall.start()
    except OSError as exc:
        await wacall.stop()
        typer.echo(f"wacall: cannot listen: {exc} (the Graph API on --port {port}, the SIP gateway on "
                   f"--sip-port {cfg.sip.port_for(port)}; --port 0 picks free ports for every listener, "
                   "--sip-port -1 turns SIP off)", err=True)
        raise typer.Exit(2)
    collect_for_serving()
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


#: the cyclic collector's young generation while serving (Python's default is 700 objects)
SERVING_YOUNG_GENERATION = 10_000


def collect_for_serving() -> None:
    """The cyclic collector's policy once the server has started.

    What start-up made (modules, config, certificates) lives as long as the process: frozen, out of the
    collector's sight, so its full collections walk only what calls and requests allocate. The young
    generation is larger than Python's 700: a SIP flow leaves ~80 container objects alive for a while (its
    transactions, dialog and timers), so at 700 a collection came every ~8 flows and walked each flow's
    objects while they were still in use; at 10 000 most of them have died by reference count before a
    collection looks at them (at 300 flows/s the collector's CPU fell from ~108 to ~53 µs per flow)."""
    gc.freeze()
    gc.set_threshold(SERVING_YOUNG_GENERATION, *gc.get_threshold()[1:])


def _print_banner(info: dict) -> None:
    console = Console()
    table = Table(title="wacall is ready", show_header=False)
    for key in ("graph_url", "control_url", "access_token", "app_id", "app_secret", "verify_token", "waba_id",
                "phone_number_id", "display_phone_number"):
        table.add_row(key, str(info[key]))
    table.add_row("users", ", ".join(f"{u['wa_id']} ({u['name']})" for u in info["users"]))
    if info.get("sip"):
        table.add_row("sip", f"sips:{info['sip']['host']}:{info['sip']['port']} (domain {info['sip']['domain']}, "
                             f"CA {info['sip']['ca_file']})")
    table.add_row("database", f"{info['db']} ({'state restored from it' if info['restored'] else 'new'})")
    console.print(table)
    console.print(f"Graph API: {info['graph_url']}/v23.0/{info['phone_number_id']}/calls   (Ctrl-C stops)")


cert_cli = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="The local CA behind wacall's SIP/TLS gateway (wa.meta.vc) and business servers.")
cli.add_typer(cert_cli, name="cert")

_PKI_DIR_HELP = "PKI directory (default ~/.wacall/pki)"


@cert_cli.command("init")
def cert_init(
    directory: Optional[str] = typer.Option(None, "--dir", help=_PKI_DIR_HELP),
    domain: str = typer.Option("wa.meta.vc", "--domain", help="SIP domain the gateway certificate covers"),
) -> None:
    """Create the CA (if missing) and the gateway certificate; print their paths."""
    from .certs import CertError, LocalCA

    try:
        ca = LocalCA.load_or_create(directory)
        cert, key = ca.gateway_paths(domain)
    except (CertError, OSError, ValueError) as exc:
        typer.echo(f"wacall: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"ca      {ca.cert_path}")
    typer.echo(f"gateway {cert}")
    typer.echo(f"key     {key}")


@cert_cli.command("issue")
def cert_issue(
    hostnames: list[str] = typer.Argument(..., help="business SIP hostnames (first one names the files)"),
    directory: Optional[str] = typer.Option(None, "--dir", help=_PKI_DIR_HELP),
    out: Optional[str] = typer.Option(None, "--out", help="path prefix for PREFIX.pem / PREFIX.key "
                                      "(relative to the current directory; default: DIR/<first hostname>)"),
) -> None:
    """Issue a leaf certificate for business hostnames (plus 127.0.0.1 and ::1), signed by the CA."""
    import os

    from .certs import CertError, LocalCA

    try:
        prefix = os.path.abspath(os.path.expanduser(out)) if out else None
        cert, key = LocalCA.load_or_create(directory).issue(hostnames, out=prefix)
    except (CertError, OSError, ValueError) as exc:
        typer.echo(f"wacall: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"cert {cert}")
    typer.echo(f"key  {key}")


@cert_cli.command("ca")
def cert_ca(directory: Optional[str] = typer.Option(None, "--dir", help=_PKI_DIR_HELP)) -> None:
    """Print the CA certificate path (what a business server must trust); creates the CA if missing."""
    from .certs import CertError, LocalCA

    try:
        typer.echo(str(LocalCA.load_or_create(directory).cert_path))
    except (CertError, OSError, ValueError) as exc:
        typer.echo(f"wacall: {exc}", err=True)
        raise typer.Exit(2)


@cli.command()
def bridge(
    config: str = typer.Option(..., "--config", "-c", help="the bridge's TOML file (docs/bridge.md)"),
    json_output: bool = typer.Option(False, "--json", help="print the listeners as one JSON line when ready"),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING"),
    log_json: bool = typer.Option(False, "--log-json", help="log one JSON object per line (wacid, sip_call_id)"),
) -> None:
    """The WhatsApp-to-PBX bridge (a business's integration module): webhooks in, SIP to the PBX,
    media through RtpEngine."""
    from .bridge.app import serve as serve_bridge
    from .bridge.config import load_bridge_config
    from .bridge.ng import NgError

    try:
        cfg = load_bridge_config(config)
    except (OSError, ValueError) as exc:
        typer.echo(f"wacall bridge: {exc}", err=True)
        raise typer.Exit(2)
    from .bridge.logs import configure as configure_logs

    configure_logs(log_level, json_lines=log_json)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:     # uvloop: the builtin media's packets
            runner.run(serve_bridge(cfg, json_output=json_output))
    except (OSError, NgError) as exc:             # a port taken, RtpEngine not answering
        typer.echo(f"wacall bridge: {exc}", err=True)
        raise typer.Exit(1)


_register_client_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
