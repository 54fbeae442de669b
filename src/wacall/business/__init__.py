"""The business side of WhatsApp Business Calling, for people who write calling businesses in Python:
a Graph client for the calling API (:mod:`.graph`) with Meta's errors as exceptions (:mod:`.errors`), and
a webhook endpoint that keeps each call's state however Meta's webhooks arrive (:mod:`.webhooks`).

It talks only to Meta's public API (or to wacall in Meta's place: swap the base URL and token) and imports
nothing else of wacall. The business's media endpoint on aiortc is :mod:`wacall.testing.peer`.
"""

from .errors import (AuthError, CallingNotEnabled, CallLimitReached, CallPermissionMissing, DuplicateCall,
                     GraphApiError, InvalidRequest, RateLimited, ReceiverUncallable, ServiceUnavailable, SipNumber,
                     error_from)
from .graph import GraphClient
from .webhooks import Call, CallBook, WebhookReceiver, signature

__all__ = ["AuthError", "Call", "CallBook", "CallLimitReached", "CallPermissionMissing", "CallingNotEnabled",
           "DuplicateCall", "GraphApiError", "GraphClient", "InvalidRequest", "RateLimited", "ReceiverUncallable",
           "ServiceUnavailable", "SipNumber", "WebhookReceiver", "error_from", "signature"]
