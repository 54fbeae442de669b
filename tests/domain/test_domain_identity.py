"""Business-scoped user IDs on the virtual clock: BSUIDs, parent BSUIDs and usernames; Meta's 30-day and
contacts rule for the phone number; ``recipient`` on calls, call permissions and messages (131062 where a
BSUID recipient is not supported); a user changing number (new BSUID, ``user_changed_user_id``); and the
BSUID fields on every calling and messaging webhook shape Meta documents, rendered from domain events.

Meta's samples (the BSUID page, the calling reference, the messages/system webhook references) are copied
below as key paths; ``SAMPLES`` names each one.
"""

from __future__ import annotations

import re

import pytest
from support.domain import ALICE, BRUNO, DAY, Domain

from wacall.domain import identity
from wacall.domain.errors import GraphError
from wacall.domain.events import CallStatus
from wacall.webhooks import payloads

CAROL = "447700900077"      # a GB user who adopted a username and shows it instead of her number
BSUID_FORM = re.compile(r"[A-Z]{2}\.[A-Za-z0-9]{1,128}")
PARENT_FORM = re.compile(r"[A-Z]{2}\.ENT\.[A-Za-z0-9]{1,128}")


def carol(domain: Domain, **fields) -> None:
    domain.add_user(CAROL, name="Carol", country="GB", username="carol.gardens", username_only=True, **fields)


def parents_on(domain: Domain) -> None:
    domain.waba.parent_bsuids = True


def bsuid(domain: Domain, wa_id: str) -> str:
    return identity.user_id(domain.user(wa_id), wa_id)


def parent(domain: Domain, wa_id: str) -> str:
    return identity.parent_user_id(domain.user(wa_id), wa_id)


def rendered(domain: Domain) -> list[tuple[str, dict]]:
    """The webhooks (field, value) the events since the last call become."""
    out = []
    for event in domain.events():
        webhook = payloads.render(domain.platform, event)
        if webhook is not None:
            out.append((webhook[0], webhook[2]))
    return out


def phone_shown(domain: Domain, wa_id: str) -> bool:
    return identity.identity(domain.platform, domain.number, wa_id).wa_id is not None


def text_to(domain: Domain, **address) -> dict:
    return domain.platform.send_message(domain.app, domain.number, {
        "messaging_product": "whatsapp", "type": "text", "text": {"body": "hello"}, **address})


# ---------------------------------------------------------------------------------------------- BSUIDs

def test_every_user_has_a_bsuid_in_metas_form_stable_and_scoped_to_its_country(domain: Domain):
    ids = {wa_id: bsuid(domain, wa_id) for wa_id in domain.platform.users}
    assert all(BSUID_FORM.fullmatch(v) for v in ids.values()), ids
    assert ids[ALICE].startswith("GB.") and ids[BRUNO].startswith("BR.")
    assert len(set(ids.values())) == len(ids)                            # one per user
    again = Domain()                                                     # the same after a restart
    assert {w: bsuid(again, w) for w in ids} == ids
    assert all(PARENT_FORM.fullmatch(parent(domain, w)) for w in ids)
    domain.add_user("15550001111", country="US", bsuid="US.13491208655302741918",
                    parent_bsuid="US.ENT.11815799212886844830")
    assert bsuid(domain, "15550001111") == "US.13491208655302741918"     # a configured one is used as is
    assert parent(domain, "15550001111") == "US.ENT.11815799212886844830"


def test_bsuid_form_is_checked_where_users_are_configured():
    from wacall.domain.fields import check_user_fields
    assert check_user_fields({"bsuid": "BR.1502576394655843", "username_only": True})["bsuid"]
    for bad in ({"bsuid": "13491208655302741918"}, {"bsuid": "us.1"}, {"bsuid": "US." + "1" * 129},
                {"parent_bsuid": "nope"}, {"username_only": "yes"}, {"username": ""}, {"contacts": "x"}):
        with pytest.raises(ValueError):
            check_user_fields(bad)


# ----------------------------------------------------------------------- the 30-day and contacts rule

def test_a_user_without_a_username_always_shows_the_phone_number(domain: Domain):
    assert phone_shown(domain, ALICE)
    domain.advance(400 * DAY)
    assert phone_shown(domain, ALICE)


def test_username_only_user_shows_the_number_for_30_days_after_the_business_messages_it(domain: Domain):
    carol(domain)
    assert not phone_shown(domain, CAROL)          # never exchanged anything by phone number
    domain.platform.user_sends_message(CAROL, domain.number.id, "hi")          # sent from her username
    assert not phone_shown(domain, CAROL)
    text_to(domain, to=CAROL)                      # the business writes to the number
    assert phone_shown(domain, CAROL)
    domain.advance(30 * DAY - 1)
    assert phone_shown(domain, CAROL)
    domain.advance(1)
    assert not phone_shown(domain, CAROL)          # 30 days on, the number is withheld again
    domain.platform.user_sends_message(CAROL, domain.number.id, "still there?")
    text_to(domain, recipient=bsuid(domain, CAROL))   # writing to the BSUID does not reveal it
    assert not phone_shown(domain, CAROL)


def test_messages_from_the_number_before_the_username_count_for_30_days(domain: Domain):
    domain.platform.user_sends_message(BRUNO, domain.number.id, "oi")
    domain.advance(10 * DAY)
    domain.user(BRUNO).username, domain.user(BRUNO).username_only = "bruno", True
    assert phone_shown(domain, BRUNO)
    domain.advance(20 * DAY)
    assert not phone_shown(domain, BRUNO)


def test_a_business_call_to_the_number_counts_and_a_call_to_the_bsuid_does_not(domain: Domain):
    carol(domain)
    domain.grant(CAROL)
    call = domain.connect(CAROL, to=None, recipient=bsuid(domain, CAROL))
    assert call.wa_id == CAROL and not phone_shown(domain, CAROL)
    domain.platform.user_hangs_up(call)
    domain.connect(CAROL)
    assert phone_shown(domain, CAROL)


def test_contacts_on_either_side_show_the_number(domain: Domain):
    carol(domain, contacts=[domain.number.display_phone_number])
    assert phone_shown(domain, CAROL)
    domain.user(CAROL).contacts = [domain.number.id]
    domain.advance(100 * DAY)
    assert phone_shown(domain, CAROL)


# ------------------------------------------------------------------------------------------ recipient

def test_calls_by_recipient_reach_the_user_and_to_wins_when_both_are_sent(domain: Domain):
    domain.grant(ALICE)
    domain.grant(BRUNO)
    call = domain.connect(ALICE, to=None, recipient=bsuid(domain, ALICE))
    assert call.wa_id == ALICE
    both = domain.connect(BRUNO, recipient=bsuid(domain, ALICE))       # to=BRUNO and Alice's BSUID
    assert both.wa_id == BRUNO


def test_calls_by_parent_bsuid_only_when_the_business_has_parent_bsuids(domain: Domain):
    domain.grant(ALICE)
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE, to=None, recipient=parent(domain, ALICE))
    assert error.value.code == 138001
    parents_on(domain)
    assert domain.connect(ALICE, to=None, recipient=parent(domain, ALICE)).wa_id == ALICE


@pytest.mark.parametrize("recipient, code", [("GB.1234", 138001), ("447700900001", 100), (12, 100),
                                             ("gb.1234", 100)])
def test_a_recipient_that_names_no_user_is_refused_as_meta_does(domain: Domain, recipient, code):
    domain.grant(ALICE)
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE, to=None, recipient=recipient)
    assert error.value.code == code


def test_permission_lookups_by_recipient(domain: Domain):
    domain.grant(ALICE)
    by_bsuid = domain.platform.call_permissions_view(domain.app, domain.number, None, recipient=bsuid(domain, ALICE))
    assert by_bsuid == domain.platform.call_permissions_view(domain.app, domain.number, ALICE)
    assert by_bsuid["permission"]["status"] == "temporary"
    stranger = domain.platform.call_permissions_view(domain.app, domain.number, None, recipient="US.999")
    assert stranger["permission"] == {"status": "no_permission"}   # uncallable: no_permission, no error
    with pytest.raises(GraphError) as error:
        domain.platform.call_permissions_view(domain.app, domain.number, None, recipient="+44 7700")
    assert error.value.code == 100


def test_messages_by_recipient_and_131062_for_authentication_templates(domain: Domain):
    domain.platform.user_sends_message(ALICE, domain.number.id, "hi")
    sent = text_to(domain, recipient=bsuid(domain, ALICE))
    assert sent["contacts"] == [{"input": bsuid(domain, ALICE), "wa_id": ALICE, "user_id": bsuid(domain, ALICE)}]
    domain.platform.create_template(domain.waba.id, {
        "name": "otp", "language": "en_US", "category": "AUTHENTICATION",
        "components": [{"type": "BODY", "text": "{{1}} is your code"}]})
    template = {"messaging_product": "whatsapp", "type": "template",
                "template": {"name": "otp", "language": {"code": "en_US"}}}
    with pytest.raises(GraphError) as error:
        domain.platform.send_message(domain.app, domain.number, {**template, "recipient": bsuid(domain, ALICE)})
    assert error.value.code == 131062 and error.value.http_status == 400
    assert error.value.details == "Business-scoped User ID (BSUID) recipients are not supported for this message."
    assert domain.platform.send_message(domain.app, domain.number, {**template, "to": ALICE})["messages"]


def test_the_send_response_withholds_the_number_of_a_username_only_user(domain: Domain):
    carol(domain)
    parents_on(domain)
    domain.platform.user_sends_message(CAROL, domain.number.id, "hi")
    sent = text_to(domain, recipient=bsuid(domain, CAROL))
    assert sent["contacts"] == [{"input": bsuid(domain, CAROL), "user_id": bsuid(domain, CAROL),
                                 "parent_user_id": parent(domain, CAROL)}]


# ------------------------------------------------------------------------------------- number changes

def test_a_user_changing_number_gets_a_new_bsuid_and_each_business_a_system_message(domain: Domain):
    domain.platform.user_sends_message(ALICE, domain.number.id, "hi")
    old = bsuid(domain, ALICE)
    domain.events()
    new_user = identity.user_changes_number(domain.platform, ALICE, "447700900099", country="GB")
    new = bsuid(domain, "447700900099")
    assert new != old and new.startswith("GB.") and new_user.name == domain.user(ALICE).name
    assert identity.user_by_recipient(domain.platform, domain.number, old) is None     # the old one is gone
    assert identity.user_by_recipient(domain.platform, domain.number, new).wa_id == "447700900099"
    [(field, value)] = rendered(domain)
    assert field == "messages" and "contacts" not in value
    [message] = value["messages"]
    assert message["type"] == "system" and message["from"] == ALICE and message["from_user_id"] == old
    assert message["system"] == {"body": f"User Alice Smith changed from {old} to {new}",
                                 "type": "user_changed_user_id", "user_id": new}


# --------------------------------------------------------- webhooks: Meta's samples, with BSUID fields

def paths(value, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(value, dict):
        for key, item in value.items():
            out.add(prefix + key)
            out |= paths(item, prefix + key + ".")
    elif isinstance(value, list):
        for item in value:
            out |= paths(item, prefix.rstrip(".") + "[].")
    return out


def bsuid_paths(sample: dict) -> set[str]:
    """The identity paths of one of Meta's samples: what names the user."""
    return {p for p in paths(sample) if re.search(r"(user_id|username|wa_id|from|\bto|recipient_id)$", p)
            and "context" not in p}


CONTACT = {"profile": {"name": "N", "username": "U"}, "wa_id": "W", "user_id": "B", "parent_user_id": "P"}
SAMPLES = {   # Meta's documented webhook shapes (calling reference, BSUID page, messages references)
    "uic_connect": {"contacts": [CONTACT], "calls": [{"from": "W", "from_user_id": "B",
                                                      "from_parent_user_id": "P", "to": "BIZ"}]},
    "bic_connect": {"contacts": [CONTACT], "calls": [{"from": "BIZ", "to": "W", "to_user_id": "B",
                                                      "to_parent_user_id": "P"}]},
    "bic_terminate": {"contacts": [CONTACT], "calls": [{"to": "W", "to_user_id": "B", "to_parent_user_id": "P",
                                                        "from": "BIZ"}]},
    "call_status": {"statuses": [{"recipient_id": "W", "recipient_user_id": "B",
                                  "recipient_parent_user_id": "P"}]},
    "message_status": {"contacts": [CONTACT], "statuses": [{"recipient_id": "W", "recipient_user_id": "B",
                                                            "parent_recipient_user_id": "P"}]},
    "permission_reply": {"contacts": [CONTACT], "messages": [{"from": "W", "from_user_id": "B",
                                                              "from_parent_user_id": "P"}]},
    "text_message": {"contacts": [CONTACT], "messages": [{"from": "W", "from_user_id": "B",
                                                          "from_parent_user_id": "P"}]},
}


def meta_sample(name: str, username: bool = True) -> set[str]:
    found = bsuid_paths(SAMPLES[name])
    return found if username else found - {"contacts[].profile.username"}


def by_kind(webhooks: list[tuple[str, dict]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for field, value in webhooks:
        kind = payloads.event_kind(field, value)
        if kind == "connect":
            kind = "bic_connect" if value["calls"][0]["direction"] == "BUSINESS_INITIATED" else "uic_connect"
        elif kind == "terminate":
            kind = "bic_terminate" if value["calls"][0]["direction"] == "BUSINESS_INITIATED" else "uic_terminate"
        out.setdefault(kind, value)
    return out


def every_webhook(domain: Domain, wa_id: str, by_bsuid: bool = False) -> dict[str, dict]:
    """Drive one user through every calling and messaging webhook: a message, a permission request and
    reply, a business call (statuses, connect, terminate), a user call (connect, terminate). The business
    addresses the user by phone number, or by BSUID."""
    address = {"to": None, "recipient": bsuid(domain, wa_id)} if by_bsuid else {"to": wa_id}
    domain.platform.user_sends_message(wa_id, domain.number.id, "hi")
    domain.platform.send_message(domain.app, domain.number, {
        "messaging_product": "whatsapp", "type": "interactive", **address,
        "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                        "body": {"text": "May we call you?"}}})
    domain.platform.user_permission_reply(wa_id, domain.number.id, response="accept")
    call = domain.connect(wa_id, **address)
    domain.platform.user_answers(call)
    domain.platform.user_hangs_up(call)
    domain.advance(60)
    uic = domain.user_calls(wa_id)
    domain.act(uic, "reject")
    return by_kind(rendered(domain))


def test_every_calling_and_messaging_webhook_carries_metas_bsuid_fields(domain: Domain):
    parents_on(domain)
    domain.user(ALICE).username = "alice.s"
    hooks = every_webhook(domain, ALICE)
    expect = {"uic_connect": "uic_connect", "bic_connect": "bic_connect", "bic_terminate": "bic_terminate",
              "uic_terminate": "uic_connect", "RINGING": "call_status", "ACCEPTED": "call_status",
              "call_permission_reply": "permission_reply", "text": None, "delivered": "message_status"}
    for kind, sample in expect.items():
        if sample is None:
            continue
        assert kind in hooks, (kind, sorted(hooks))
        assert meta_sample(sample) <= bsuid_paths(hooks[kind]), (kind, meta_sample(sample) - bsuid_paths(hooks[kind]))
    uic = hooks["uic_connect"]["calls"][0]
    assert list(uic)[:4] == ["id", "from", "from_user_id", "from_parent_user_id"]      # beside the number
    assert uic["from_user_id"] == bsuid(domain, ALICE) and uic["from_parent_user_id"] == parent(domain, ALICE)
    assert hooks["bic_connect"]["contacts"] == [{"profile": {"name": "Alice Smith", "username": "alice.s"},
                                                 "wa_id": ALICE, "user_id": bsuid(domain, ALICE),
                                                 "parent_user_id": parent(domain, ALICE)}]
    status = hooks["RINGING"]["statuses"][0]
    assert (status["recipient_id"], status["recipient_user_id"], status["recipient_parent_user_id"]) == (
        ALICE, bsuid(domain, ALICE), parent(domain, ALICE))
    message_status = hooks["delivered"]["statuses"][0]
    assert message_status["parent_recipient_user_id"] == parent(domain, ALICE)   # Meta's quirk, not a typo
    assert "recipient_parent_user_id" not in message_status
    assert hooks["sent"]["contacts"][0]["profile"] == {"name": "Alice Smith"}   # username on delivered/read only


def test_without_parent_bsuids_no_parent_fields_anywhere(domain: Domain):
    hooks = every_webhook(domain, ALICE)
    assert hooks and not any("parent" in p for value in hooks.values() for p in paths(value))
    assert all(any(p.endswith("user_id") for p in paths(value)) for kind, value in hooks.items()), hooks.keys()


def test_a_username_only_user_has_no_phone_field_in_any_webhook(domain: Domain):
    carol(domain)
    parents_on(domain)
    hooks = every_webhook(domain, CAROL, by_bsuid=True)
    assert {"uic_connect", "bic_connect", "bic_terminate", "uic_terminate", "RINGING", "call_permission_reply",
            "text", "delivered"} <= set(hooks)
    for kind, value in hooks.items():
        text = repr(value)
        assert CAROL not in text, (kind, value)                  # no wa_id, from, to, recipient_id, context.from
        assert bsuid(domain, CAROL) in text, kind
    assert hooks["uic_connect"]["contacts"] == [{"profile": {"name": "Carol", "username": "carol.gardens"},
                                                 "user_id": bsuid(domain, CAROL),
                                                 "parent_user_id": parent(domain, CAROL)}]
    assert set(hooks["uic_connect"]["calls"][0]) >= {"from_user_id", "from_parent_user_id", "to"}
    assert "from" not in hooks["uic_connect"]["calls"][0]


def test_other_features_payloads_get_the_fields_too(domain: Domain):
    """Values shaped like Meta's voicemail audio message, call_recording_available and SIP call_created
    samples, built the way those features build them (no BSUID fields of their own)."""
    parents_on(domain)
    metadata = {"display_phone_number": domain.number.display_phone_number, "phone_number_id": domain.number.id}
    voicemail = {"messaging_product": "whatsapp", "metadata": metadata,
                 "contacts": payloads._contacts(domain.platform, ALICE),
                 "messages": [{"id": "wacid.X", "from": ALICE, "timestamp": "1", "type": "audio", "audio": {}}]}
    recording = {"messaging_product": "whatsapp", "metadata": metadata,
                 "calls": [{"id": "wacid.X", "from": ALICE, "timestamp": "1", "event": "call_recording_available"}]}
    created = {"messaging_product": "whatsapp", "metadata": metadata,
               "calls": [{"id": "wacid.X", "to": ALICE, "from": domain.number.display_phone_number,
                          "event": "call_created", "direction": "BUSINESS_INITIATED"}]}
    vm = payloads.with_user_ids(domain.platform, domain.number, voicemail)
    assert vm["contacts"][0]["user_id"] == vm["messages"][0]["from_user_id"] == bsuid(domain, ALICE)
    assert vm["messages"][0]["from_parent_user_id"] == vm["contacts"][0]["parent_user_id"] == parent(domain, ALICE)
    rec = payloads.with_user_ids(domain.platform, domain.number, recording)["calls"][0]
    assert (rec["from_user_id"], rec["from_parent_user_id"]) == (bsuid(domain, ALICE), parent(domain, ALICE))
    sip = payloads.with_user_ids(domain.platform, domain.number, created)["calls"][0]
    assert list(sip)[:5] == ["id", "to", "to_user_id", "to_parent_user_id", "from"]


def test_failed_message_status_has_no_contacts(domain: Domain):
    domain.platform.create_template(domain.waba.id, {"name": "news", "language": "en_US", "category": "UTILITY",
                                                     "components": [{"type": "BODY", "text": "News"}]})
    domain.events()
    domain.platform.send_message(domain.app, domain.number, {
        "messaging_product": "whatsapp", "to": "15550002222", "type": "template",
        "template": {"name": "news", "language": {"code": "en_US"}}})      # no WhatsApp user has that number
    statuses = [v for f, v in rendered(domain) if v.get("statuses")]
    assert statuses and all(v["statuses"][0]["status"] == "failed" and "contacts" not in v for v in statuses)
    assert "recipient_user_id" not in statuses[0]["statuses"][0]


def test_call_status_events_render_recipient_fields(domain: Domain):
    domain.grant(ALICE)
    call = domain.connect(ALICE)
    webhooks = [payloads.render(domain.platform, e) for e in domain.events() if isinstance(e, CallStatus)]
    [(field, _, value, call_id)] = webhooks
    assert field == "calls" and call_id == call.id
    assert value["statuses"][0]["recipient_user_id"] == bsuid(domain, ALICE)


def test_the_config_sets_parent_bsuids_and_users_identities(tmp_path):
    from wacall.config import ConfigError, load_config
    path = tmp_path / "wacall.toml"
    path.write_text('[[wabas]]\nid = "1"\nname = "W"\nparent_bsuids = true\n\n'
                    '[[users]]\nwa_id = "447700900077"\nname = "Carol"\nusername = "carol.gardens"\n'
                    'username_only = true\nbsuid = "GB.42"\ncontacts = ["+44 7700 900123"]\n')
    config = load_config(str(path))
    assert config.wabas[0].parent_bsuids is True
    [user] = config.users
    assert (user.bsuid, user.username, user.username_only, user.contacts) == (
        "GB.42", "carol.gardens", True, ["447700900123"])
    path.write_text('[[wabas]]\nid = "1"\nname = "W"\nparent_bsuids = "yes"\n')
    with pytest.raises(ConfigError, match="parent_bsuids must be true or false"):
        load_config(str(path))
    path.write_text('[[users]]\nwa_id = "447700900077"\nname = "Carol"\nbsuid = "447700900077"\n')
    with pytest.raises(ConfigError, match="bsuid must be"):
        load_config(str(path))
