"""Messages that matter to calling: call permission requests and voice-call buttons (free-form and as
templates), the 24-hour customer service window, message statuses, and the user's own messages."""

from __future__ import annotations

from typing import Any, Protocol

from . import identity
from .errors import GraphError
from .fields import is_number
from .events import InboundMessage, MessageStatus
from .limits import version_at_least
from .model import Message, Pair, PhoneNumber, Template
from .phone import phone_digits
from .state import ControlError, PlatformState, new_id

VOICE_CALL_MIN_VERSION = "2.24.1"
TEXT_MAX = 4096


def _check_ttl(value: Any, low: int, high: int, where: str) -> int:
    if not is_number(value, integer=True) or not low <= value <= high:
        raise GraphError(131009, f"Param {where} must be an integer between {low} and {high}.")
    return value


class MessagePermissions(Protocol):
    """What the message rules need from the permission rules (``PermissionRules``): a call permission
    request is checked, counted and answered there."""

    def check_permission_request(self, number: PhoneNumber, wa_id: str) -> Pair: ...

    def record_permission_request(self, pair: Pair) -> None: ...

    def latest_open_request(self, phone_number_id: str, wa_id: str) -> Message | None: ...

    def answer_request(self, request: Message, pair: Pair, *, response: str, permanent: bool) -> None: ...


class MessageRules(PlatformState):
    permission_rules: MessagePermissions  # set by Platform (itself); a test may give a stand-in

    def send_message(self, app, number: PhoneNumber, body: Any) -> dict:
        if not isinstance(body, dict):
            raise GraphError(100, "The request body must be a JSON object.")
        if body.get("messaging_product") != "whatsapp":
            raise GraphError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
        to = body.get("to")
        by_bsuid = to is None and body.get("recipient") is not None   # `to` wins when both are sent
        if by_bsuid:
            to = body.get("recipient")
            wa_id = identity.recipient_wa_id(self, number, to)
            if wa_id is None:
                raise GraphError(100, "Param recipient does not name a WhatsApp user of this business.")
        else:
            wa_id = phone_digits(to)
        if wa_id is None:
            raise GraphError(100, "The parameter to is required and must be a phone number.")
        type_ = body.get("type", "text")
        if not isinstance(type_, str):
            raise GraphError(100, "Param type must be a string.")
        content = body.get(type_)
        if not isinstance(content, dict):
            raise GraphError(100, f"The parameter {type_} is required and must be an object.")

        voice_call = None
        if type_ == "interactive":
            kind = content.get("type")
            if kind == "call_permission_request":
                self._window_required(number, wa_id)
                self._check_permission_request_body(content)
                pair = self.permission_rules.check_permission_request(number, wa_id)
            elif kind == "voice_call":
                self._window_required(number, wa_id)
                voice_call = self._voice_call_parameters(number, content)
                pair = None
            elif isinstance(kind, str):
                self._window_required(number, wa_id)
                pair = None
            else:
                raise GraphError(100, "The parameter interactive[type] is required.")
        elif type_ == "template":
            template = self._template_for(number, content)
            if template.component("call_permission_request"):
                kind, pair = "call_permission_request", self.permission_rules.check_permission_request(number, wa_id)
            elif template.voice_call_button():
                kind, pair = "voice_call", None
                voice_call = self._template_voice_call(number, template, content)
            else:
                kind, pair = "template", None
            if by_bsuid and template.category.upper() == "AUTHENTICATION":
                raise GraphError(131062)      # one-time passcodes go to phone numbers only
        else:
            if type_ == "text" and not isinstance(content.get("body"), str):
                raise GraphError(100, "The parameter text[body] is required.")
            self._window_required(number, wa_id)
            kind, pair = type_, None

        if number.is_test_number and wa_id not in number.allowed_recipients:
            raise GraphError(131030)
        opaque = body.get("biz_opaque_callback_data")
        message = Message(id=new_id("wamid"), phone_number_id=number.id, wa_id=wa_id, direction="outbound",
                          type=type_, kind=kind, created_at=self.now(), body=content,
                          biz_opaque_callback_data=opaque if isinstance(opaque, str) else None,
                          voice_call=voice_call)
        if pair is not None:
            self.permission_rules.record_permission_request(pair)
        self._deliver(message)
        if not by_bsuid:
            identity.phone_used(self, number, wa_id)
        if pair is not None and message.status != "failed":
            pair.last_request_id = message.id
            self.put(pair)
        response = {"messaging_product": "whatsapp", "contacts": [identity.send_contact(self, number, str(to), wa_id)],
                    "messages": [{"id": message.id}]}
        if type_ == "template":
            response["messages"][0]["message_status"] = "accepted"
        return response

    def _window_required(self, number: PhoneNumber, wa_id: str) -> None:
        pair = self.pairs.get(f"{number.id}:{wa_id}")
        if pair is None or not self.window_open(pair):
            raise GraphError(131047)

    @staticmethod
    def _check_permission_request_body(content: dict) -> None:
        action = content.get("action")
        if not isinstance(action, dict) or action.get("name") != "call_permission_request":
            raise GraphError(100, "Param interactive[action][name] must be 'call_permission_request'.")
        for key in ("header", "footer"):
            if key in content:
                raise GraphError(100, f"Param interactive[{key}] is not supported for call_permission_request.")
        body = content.get("body")
        if body is not None and not (isinstance(body, dict) and isinstance(body.get("text"), str)
                                     and len(body["text"]) <= 1024):
            raise GraphError(100, "Param interactive[body][text] must be a string of at most 1024 characters.")

    def _voice_call_parameters(self, number: PhoneNumber, content: dict) -> dict:
        if number.calling.get("status") != "ENABLED":
            raise GraphError(138000)
        action = content.get("action")
        if not isinstance(action, dict) or action.get("name") != "voice_call":
            raise GraphError(100, "Param interactive[action][name] must be 'voice_call'.")
        params = action.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise GraphError(100, "Param interactive[action][parameters] must be an object.")
        text = params.get("display_text", "Call Now")
        if not isinstance(text, str) or not 1 <= len(text) <= 20:
            raise GraphError(131009, "Param display_text must be a string of at most 20 characters.")
        ttl = _check_ttl(params.get("ttl_minutes", 10080), 1, 43200, "ttl_minutes")
        payload = params.get("payload")
        if payload is not None and (not isinstance(payload, str) or len(payload) > 512):
            raise GraphError(131009, "Param payload must be a string of at most 512 characters.")
        return {"display_text": text, "ttl_minutes": ttl, "payload": payload,
                "expires_at": self.now() + ttl * 60}

    def _template_for(self, number: PhoneNumber, content: dict) -> Template:
        name = content.get("name")
        language = content.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(name, str) or not isinstance(code, str):
            raise GraphError(100, "Params template[name] and template[language][code] are required.")
        for template in self.templates.values():
            if template.waba_id == number.waba_id and template.name == name and template.language == code:
                return template
        raise GraphError(132001, f"template name ({name}) does not exist in {code}",
                         message="Template name does not exist in the translation", http_status=404)

    def _template_voice_call(self, number: PhoneNumber, template: Template, content: dict) -> dict:
        if number.calling.get("status") != "ENABLED":
            raise GraphError(138000)
        button = template.voice_call_button() or {}
        ttl, payload = int(button.get("ttl_minutes", 10080)), None
        comps = content.get("components") or []
        for comp in comps if isinstance(comps, list) else []:
            if isinstance(comp, dict) and comp.get("sub_type") == "voice_call":
                params = comp.get("parameters") or []
                for param in params if isinstance(params, list) else []:
                    if isinstance(param, dict) and param.get("type") == "ttl_minutes":
                        ttl = _check_ttl(param.get("ttl_minutes"), 1, 43200, "ttl_minutes")
                    elif isinstance(param, dict) and param.get("type") == "payload":
                        payload = param.get("payload")
                        if not isinstance(payload, str) or len(payload) > 512:
                            raise GraphError(131009, "Param payload must be a string of at most 512 characters.")
        return {"display_text": button.get("text", "Call Now"), "ttl_minutes": ttl, "payload": payload,
                "expires_at": self.now() + ttl * 60}

    def _deliver(self, message: Message) -> None:
        """The message reaches the user's phone, or fails there (old clients, unknown users)."""
        now = self.now()
        user = self.users.get(message.wa_id)
        minimum = {"call_permission_request": self.limits.min_client_version,
                   "voice_call": VOICE_CALL_MIN_VERSION}.get(message.kind)
        if user is None or not user.on_whatsapp or (minimum and not version_at_least(user.client_version, minimum)):
            message.status = "failed"
            self.put(message)
            reason = "the user is not on WhatsApp" if user is None or not user.on_whatsapp else (
                f"the user's WhatsApp {user.client_version} is older than {minimum}")
            self.emit(MessageStatus(message.id, "failed", now,
                                    errors=[GraphError(131026, f"Message Undeliverable: {reason}.")
                                            .as_webhook_error()]))
            return
        message.status = "delivered"
        reply = self.behaviour.when_asked_permission(user) if message.kind == "call_permission_request" else None
        if reply is not None:                      # the user replies by itself (wacall.users.behaviour)
            message.deadline, message.deadline_kind = now + reply.after, reply.action
        self.put(message)
        self.emit(MessageStatus(message.id, "sent", now))
        self.emit(MessageStatus(message.id, "delivered", now))

    def message_due(self, message: Message) -> None:
        reply = message.deadline_kind          # what the user chose to reply (wacall.users.behaviour)
        message.deadline = message.deadline_kind = None
        self.put(message)
        if message.answered or message.kind != "call_permission_request":
            return
        latest = self.permission_rules.latest_open_request(message.phone_number_id, message.wa_id)
        if latest is None or latest.id != message.id:
            return
        pair = self.pair(message.phone_number_id, message.wa_id)
        self.permission_rules.answer_request(message, pair, response="reject" if reply == "reject" else "accept",
                                             permanent=reply == "accept_permanent")

    # -- templates ----------------------------------------------------------------------------
    def create_template(self, waba_id: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise GraphError(100, "The request body must be a JSON object.")
        name, language, category = body.get("name"), body.get("language"), body.get("category")
        components = body.get("components")
        if not isinstance(name, str) or not name or not all(c.islower() or c.isdigit() or c == "_" for c in name):
            raise GraphError(100, "Param name must be lowercase letters, digits and underscores.")
        if not isinstance(language, str) or not language:
            raise GraphError(100, "The parameter language is required.")
        if category not in ("MARKETING", "UTILITY", "AUTHENTICATION"):
            raise GraphError(100, "Param category must be one of {MARKETING, UTILITY, AUTHENTICATION}.")
        if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
            raise GraphError(100, "Param components must be a list of objects.")
        template = Template(id=str(10**15 + len(self.templates) + 1), waba_id=waba_id, name=name,
                            language=language, category=category, components=components)
        if template.component("call_permission_request") and not template.component("body"):
            raise GraphError(100, "A call_permission_request template needs a BODY component.")
        listed = (template.component("buttons") or {}).get("buttons", [])
        if not isinstance(listed, list):
            raise GraphError(100, "Param components[buttons][buttons] must be a list.")
        buttons = [b for b in listed if isinstance(b, dict) and str(b.get("type", "")).lower() == "voice_call"]
        if len(buttons) > 1:
            raise GraphError(100, "A template can have at most one voice_call button.")
        for button in buttons:
            _check_ttl(button.get("ttl_minutes", 10080), 1440, 43200, "buttons[voice_call][ttl_minutes]")
            if len(str(button.get("text", ""))) > 20:
                raise GraphError(100, "Param buttons[voice_call][text] must be at most 20 characters.")
        if any(t.waba_id == waba_id and t.name == name and t.language == language for t in self.templates.values()):
            raise GraphError(100, f"Content in this language already exists for template {name}.",
                             subcode=2388024)
        self.put(template)
        return {"id": template.id, "status": template.status, "category": template.category}

    # -- the user's own messages --------------------------------------------------------------
    def user_sends_message(self, wa_id: str, to: str, text: str) -> Message:
        self.user(wa_id)
        number = self.number_by_address(to)
        if number is None:
            raise ControlError("unknown_business", f"{to} is not a business number here", 404)
        if not isinstance(text, str) or not text or len(text) > TEXT_MAX:
            raise ControlError("bad_text", "text must be a non-empty string", 400)
        message = Message(id=new_id("wamid"), phone_number_id=number.id, wa_id=wa_id, direction="inbound",
                          type="text", kind="text", created_at=self.now(), body={"body": text}, status="received")
        self.put(message)
        pair = self.pair(number.id, wa_id)
        pair.window_opened_at = self.now()
        self.put(pair)
        if not self.users[wa_id].username_only:      # sent from the number, not the username
            identity.phone_used(self, number, wa_id)
        self.emit(InboundMessage(message.id))
        return message
