"""The config loader: a file holds only what differs from the built-in default (merged over it), and every
mistake in it is one sentence naming the file, the line and the key (docs/configuration.md)."""

from __future__ import annotations

import pytest

from wacall.config import DEFAULT_PORT, DEFAULT_SIP_PORT, ConfigError, SipGatewayConfig, load_config, merged


def write(tmp_path, text: str) -> str:
    path = tmp_path / "wacall.toml"
    path.write_text(text)
    return str(path)


def test_a_partial_file_is_merged_over_the_default(tmp_path):
    config = load_config(write(tmp_path, '[limits]\nprofile = "sandbox"\n\n[sip]\nt1 = 0.1\n'))
    default = load_config()
    assert config.limits.profile == "sandbox"
    assert config.sip.t1 == 0.1 and config.sip.domain == "wa.meta.vc"            # the rest of [sip] stays
    assert [n.id for n in config.numbers] == [n.id for n in default.numbers]      # and the default world
    assert [u.wa_id for u in config.users] == [u.wa_id for u in default.users]


def test_an_array_of_tables_replaces_the_defaults_list(tmp_path):
    config = load_config(write(tmp_path, '[[users]]\nwa_id = "447700900077"\nname = "Only Me"\n'))
    assert [(u.wa_id, u.name) for u in config.users] == [("447700900077", "Only Me")]
    assert config.apps[0].access_token == "EAAwacall0000default0000token"         # the default app stays


def test_merged_recurses_into_tables_only():
    assert merged({"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [2]}) == {"a": {"x": 1, "y": 3}, "l": [2]}


@pytest.mark.parametrize("text,where,words", [
    ("[sip]\nt1 = 0.5\nport = 'x'\n", ":3:", "sip.port must be a TCP port"),
    ("[media]\nworkers = -1\n", ":2:", "media.workers"),
    ("[[users]]\nwa_id = '447700900001'\nname = 'A'\n\n[[users]]\nwa_id = '447700900002'\nname = 'B'\n"
     "on_whatsapp = 'no'\n", ":8:", "users[1]: on_whatsapp must be true or false"),
    ("[memory]\nkeep_ended = -3\n", ":2:", "keep_ended"),
    ("[sip]\nbogus = 1\n", ":2:", "sip: unknown keys bogus"),
    ("[limits]\nprofile = \"nope\"\n", ":2:", "unknown limits profile"),
    ("colour = 'blue'\n", ":1:", "unknown key 'colour'"),
    ("[limits\nprofile = 1\n", "", "not valid TOML"),
    ("users = 5\n", ":1:", "users must be an array of tables"),
])
def test_errors_name_the_file_line_and_key(tmp_path, text, where, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(path + where) and words in message, message


def test_a_syntax_error_says_the_line_and_column(tmp_path):
    with pytest.raises(ConfigError, match=r"wacall.toml: not valid TOML: .*line 2, column"):
        load_config(write(tmp_path, "[limits]\nprofile = \n"))


def test_a_missing_file_is_a_sentence(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(str(tmp_path / "nope.toml"))


def test_the_sip_port_follows_the_graph_port_unless_set():
    sip = SipGatewayConfig()
    assert sip.port_for(DEFAULT_PORT) == DEFAULT_SIP_PORT       # the default instance: 8080 and 5061
    assert sip.port_for(0) == 0                                 # --port 0: every listener on a free port
    assert sip.port_for(9000) == 0                              # another fixed port: SIP on a free one
    assert SipGatewayConfig(port=5070).port_for(0) == 5070      # [sip] port or --sip-port wins
    assert SipGatewayConfig(port=-1).port_for(DEFAULT_PORT) == -1
