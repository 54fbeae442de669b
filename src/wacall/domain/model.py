"""The platform's objects, in Meta's vocabulary. Plain dataclasses: the rules live in ``platform``.

Every object has a ``KIND`` and a ``key`` so the store can persist it as a document, and says whether
it is ``live`` (part of the working set the platform keeps in memory).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Call states (one state machine for both directions).
RINGING = "RINGING"            # UIC: connect webhook sent, waiting for the business; BIC: user's phone rings
PRE_ACCEPTED = "PRE_ACCEPTED"  # UIC only: business pre-accepted, user sees "Ringing"
ACCEPTED = "ACCEPTED"          # connected: media may flow, duration runs
VOICEMAIL = "VOICEMAIL"        # UIC only: rejected or not answered in time, the platform answered (voicemail)
ENDED = "ENDED"

USER_INITIATED = "USER_INITIATED"
BUSINESS_INITIATED = "BUSINESS_INITIATED"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass
class Record:
    KIND: ClassVar[str] = ""
    NOT_STORED: ClassVar[frozenset[str]] = frozenset()   # fields the platform rebuilds at start, not kept in the doc
    # leaves the working set once and for good (a call's ENDED is final): a record of this kind that is live
    # now was live at every earlier commit, so the store need not rewrite its stored ``live`` flag
    LEAVES_ONCE: ClassVar[bool] = True

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def live(self) -> bool:
        """In the platform's working set: loaded at start and kept in memory (ended calls and done
        messages are not; they are read back from the store when asked for)."""
        return True

    def to_doc(self) -> dict[str, Any]:
        """A deep copy as plain data."""
        return dataclasses.asdict(self)

    def fields_view(self) -> dict[str, Any]:
        """The stored fields as they are (no copy; do not change it): for serialising at once, e.g. by the
        store on every commit of a changed record. A dataclass keeps its fields in ``__dict__``, in field
        order, so when the instance carries nothing else that dict is the view itself (no dict built per
        commit), less its ``NOT_STORED`` fields if the class has any."""
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self)
                                                     if f.name not in self.NOT_STORED)
        fields = self.__dict__
        left_out = self.NOT_STORED
        if len(fields) == len(names) + len(left_out):    # nothing but its fields (all set by __init__)
            if not left_out:
                return fields
            fields = fields.copy()                      # a copy without what is not stored (C-level steps)
            for name in left_out:
                del fields[name]
            return fields
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class App(Record):
    KIND: ClassVar[str] = "app"
    id: str
    name: str
    secret: str
    access_token: str
    verify_token: str
    waba_ids: list[str] = field(default_factory=list)
    permissions: list[str] = field(default_factory=lambda: [
        "whatsapp_business_messaging", "whatsapp_business_management"])
    # object -> {"callback_url", "verify_token", "fields": [...], "active": True}
    subscriptions: dict[str, dict] = field(default_factory=dict)
    # Meta's app setting "Require App Secret": user/system-user tokens need an appsecret_proof
    require_appsecret_proof: bool = False

    @property
    def key(self) -> str:
        return self.id

    @property
    def app_token(self) -> str:
        return f"{self.id}|{self.secret}"

    def subscribed_fields(self) -> set[str]:
        sub = self.subscriptions.get("whatsapp_business_account") or {}
        return set(sub.get("fields") or [])


@dataclass
class Waba(Record):
    KIND: ClassVar[str] = "waba"
    id: str
    name: str
    currency: str = "USD"
    timezone_id: str = "UTC"
    subscribed_apps: list[str] = field(default_factory=list)
    # app_id -> {"override_callback_uri", "verify_token"}
    app_overrides: dict[str, dict] = field(default_factory=dict)
    # "YYYY-MM" (UTC) -> seconds of business-initiated calls billed that month (pulses x 6): the volume tier
    bic_seconds_by_month: dict[str, float] = field(default_factory=dict)
    # the business portfolio has parent BSUIDs enabled: webhooks add the parent_user_id fields
    parent_bsuids: bool = False

    @property
    def key(self) -> str:
        return self.id


@dataclass
class PhoneNumber(Record):
    KIND: ClassVar[str] = "phone_number"
    id: str
    waba_id: str
    display_phone_number: str            # E.164 digits, no '+'
    verified_name: str
    country: str                         # ISO 3166 alpha-2 of the business number
    messaging_limit: int = 100000
    is_test_number: bool = False
    allowed_recipients: list[str] = field(default_factory=list)
    payment_method: bool = True
    calling: dict = field(default_factory=dict)
    sip_passwords: dict[str, str] = field(default_factory=dict)   # app_id -> password
    restrictions: list[dict] = field(default_factory=list)         # {"type", "reason", "expiration"}
    override_callback: dict | None = None                          # {"override_callback_uri", "verify_token"}

    @property
    def key(self) -> str:
        return self.id


@dataclass
class User(Record):
    """A virtual WhatsApp user, and how it behaves when the business reaches it."""
    KIND: ClassVar[str] = "user"
    wa_id: str
    name: str
    country: str
    platform: str = "android"            # android | ios | smb_android | smb_ios | web | desktop
    client_version: str = "2.25.30.0"
    device: str = "primary"              # primary | companion
    on_whatsapp: bool = True
    tos_accepted: bool = True
    incoming: str = "answer"             # answer | reject | ignore | manual
    answer_after: float = 2.0
    permission_requests: str = "manual"  # manual | accept | accept_permanent | reject | ignore
    reply_after: float = 1.0
    audio: str = "tone:440"              # what the user says: tone:HZ | file:PATH | silence | tts:TEXT
    # business-scoped identity (wacall.domain.identity): None = derived from the wa_id, stable across restarts
    bsuid: str | None = None
    parent_bsuid: str | None = None
    username: str | None = None
    username_only: bool = False          # adopted a username: the phone number shows only under Meta's rules
    contacts: list[str] = field(default_factory=list)   # business numbers in contacts (either side)
    changed_to: str | None = None        # the user moved to this wa_id (a number change): this one is gone

    @property
    def key(self) -> str:
        return self.wa_id


@dataclass
class Pair(Record):
    """What the platform remembers about one business number and one user.

    ``bic_connected_times`` (oldest first, the last 24 hours) is not stored in the pair's document: it grows
    by one with every connected business-initiated call, and the store rebuilds it at start from its calls
    index (``Archive.bic_connected_since``), as it does the numbers' 24-hour initiation counts."""
    KIND: ClassVar[str] = "pair"
    NOT_STORED: ClassVar[frozenset[str]] = frozenset({"bic_connected_times"})
    phone_number_id: str
    wa_id: str
    permission: str = "no_permission"    # no_permission | temporary | permanent
    permission_expires_at: float | None = None
    permission_request_times: list[float] = field(default_factory=list)
    unanswered_streak: int = 0
    bic_connected_times: list[float] = field(default_factory=list)
    window_opened_at: float | None = None  # customer service window start (last user message / call)
    last_request_id: str | None = None     # the latest call permission request that reached the user
    phone_seen_at: float | None = None     # the last message or call exchanged by phone number (30-day rule)

    @property
    def key(self) -> str:
        return f"{self.phone_number_id}:{self.wa_id}"


@dataclass
class Call(Record):
    KIND: ClassVar[str] = "call"
    id: str
    phone_number_id: str
    wa_id: str
    direction: str
    app_id: str | None = None
    state: str = "NEW"
    created_at: float = 0.0
    entry_point: str | None = None
    cta_payload: str | None = None
    deeplink_payload: str | None = None
    biz_opaque_callback_data: str | None = None
    meta_sdp: str | None = None          # Meta's offer (UIC) or answer (BIC)
    business_sdp: str | None = None      # the business's offer (BIC) or its answer (UIC)
    pre_accept_sdp: str | None = None
    key_exchange: str = "DTLS"
    accepted_at: float | None = None
    ended_at: float | None = None
    end_status: str | None = None        # COMPLETED | FAILED
    end_reason: str | None = None        # completed, rejected, not_answered, user_hangup, ...
    ended_by: str | None = None          # business | user | platform
    errors: list[dict] = field(default_factory=list)
    deadline: float | None = None        # when the next timed thing happens to this call
    deadline_kind: str | None = None
    pulses: int = 0
    cost: float = 0.0
    signalling: str = "graph"            # graph | sip
    # the media relay's saved state for this call (its leg, SRTP keys, stream positions), so a restarted
    # relay carries the call on; opaque to the rules
    media: dict | None = None
    sip: dict | None = None              # the SIP dialog's state (gateway.Dialog.state()): restored on restart
    # the platform's voicemail on a user-initiated call (domain.calls): {"trigger", "media_id", "seconds",
    # "phase", "announcement_media_id", "message_seconds", "started_at"}; None when it never went there
    voicemail: dict | None = None
    # call recording / transcription (domain.recording): the objects of connect/accept, and what came of them
    capture: dict | None = None          # {"recording": {status, purpose, announcement_language}, "transcription": ...}
    captured: dict | None = None         # {"recording": {media_id...}, "transcript": {media_id, text}, "declined"}

    @property
    def key(self) -> str:
        return self.id

    @property
    def live(self) -> bool:
        """Not ended: in the active-call indexes and the working set."""
        return self.state != ENDED

    # One definition of a connected call's length, used by the terminate webhook, pricing, analytics,
    # the control API and the SIP BYE: whole seconds, so that end_time - start_time == duration and
    # pulses == ceil(duration / 6) always hold (docs/fidelity.md, "Duration, timestamps and pulses").
    @property
    def duration(self) -> int | None:
        """Whole seconds from accept to end, rounded half up; None for a call that never connected."""
        if self.accepted_at is None or self.ended_at is None:
            return None
        return max(0, math.floor(self.ended_at - self.accepted_at + 0.5))

    @property
    def start_time(self) -> int | None:
        """Unix seconds of the accept (truncated), as the terminate webhook's ``start_time``."""
        return None if self.accepted_at is None else int(self.accepted_at)

    @property
    def end_time(self) -> int | None:
        """``start_time + duration`` for a connected call that ended; else None."""
        duration = self.duration
        return None if duration is None else int(self.accepted_at) + duration


@dataclass
class Message(Record):
    KIND: ClassVar[str] = "message"
    LEAVES_ONCE: ClassVar[bool] = False       # (its deadline comes and goes: the store writes ``live`` each time)
    id: str
    phone_number_id: str
    wa_id: str
    direction: str                       # outbound (business -> user) | inbound
    type: str                            # text | interactive | template | ...
    kind: str                            # text | call_permission_request | voice_call | template | ...
    created_at: float
    status: str = "accepted"
    body: dict = field(default_factory=dict)
    biz_opaque_callback_data: str | None = None
    voice_call: dict | None = None       # {"display_text", "ttl_minutes", "payload", "expires_at"}
    answered: bool = False
    deadline: float | None = None        # when the virtual user reacts to it
    deadline_kind: str | None = None

    @property
    def key(self) -> str:
        return self.id

    @property
    def live(self) -> bool:
        return self.deadline is not None


@dataclass
class Template(Record):
    KIND: ClassVar[str] = "template"
    id: str
    waba_id: str
    name: str
    language: str
    category: str
    components: list[dict]
    status: str = "APPROVED"

    @property
    def key(self) -> str:
        return self.id

    def component(self, type_: str) -> dict | None:
        for comp in self.components:
            if str(comp.get("type", "")).lower() == type_.lower():
                return comp
        return None

    def voice_call_button(self) -> dict | None:
        buttons = (self.component("buttons") or {}).get("buttons")
        for button in buttons if isinstance(buttons, list) else []:
            if isinstance(button, dict) and str(button.get("type", "")).lower() == "voice_call":
                return button
        return None


@dataclass
class Media(Record):
    """A file the business can download through the Media API (``GET /{media_id}``): uploaded by the
    business, or published by the platform (voicemail messages, call recordings, transcripts). The bytes
    live on disk (``wacall.store.mediafiles``); this is what the platform knows about them."""
    KIND: ClassVar[str] = "media"
    id: str                              # numeric string, like Meta's media ids
    phone_number_id: str
    mime_type: str
    sha256: str                          # base64 of the SHA-256 of the bytes (Meta's webhook/GET shape)
    file_size: int
    use_case: str | None                 # e.g. "call_voicemail_announcement"; None for ordinary media
    created_at: float
    expires_at: float | None             # None: kept (voicemail announcements)
    origin: str = "upload"               # upload (POST /{phone_number_id}/media) | platform (webhook media)
    deleted: bool = False

    @property
    def key(self) -> str:
        return self.id

    @property
    def live(self) -> bool:
        return not self.deleted


RECORD_TYPES: dict[str, type[Record]] = {
    cls.KIND: cls for cls in (App, Waba, PhoneNumber, User, Pair, Call, Message, Template, Media)
}
