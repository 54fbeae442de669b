"""A small SIP core for wacall's ``wa.meta.vc`` gateway (SIP over TLS, RFC 3261), layered like pjsip.

Sans-I/O foundation: :mod:`.uri` (SIP URIs, name-addr), :mod:`.message` (parse/serialise,
stream framing, response building) and :mod:`.digest` (RFC 2617/7616 digest auth).
"""
