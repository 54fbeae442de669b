"""The platform: every rule of WhatsApp Business Calling, composed from the rule modules.

``Platform`` decides; it never performs I/O. Callers read ``drain()`` after each operation to get
the events to deliver and the records to persist.

Each rule class shares the platform's state (``PlatformState``) and names what it needs from the
other rule classes as a ``typing.Protocol`` attribute, never through the inheritance order:

- ``CallRules.permission_rules: CallPermissions`` (permission status, revoke, automatic callback
  permission) and ``CallRules.message_rules: MessageTimers`` (a message's timer is due);
- ``MessageRules.permission_rules: MessagePermissions`` (check, count and answer a call permission
  request);
- ``NumberRules.media_rules: MediaLookup`` (the voicemail announcement a setting names);
- ``PermissionRules`` and ``MediaRules`` need nothing but the state; ``SipRules`` is ``CallRules``
  spoken over SIP (it extends it).

``Platform`` is all of them in one object, so it is its own collaborator: it wires those attributes
to itself, and a type checker verifies at that assignment that it provides every declared method.
"""

from __future__ import annotations

from .calls import CallRules
from .clock import VirtualClock
from .limits import Limits
from .media import MediaRules
from .messaging import MessageRules
from .numbers import NumberRules
from .permissions import PermissionRules
from .pricing import RateCard
from .sip import SipRules
from .state import Archive, UserBehaviour
from .subscriptions import SubscriptionRules


class Platform(SipRules, CallRules, PermissionRules, MessageRules, NumberRules, SubscriptionRules, MediaRules):
    # Narrowed to the concrete rule classes: a type checker verifies that each provides the Protocol the
    # base classes declare (CallPermissions and MessagePermissions; MessageTimers).
    permission_rules: PermissionRules
    message_rules: MessageRules
    media_rules: MediaRules

    def __init__(self, clock: VirtualClock, limits: Limits, rate_card: RateCard | None = None,
                 archive: Archive | None = None, behaviour: UserBehaviour | None = None) -> None:
        super().__init__(clock, limits, rate_card, archive, behaviour)
        self.permission_rules = self
        self.message_rules = self
        self.media_rules = self
