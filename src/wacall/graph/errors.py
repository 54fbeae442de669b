"""Meta's Graph error envelope on the wire."""

from __future__ import annotations

import secrets

from aiohttp import web

from .. import codec
from ..domain.errors import GraphError


#: Graph's "temporary, retry" codes (https://developers.facebook.com/docs/graph-api/guides/error-handling/)
TRANSIENT = {2}


def fbtrace_id() -> str:
    return secrets.token_urlsafe(16)[:22]


def error_body(error: GraphError) -> dict:
    body: dict = {"message": error.message, "type": error.type, "code": error.code,
                  "error_data": {"messaging_product": "whatsapp", "details": error.details}}
    if error.subcode is not None:
        body["error_subcode"] = error.subcode
    if error.code in TRANSIENT:
        body["is_transient"] = True        # Graph marks errors worth retrying as is
    body["fbtrace_id"] = fbtrace_id()
    return {"error": body}


def graph_json(data: dict, status: int = 200) -> web.Response:
    return web.Response(body=codec.dump_bytes(data), status=status, content_type="application/json",
                        headers={"x-fb-trace-id": fbtrace_id(), "facebook-api-version": "v23.0"})


def error_response(error: GraphError) -> web.Response:
    response = graph_json(error_body(error), error.http_status)
    if error.code == 190:
        response.headers["WWW-Authenticate"] = ('OAuth "Facebook Platform" "invalid_token" '
                                                '"Invalid OAuth access token - Cannot parse access token"')
    return response
