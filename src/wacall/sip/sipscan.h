/* The compiled SIP scanner's interface: read by the C compiler (sipscan.c includes it) and by cffi's cdef
 * (sipscan_build.py), so it holds only what cdef parses: no #include, no macros. */

/* sip_scan: one complete message (a datagram, or what the stream framer cut). On the common well-formed
 * case it writes the start line and the header fields to out as "start\nname\nvalue\nname\nvalue..." (names as
 * written, values with SP/HTAB stripped) and returns the number of fields; info[0..1] is the start line, info[2]
 * where the body starts, info[3] the Content-Length (-1: none, -2: let Python read it), info[4] the length written to out,
 * info[5] 1 if the octets are laid out as Message.to_bytes renders them (CRLF line ends, "name: value" with one
 * SP and nothing trailing, no leading line breaks, one Content-Length in plain digits; the names' spelling
 * is Python's to check), else 0. It returns -1 for everything else
 * (non-ASCII or NUL in the header block, folding, bare CR, a malformed header line, no empty line, out too
 * small): the Python parser, the reference, handles those, errors included. */
long sip_scan(const unsigned char *data, size_t len, unsigned char *out, size_t out_cap, long *info);

/* sip_frame_length: the Content-Length of an unfolded ASCII header block (the framer's question), when the
 * block has exactly one Content-Length (or "l") field and its value is 1-18 digits between SP/HTAB; -1 for
 * anything else (none, several, folded, odd values: Python's lenient reading decides). */
long long sip_frame_length(const unsigned char *head, size_t len);
