"""The platform: every rule of WhatsApp Business Calling, composed from the rule modules.

``Platform`` decides; it never performs I/O. Callers read ``drain()`` after each operation to get
the events to deliver and the records to persist.
"""

from __future__ import annotations

from .calls import CallRules
from .messaging import MessageRules
from .numbers import NumberRules
from .permissions import PermissionRules
from .sip import SipRules
from .subscriptions import SubscriptionRules


class Platform(SipRules, CallRules, PermissionRules, MessageRules, NumberRules, SubscriptionRules):
    pass
