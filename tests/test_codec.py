"""The codec's stored form (``codec.dumps_stored``, orjson) reads back as the same value as its JSON (``dumps``)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from wacall import codec

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
                      | st.dictionaries(st.text() | st.integers(), inner, max_size=5), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(values)
def test_stored_form_reads_back_as_the_json_form(value) -> None:
    assert codec.loads(codec.dumps_stored(value)) == codec.loads(codec.dumps(value))


def test_what_orjson_refuses_is_stored_by_the_standard_encoder() -> None:
    for value in ({"n": 2 ** 70}, [-(2 ** 64)]):
        assert codec.dumps_stored(value) == codec.dumps(value).encode()
    # a lone surrogate has no UTF-8 form: escaped, and read back as it was
    assert codec.dumps_stored({"s": "a\ud800b"}) == b'{"s":"a\\ud800b"}'
    assert codec.loads(codec.dumps_stored({"s": "a\ud800b"})) == {"s": "a\ud800b"}


def test_a_sip_trace_and_a_call_document_read_back_unchanged() -> None:
    trace = "INVITE sip:+447955500001@wa.meta.vc;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1\r\n\r\n"
    value = [{"t": 1700000000.123456, "kind": "sip_in", "message": trace, "peer": "127.0.0.1:5070"},
             {"t": 1e16, "kind": "state", "to": "ACCEPTED", "cost": 0.1 + 0.2, "x": None, "ok": True}]
    assert codec.loads(codec.dumps_stored(value)) == value
