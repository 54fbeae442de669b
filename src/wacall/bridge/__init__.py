"""The integration module of Meta's integration patterns: a bridge between WhatsApp (Graph API and webhooks) and
a business's PBX (SIP), the media through RtpEngine. ``wacall bridge --config bridge.toml``; docs/bridge.md.

It is business-side code: it uses ``wacall.business`` and wacall's sans-I/O SIP message module, nothing of the
emulator, and runs unchanged against graph.facebook.com."""
