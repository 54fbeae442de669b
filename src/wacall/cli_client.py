"""The ``wacall`` commands that drive a running wacall from a terminal (docs/cli.md).

``wacall users``, ``call``, ``answer``/``reject``/``hangup``, ``dtmf``, ``voicemail``, ``calls [--follow]``,
``clock``, ``webhooks [--follow]``, ``trigger <scenario>``, ``config --default``, and ``--version``
(``version_option``). Every command that talks to a server reaches it at ``--url`` (or ``WACALL_URL``;
default the local default ``http://127.0.0.1:8080``) through :class:`~wacall.control.client.ControlClient`,
sending ``--token`` (or
``WACALL_CONTROL_TOKEN``) when the server demands one. People get rich tables, scripts ``--json``. A refusal
is one line, ``wacall: <reason>: <detail>``, and a non-zero exit status.

``wacall.cli`` calls :func:`register` on its typer app; this module does not import ``wacall.cli`` (no
import cycle).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Awaitable, Callable, Optional

import aiohttp
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import codec
from .control.client import ControlClient, ControlRefused
from .triggers import SCENARIOS, ScenarioFailed, describe, play

DEFAULT_URL = "http://127.0.0.1:8080"

Url = Annotated[str, typer.Option("--url", envvar="WACALL_URL", help="the running wacall")]
Token = Annotated[Optional[str], typer.Option("--token", envvar="WACALL_CONTROL_TOKEN",
                                              help="its control token, if it has one")]
Json = Annotated[bool, typer.Option("--json", help="JSON for machines (one object; with --follow one per line)")]
Follow = Annotated[bool, typer.Option("--follow", "-f", help="keep the table live (until Ctrl-C)")]
Limit = Annotated[int, typer.Option("--limit", "-n", help="how many of the latest to show")]

Scenario = Enum("Scenario", {name: name for name in SCENARIOS}, type=str)   # typer shows the choices


# -- running a command against the server -------------------------------------------------------------------
def _fail(message: str) -> typer.Exit:
    typer.echo(f"wacall: {message}", err=True)
    return typer.Exit(1)


def run(url: str, token: str | None, work: Callable[[ControlClient], Awaitable[Any]]) -> Any:
    """Run ``work`` with a client of the server at ``url``; every failure is one readable line."""
    async def main() -> Any:
        # a wacall that stops answering fails the command instead of hanging it (the stream sets its own)
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await work(ControlClient(url, session, token=token))
    try:
        return asyncio.run(main())
    except ControlRefused as exc:
        hint = " (pass --token or set WACALL_CONTROL_TOKEN)" if exc.reason == "unauthorized" else ""
        raise _fail(f"{exc.reason}: {exc.detail}{hint}") from None
    except aiohttp.ClientConnectorError as exc:
        raise _fail(f"no wacall at {url} ({exc.os_error.strerror or exc.os_error})") from None
    except asyncio.TimeoutError:
        raise _fail(f"the wacall at {url} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise _fail(f"{url}: {type(exc).__name__}: {exc}") from None
    except ScenarioFailed as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:         # Ctrl-C ends --follow
        raise typer.Exit(0) from None


def console() -> Console:
    """A console for this output (made per use: it reads the terminal's width and COLUMNS now)."""
    return Console()


def emit_json(value: Any) -> None:
    sys.stdout.write(codec.dumps(value) + "\n")
    sys.stdout.flush()


def when(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else ""


# -- durations: 90s, 15m, 2h, 7d, 1h30m, 1w -------------------------------------------------------------------
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``, ``1h30m`` or plain seconds (``45``, ``0.5``)."""
    spec = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(spec):
        match = _PART.match(spec, pos)
        if match is None:
            break
        total += float(match.group(1)) * UNITS[match.group(2) or "s"]
        pos = match.end()
    if not spec or pos != len(spec):
        raise typer.BadParameter(f"{text!r} is not a duration (like 90s, 15m, 2h, 7d, 1h30m)")
    return total


# -- what a webhook says, in a few words ------------------------------------------------------------------
def webhook_event(body: dict) -> str:
    """``connect``, ``terminate FAILED 138007``, ``status RINGING``, ``call_permission_reply accept
    (temporary, user_action)``, ``text``..."""
    out = []
    for entry in body.get("entry", []) if isinstance(body, dict) else []:
        for change in entry.get("changes", []):
            value = change.get("value", {})
            codes = " ".join(str(e.get("code")) for e in value.get("errors", []))
            for call in value.get("calls", []):
                out.append(" ".join(p for p in (call.get("event"), call.get("status"), codes) if p))
            for status in value.get("statuses", []):
                out.append(f"{'status' if status.get('type') == 'call' else 'message status'} "
                           f"{status.get('status')}")
            for message in value.get("messages", []):
                reply = message.get("interactive", {}).get("call_permission_reply")
                if reply is not None:
                    term = "permanent" if reply.get("is_permanent") else (
                        "temporary" if reply.get("expiration_timestamp") else "")
                    detail = ", ".join(p for p in (term, reply.get("response_source")) if p)
                    out.append(f"call_permission_reply {reply.get('response')} ({detail})")
                else:
                    out.append(str(message.get("type")))
            if not (value.get("calls") or value.get("statuses") or value.get("messages")):
                out.append(str(value.get("event") or change.get("field")))
    return "; ".join(out)


def last_http(entry: dict) -> str:
    attempts = entry.get("attempt_log") or []
    if not attempts:
        return ""
    last = attempts[-1]
    return str(last.get("status_code") or last.get("error") or "")


def webhooks_table(entries: list[dict], title: str = "webhooks") -> Table:
    table = Table(title=title)
    table.add_column("id", no_wrap=True)
    for name in ("queued", "field", "event", "call", "status", "attempts", "last answer"):
        table.add_column(name, overflow="fold")
    for e in entries:
        table.add_row(str(e["id"]), when(e.get("created_at")), e.get("field", ""), webhook_event(e.get("body", {})),
                      e.get("call_id") or "", e.get("status", ""), str(e.get("attempts", "")), last_http(e))
    return table


def calls_table(calls: list[dict], title: str = "calls", now: float | None = None) -> Table:
    """The calls, one a row; ``now`` (the virtual time) gives connected calls their duration so far."""
    table = Table(title=title)
    table.add_column("call", no_wrap=True)
    for name in ("direction", "user", "business", "state", "signalling", "started", "duration", "cost", "end"):
        table.add_column(name, overflow="fold")
    for c in calls:
        end = " ".join(str(p) for p in (c.get("end_status"), c.get("end_reason")) if p)
        codes = " ".join(str(e.get("code")) for e in c.get("errors") or [])
        duration = f"{c['duration']} s" if c.get("duration") is not None else ""
        if not duration and now is not None and c.get("state") == "ACCEPTED" and c.get("accepted_at"):
            duration = f"{max(0, int(now - c['accepted_at']))} s so far"
        cost = c.get("cost")
        table.add_row(c["call_id"], {"USER_INITIATED": "user → business", "BUSINESS_INITIATED": "business → user"}
                      .get(c.get("direction") or "", c.get("direction") or ""), c.get("wa_id") or "",
                      c.get("business") or c.get("phone_number_id") or "", c.get("state", ""),
                      c.get("signalling") or "", when(c.get("created_at")),
                      duration, "" if cost in (None, 0) else str(cost),
                      " ".join(p for p in (end, codes) if p))
    return table


def print_call(view: dict, as_json: bool) -> None:
    if as_json:
        emit_json(view)
        return
    end = f" ({view['end_status']}, {view['end_reason']})" if view.get("end_status") else ""
    console().print(f"{view['call_id']}: {view['state']}{end}")


# -- the commands -------------------------------------------------------------------------------------------------
def version_option(value: bool) -> None:
    """``wacall --version`` (an eager option of the root callback in ``wacall.cli``)."""
    if value:
        typer.echo(f"wacall {package_version()}")
        raise typer.Exit()


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wacall")
    except PackageNotFoundError:       # run from a source tree that was never installed
        from . import __version__
        return __version__


def register(app: typer.Typer) -> None:
    """Add the commands to ``wacall``'s typer app."""
    @app.command()
    def users(url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """The virtual WhatsApp users."""
        found = run(url, token, lambda wa: wa.users())
        if as_json:
            return emit_json(found)
        table = Table(title="users")
        for name in ("wa_id", "name", "country", "platform", "device", "incoming", "permission requests", "audio"):
            table.add_column(name)
        for u in found:
            table.add_row(u["wa_id"], u["name"], u["country"], u["platform"], u["device"],
                          f"{u['incoming']} after {u['answer_after']:g} s" if u["incoming"] in ("answer", "reject")
                          else u["incoming"], u["permission_requests"], u["audio"])
        console().print(table)

    @app.command()
    def call(user: Annotated[str, typer.Argument(help="the calling user's wa_id")],
             to: Annotated[Optional[str], typer.Option("--to", help="the business: phone_number_id or phone "
                                                       "number (default: the server's default number)")] = None,
             entry_point: Annotated[str, typer.Option("--entry-point", help="call_icon, call_button, deeplink "
                                                      "or call_log")] = "call_icon",
             payload: Annotated[Optional[str], typer.Option("--payload", help="the call button's or deep "
                                                            "link's payload")] = None,
             url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """A user calls a business; prints the call id."""
        async def work(wa: ControlClient) -> str:
            return await wa.user_calls(user, to or (await wa.info())["phone_number_id"], entry_point, payload)
        call_id = run(url, token, work)
        if as_json:
            return emit_json({"call_id": call_id})
        typer.echo(call_id)

    def action(name: str, summary: str) -> None:
        def command(call_id: Annotated[str, typer.Argument(help="the call id (wacid....)")],
                    url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
            print_call(run(url, token, lambda wa: getattr(wa, name)(call_id)), as_json)
        command.__doc__ = summary
        app.command(name)(command)

    action("answer", "The user answers a ringing business-initiated call.")
    action("reject", "The user declines a ringing business-initiated call.")
    action("hangup", "The user hangs up (on a ringing business-initiated call: declines).")

    @app.command()
    def dtmf(call_id: Annotated[str, typer.Argument(help="the call id")],
             digits: Annotated[str, typer.Argument(help="keys to press: 0-9, *, #, A-D")],
             url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """The user presses keys on a connected call (RFC 4733 events)."""
        sent = run(url, token, lambda wa: wa.dtmf(call_id, digits))
        if as_json:
            return emit_json(sent)
        typer.echo(f"{call_id}: pressed {sent['digits']}")

    @app.command()
    def voicemail(call_id: Annotated[str, typer.Argument(help="the call id")],
                  seconds: Annotated[float, typer.Argument(help="how long the user's message is (1-120 s)")],
                  url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """If the user's call goes to voicemail, the user leaves a message of SECONDS."""
        chosen = run(url, token, lambda wa: wa.voicemail(call_id, seconds))
        if as_json:
            return emit_json(chosen)
        typer.echo(f"{call_id}: a message of {chosen['voicemail']['message_seconds']:g} s if it goes to voicemail")

    @app.command()
    def calls(follow: Follow = False, limit: Limit = 20, url: Url = DEFAULT_URL, token: Token = None,
              as_json: Json = False) -> None:
        """The latest calls; --follow keeps the table live."""
        async def latest(wa: ControlClient) -> list[dict]:
            index = (await wa.request("GET", "calls", limit=max(1, limit)))["data"]
            views = await asyncio.gather(*(wa.call(row["call_id"]) for row in index))
            return [{k: v for k, v in view.items() if k not in ("timeline", "webhooks")} for view in views]

        async def work(wa: ControlClient) -> list[dict] | None:
            rows = await latest(wa)
            if not follow:
                return rows
            by_id = {row["call_id"]: row for row in rows}
            offset = [(await wa.clock())["offset"]]        # the virtual clock runs at wall time plus this

            def seen(event: str, data: dict) -> None:
                if event == "call":
                    by_id[data["call_id"]] = data
                    trimmed(by_id, limit)
                elif event == "clock":
                    offset[0] = data["offset"]
            await live(wa, as_json, rows, "call", seen,
                       lambda: calls_table(list(by_id.values()), "calls (live; Ctrl-C stops)",
                                           now=time.time() + offset[0]))
            return None

        rows = run(url, token, work)
        if rows is not None:
            if as_json:
                emit_json(rows)
            else:
                console().print(calls_table(rows))

    @app.command()
    def webhooks(follow: Follow = False, limit: Limit = 20,
                 call_id: Annotated[Optional[str], typer.Option("--call", help="only this call's")] = None,
                 url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """The webhook journal: every webhook queued for the business, its attempts and answers."""
        async def work(wa: ControlClient) -> list[dict] | None:
            entries = await wa.webhooks(call_id=call_id, limit=max(1, limit))
            if not follow:
                return entries
            by_id = {e["id"]: e for e in entries}

            def seen(event: str, entry: dict) -> None:
                if event == "webhook" and (call_id is None or entry.get("call_id") == call_id):
                    by_id[entry["id"]] = entry
                    trimmed(by_id, limit)
            await live(wa, as_json, entries, "webhook", seen,
                       lambda: webhooks_table(sorted(by_id.values(), key=lambda e: e["id"]),
                                              "webhooks (live; Ctrl-C stops)"), call_id)
            return None

        entries = run(url, token, work)
        if entries is not None:
            if as_json:
                emit_json(entries)
            else:
                console().print(webhooks_table(entries))

    clock_cli = typer.Typer(add_completion=False, help="The virtual clock.")
    app.add_typer(clock_cli, name="clock")

    def print_clock(clock: dict, as_json: bool) -> None:
        if as_json:
            return emit_json(clock)
        typer.echo(f"{clock['iso']}  (virtual; {clock['offset']:+g} s from real time)")

    @clock_cli.callback(invoke_without_command=True)
    def clock_show(ctx: typer.Context, url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """Show the virtual clock (with no command), or move it."""
        if ctx.invoked_subcommand is None:
            print_clock(run(url, token, lambda wa: wa.clock()), as_json)

    @clock_cli.command("advance")
    def clock_advance(duration: Annotated[str, typer.Argument(help="90s, 15m, 2h, 7d, 1h30m or seconds")],
                      url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """Move the virtual clock forward; every timer that falls due fires (ring and accept timeouts,
        users' reactions, permission expiry, webhook retries)."""
        print_clock(run(url, token, lambda wa: wa.advance(parse_duration(duration))), as_json)

    @app.command()
    def trigger(scenario: Annotated[Optional[Scenario], typer.Argument(help="the situation (none: list them)",
                                                                       show_default=False)] = None,
                user: Annotated[Optional[str], typer.Option("--user", help="an existing user's wa_id (default: "
                                                            "a new user made for this run)")] = None,
                number: Annotated[Optional[str], typer.Option("--number", help="the business's phone_number_id "
                                                              "(default: the server's default)")] = None,
                access_token: Annotated[Optional[str], typer.Option(
                    "--access-token", envvar="WACALL_ACCESS_TOKEN",
                    help="the business's Graph token (default: the server's, read from /_wacall/info)")] = None,
                url: Url = DEFAULT_URL, token: Token = None, as_json: Json = False) -> None:
        """Play a common situation end to end and show the webhooks the business got."""
        if scenario is None:
            table = Table(title="scenarios (wacall trigger NAME)")
            table.add_column("name")
            table.add_column("what happens")
            for name in SCENARIOS:
                table.add_row(name, describe(name))
            console().print(table)
            return
        say = (lambda text: None) if as_json else (lambda text: console().print(f"• {text}", highlight=False))
        outcome = run(url, token, lambda wa: play(wa, scenario.value, user=user, phone_number_id=number,
                                                  access_token=access_token, say=say))
        if as_json:
            return emit_json(outcome.as_dict())
        if outcome.webhooks:
            console().print(webhooks_table(outcome.webhooks, "webhooks the business got"))
        else:
            console().print("[yellow]No webhooks were sent: no app subscribed to this business has a callback "
                          "URL (POST /<app_id>/subscriptions).[/yellow]")
        if outcome.refusal:
            console().print(f"The business's last call was refused: HTTP {outcome.refusal['status']}, "
                          f"{outcome.refusal.get('message')}", highlight=False)

    @app.command("config")
    def config_command(default: Annotated[bool, typer.Option("--default", help="print the built-in "
                                                             "configuration (TOML)")] = False) -> None:
        """Print the built-in configuration: a starting point for a wacall.toml."""
        if not default:
            raise _fail("config: say --default (the built-in configuration is all this command prints)")
        from .config import DEFAULT_TOML

        typer.echo(DEFAULT_TOML.strip("\n"))


async def live(wa: ControlClient, as_json: bool, initial: list[dict], kind: str,
               update: Callable[[str, dict], None], render: Callable[[], Table], call_id: str | None = None) -> None:
    """Follow ``/_wacall/stream``: each event goes to ``update(event, data)`` and the table is drawn again
    (and once a second, for what moves with time); with ``--json`` each ``kind`` event is printed as one JSON
    line instead."""
    if as_json:
        for item in initial:
            emit_json({"event": kind, "data": item})
        async for event, data in wa.stream(call_id=call_id):
            if event == kind:
                update(event, data)
                emit_json({"event": event, "data": data})
    else:
        with Live(get_renderable=render, console=console(), refresh_per_second=1) as screen:
            async for event, data in wa.stream(call_id=call_id):
                update(event, data)
                screen.refresh()
    raise ControlRefused(0, "stream_ended", f"{wa.base} closed the live stream (did it stop?)")


def trimmed(rows: dict, limit: int) -> None:
    """Keep the latest ``limit`` rows (insertion order: the newest last)."""
    while len(rows) > max(1, limit):
        del rows[next(iter(rows))]
