/* The compiled SIP scanner, ``wacall.sip._sipscan`` (a CPython extension built by setup.py; see
 * wacall.sip.message): the common case of RFC 3261 section 7's message layout in one pass, straight into the
 * Python objects the parser keeps (the header fields with their canonical names, and the lookup index), with
 * the pure-Python parser as the reference and the fallback.
 *
 * scan(data: bytes) -> (start line, fields, index, rest, content length, verbatim) or None
 *   On the common well-formed case (an ASCII header block without NUL, folding or bare CR, every header line
 *   ``token [SP/HTAB] : value``): the start line; the fields as a list of (canonical name, value) tuples (a
 *   compact or well-known name in its usual spelling, as message._CANONICAL gives it; others as written;
 *   values stripped of SP/HTAB); the index Headers builds, lower-case canonical name -> tuple of its values in
 *   order; the octets after the empty line; the Content-Length (-1: none, -2: let Python read it: several,
 *   or not plain digits); and whether the octets are laid out as Message.to_bytes renders them (CRLF line
 *   ends, "Name: value" with the canonical name, one SP and nothing trailing, no leading line breaks, one
 *   Content-Length in plain digits without leading zeros, at least one field). None for everything else:
 *   the Python parser, the reference, handles those, errors included.
 * frame_length(head: bytes, end: int) -> int
 *   The Content-Length of the unfolded ASCII header block head[:end] (the stream framer's question), when it
 *   has exactly one Content-Length (or "l") field whose value is 1-18 digits between SP/HTAB; -1 for anything
 *   else (none, several, folded, odd values: Python's lenient reading decides).
 * via(text: str), name_addr(text: str)
 *   The plain forms of a Via and a name-addr, in pieces (see below), or None: Python parses the rest.
 * via_facts(text: str) -> (host, port, branch, canonical) or None
 *   What the transaction key and the rport splice read of a plain Via, without a Via made (see below).
 * rport_spliced(data: bytes, port: int) -> bytes or None
 *   The usual request with the transport's RFC 3581 stamp in its octets: when data is not a response (its first
 *   four octets are not "SIP/" in any case), its first line ends in CRLF, its second line is "Via: <value>"
 *   ending in CRLF, and that value ends in ";rport", holds no "," (one element) and ";rport" once (in any
 *   case): data with "=<port>" inserted after that ";rport". None for anything else (transport.parse_received
 *   stamps those after the parse, the general way). What transport.parse_received checked in Python before.
 * render(start_line: str, fields: list, body: bytes) -> bytes or None
 *   A message's wire form as message._Message._render_now gives it, when the start line and every field (a
 *   (name, value) tuple of str) are ASCII: the start line, "Name: value" per field, each ended by CRLF, then
 *   "Content-Length: <len(body)>" if no field is called "Content-Length", the empty line and the body. None
 *   (Python renders) for anything else: non-ASCII text, other types, or Content-Length fields to fix.
 * fields_checked(index, method or None, addresses: dict, vias: dict) -> int or None
 *   message._check_fields on the usual message (see the function): the bits of the From, To, Via and Contact
 *   values left for Python to parse (none of them in its memo), or None: Python checks it all (the reference).
 * response_fields(index, to_tag, headers, content_type, timestamp, known) -> list or None
 *   The fields message.response_to gives a response to the request with that header index (see the function),
 *   or None: Python builds them (the reference).
 * known_names() -> dict
 *   The name table below (lower-case spelling -> canonical name): tests compare it with message._CANONICAL. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* RFC 3261 section 25.1 token characters: alphanum - . ! % * _ + ` ' ~ */
static unsigned char token_char[256];

static void init_token_chars(void) {
    for (int c = 0; c < 256; c++)
        token_char[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                        || (c != 0 && strchr("-.!%*_+`'~", c) != NULL);
}

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

/* The header names message._CANONICAL knows (its _KNOWN_NAMES and COMPACT): lower-case spelling -> canonical
 * name. tests/test_sip_scan.py checks this table against Python's. */
static const char *const KNOWN[][2] = {
    {"accept", "Accept"}, {"accept-encoding", "Accept-Encoding"}, {"accept-language", "Accept-Language"},
    {"alert-info", "Alert-Info"}, {"allow", "Allow"}, {"allow-events", "Allow-Events"},
    {"authentication-info", "Authentication-Info"}, {"authorization", "Authorization"}, {"call-id", "Call-ID"},
    {"call-info", "Call-Info"}, {"contact", "Contact"}, {"content-disposition", "Content-Disposition"},
    {"content-encoding", "Content-Encoding"}, {"content-language", "Content-Language"},
    {"content-length", "Content-Length"}, {"content-type", "Content-Type"}, {"cseq", "CSeq"}, {"date", "Date"},
    {"error-info", "Error-Info"}, {"event", "Event"}, {"expires", "Expires"}, {"from", "From"},
    {"in-reply-to", "In-Reply-To"}, {"max-forwards", "Max-Forwards"}, {"min-expires", "Min-Expires"},
    {"min-se", "Min-SE"}, {"mime-version", "MIME-Version"}, {"organization", "Organization"}, {"path", "Path"},
    {"priority", "Priority"}, {"proxy-authenticate", "Proxy-Authenticate"},
    {"proxy-authorization", "Proxy-Authorization"}, {"proxy-require", "Proxy-Require"}, {"rack", "RAck"},
    {"reason", "Reason"}, {"record-route", "Record-Route"}, {"refer-to", "Refer-To"},
    {"referred-by", "Referred-By"}, {"reply-to", "Reply-To"}, {"require", "Require"},
    {"retry-after", "Retry-After"}, {"route", "Route"}, {"rseq", "RSeq"}, {"server", "Server"},
    {"service-route", "Service-Route"}, {"session-expires", "Session-Expires"}, {"subject", "Subject"},
    {"subscription-state", "Subscription-State"}, {"supported", "Supported"}, {"timestamp", "Timestamp"},
    {"to", "To"}, {"unsupported", "Unsupported"}, {"user-agent", "User-Agent"}, {"via", "Via"},
    {"warning", "Warning"}, {"www-authenticate", "WWW-Authenticate"},
    {"p-asserted-identity", "P-Asserted-Identity"}, {"p-preferred-identity", "P-Preferred-Identity"},
    {"privacy", "Privacy"},
    /* compact forms (RFC 3261 section 7.3.3 and the RFCs message.COMPACT names) */
    {"i", "Call-ID"}, {"m", "Contact"}, {"e", "Content-Encoding"}, {"l", "Content-Length"},
    {"c", "Content-Type"}, {"f", "From"}, {"s", "Subject"}, {"k", "Supported"}, {"t", "To"}, {"v", "Via"},
    {"o", "Event"}, {"r", "Refer-To"}, {"u", "Allow-Events"}, {"x", "Session-Expires"},
};
#define N_KNOWN ((int)(sizeof KNOWN / sizeof KNOWN[0]))
#define MAX_KNOWN_LEN 24
static Py_ssize_t known_len[N_KNOWN];
static PyObject *known_canonical[N_KNOWN];     /* the canonical name (interned) */
static PyObject *known_key[N_KNOWN];           /* its lower-case form: the index key (interned) */
/* the entries of each name length, in table order, -1 ended (a name is looked up among those of its length) */
static signed char by_length[MAX_KNOWN_LEN + 1][N_KNOWN + 1];
static char is_length[N_KNOWN];                /* the entries of Content-Length: "content-length" and "l" */

/* the entry whose lower-case spelling is name[0..n) in any case, or -1 */
static int known_entry(const unsigned char *name, size_t n) {
    if (n > MAX_KNOWN_LEN) return -1;
    char low[MAX_KNOWN_LEN];
    for (size_t k = 0; k < n; k++) low[k] = (char)lower(name[k]);
    for (const signed char *e = by_length[n]; *e >= 0; e++)
        if (memcmp(KNOWN[*e][0], low, n) == 0) return *e;
    return -1;
}

/* digits only, 1-18 of them: the value; else -1 */
static long long digits_value(const unsigned char *v, size_t n) {
    if (n == 0 || n > 18) return -1;
    long long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

/* not a line break, NUL or non-ASCII (what the header-end search steps over) */
static int ordinary(unsigned char c) { return c < 0x80 && c != 0 && c != '\r' && c != '\n'; }

/* the first index at or after p (up to n) whose octet is not ordinary(): eight octets at a time while none of
 * them is (a header block is ~95 % ordinary octets; octet by octet costs ~10 instructions each), then octet by
 * octet. A word has a zero octet iff (w - 0x01..01) & ~w & 0x80..80 is not 0 (exact as a yes/no); CR and LF
 * are found as zero octets of w ^ 0x0d..0d and w ^ 0x0a..0a, non-ASCII by the top bits. */
static size_t skip_ordinary(const unsigned char *d, size_t p, size_t n) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (p + 8 <= n) {
        uint64_t w;
        memcpy(&w, d + p, 8);
        uint64_t cr = w ^ (ones * '\r'), lf = w ^ (ones * '\n');
        uint64_t odd = (w | ((w - ones) & ~w) | ((cr - ones) & ~cr) | ((lf - ones) & ~lf)) & highs;
        if (odd) break;
        p += 8;
    }
    while (p < n && ordinary(d[p])) p++;
    return p;
}

/* the end of the first line break "\r?\n" at or after i (its first octet's index in *brk), or 0 */
static size_t line_end(const unsigned char *d, size_t i, size_t n, size_t *brk) {
    const unsigned char *p = memchr(d + i, '\n', n - i);
    if (p == NULL) return 0;
    size_t at = (size_t)(p - d);
    *brk = (at > i && d[at - 1] == '\r') ? at - 1 : at;
    return at + 1;
}

/* an ASCII str of d[0..n) (the header block was checked: nothing over 0x7f) */
static PyObject *ascii_str(const unsigned char *d, size_t n) {
    PyObject *s = PyUnicode_New((Py_ssize_t)n, 127);
    if (s != NULL) memcpy(PyUnicode_1BYTE_DATA(s), d, n);
    return s;
}

/* index[key] gets value appended (a new tuple: the index holds tuples, see Headers._index). A name's first field
 * (nearly every one) costs one dict look-up: its 1-tuple is put in by PyDict_SetDefault, which hands back what
 * the key already held otherwise. */
static int index_add(PyObject *index, PyObject *key, PyObject *value) {
    PyObject *one = PyTuple_New(1);
    if (one == NULL) return -1;
    Py_INCREF(value);
    PyTuple_SET_ITEM(one, 0, value);
    PyObject_GC_UnTrack(one);         /* strs only: never part of a cycle, nothing for the collector to scan */
    PyObject *values = PyDict_SetDefault(index, key, one);        /* borrowed */
    Py_DECREF(one);
    if (values == NULL) return -1;
    if (values == one) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(values);
    PyObject *grown = PyTuple_New(n + 1);
    if (grown == NULL) return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyTuple_GET_ITEM(values, k);
        Py_INCREF(v);
        PyTuple_SET_ITEM(grown, k, v);
    }
    Py_INCREF(value);
    PyTuple_SET_ITEM(grown, n, value);
    PyObject_GC_UnTrack(grown);
    int rc = PyDict_SetItem(index, key, grown);
    Py_DECREF(grown);
    return rc;
}


/* The header index of one message, sized for a usual message's dozen names (one allocation, no resize).
   _PyDict_NewPresized is CPython's own (not in the limited API); where it is not declared, a plain dict. */
static PyObject *new_index(void) {
#if PY_VERSION_HEX < 0x030D0000
    return _PyDict_NewPresized(12);
#else
    return PyDict_New();
#endif
}

static PyObject *scan(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyBytes_CheckExact(arg)) Py_RETURN_NONE;               /* bytes only; Python takes anything else */
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(arg);
    size_t len = (size_t)PyBytes_GET_SIZE(arg);
    size_t i = 0;
    while (i < len && (data[i] == '\r' || data[i] == '\n')) i++;          /* section 7.5 */
    size_t head_start = i;
    /* the header block ends at the first "\r?\n\r?\n" (what message._HEADER_END_RE finds); on the way every octet
     * before it is checked: no NUL, nothing over 0x7f, no CR but in CRLF (those go to Python). One pass. */
    size_t head_end = 0, body = 0;
    size_t p = head_start;
    for (;;) {
        p = skip_ordinary(data, p, len);
        if (p >= len) Py_RETURN_NONE;                 /* no empty line */
        size_t q;
        if (data[p] == '\r') {
            if (p + 1 >= len || data[p + 1] != '\n') Py_RETURN_NONE;    /* bare CR (or no empty line after it) */
            q = p + 2;
        } else if (data[p] == '\n') {
            q = p + 1;
        } else {
            Py_RETURN_NONE;                           /* NUL or non-ASCII: decoding and odd octets are Python's */
        }
        if (q < len && data[q] == '\r' && q + 1 < len && data[q + 1] == '\n') { head_end = p; body = q + 2; break; }
        if (q < len && data[q] == '\n') { head_end = p; body = q + 1; break; }
        p = q;
    }
    /* start line */
    size_t brk;
    size_t next = line_end(data, head_start, head_end + 1, &brk);
    size_t start_end;
    if (next == 0 || brk >= head_end) {               /* a start line without header fields */
        start_end = head_end;
        next = head_end;
    } else {
        start_end = brk;
    }
    /* verbatim: see the top of the file */
    int verbatim = head_start == 0 && start_end < head_end && data[start_end] == '\r' && body == head_end + 4;
    long long length = -1;
    int lengths = 0;
    PyObject *fields = PyList_New(0), *index = new_index(), *name = NULL, *key = NULL, *value = NULL;
    if (fields == NULL || index == NULL) goto failed;
    i = next;
    while (i < head_end) {
        size_t e;
        size_t after = line_end(data, i, head_end, &e);
        if (after == 0) { e = head_end; after = head_end; }
        /* the line is data[i..e) */
        if (data[i] == ' ' || data[i] == '\t') goto declined;      /* folding: Python's */
        const unsigned char *colon = memchr(data + i, ':', e - i);
        if (colon == NULL) goto declined;                            /* no colon */
        size_t c = (size_t)(colon - data);
        size_t ne = c;
        while (ne > i && (data[ne - 1] == ' ' || data[ne - 1] == '\t')) ne--;
        if (ne == i) goto declined;
        for (size_t k = i; k < ne; k++)
            if (!token_char[data[k]]) goto declined;
        size_t vs = c + 1, ve = e;
        while (vs < ve && (data[vs] == ' ' || data[vs] == '\t')) vs++;
        while (ve > vs && (data[ve - 1] == ' ' || data[ve - 1] == '\t')) ve--;
        if (verbatim && (ne != c || vs != c + 2 || data[c + 1] != ' ' || ve != e || (after != head_end && data[e] != '\r')))
            verbatim = 0;
        int known = known_entry(data + i, ne - i);
        if (known >= 0) {
            name = known_canonical[known];
            key = known_key[known];
            Py_INCREF(name);
            Py_INCREF(key);
            if (verbatim && (known_len[known] != (Py_ssize_t)(ne - i)
                             || memcmp(PyUnicode_1BYTE_DATA(name), data + i, ne - i) != 0))
                verbatim = 0;                         /* compact or odd spellings render differently */
        } else {
            name = ascii_str(data + i, ne - i);
            if (name == NULL) goto failed;
            key = PyObject_CallMethod(name, "lower", NULL);
            if (key == NULL) goto failed;
        }
        value = ascii_str(data + vs, ve - vs);
        if (value == NULL) goto failed;
        if (known >= 0 && is_length[known]) {
            lengths++;
            length = digits_value(data + vs, ve - vs);
            if (data[vs] == '0' && ve - vs > 1) verbatim = 0;              /* rendered without leading zeros */
        }
        PyObject *field = PyTuple_New(2);
        if (field == NULL) goto failed;
        PyTuple_SET_ITEM(field, 0, name);
        name = NULL;
        Py_INCREF(value);
        PyTuple_SET_ITEM(field, 1, value);
        PyObject_GC_UnTrack(field);
        int rc = PyList_Append(fields, field);
        Py_DECREF(field);
        if (rc < 0 || index_add(index, key, value) < 0) goto failed;
        Py_CLEAR(key);
        Py_CLEAR(value);
        i = after;
    }
    long long content_length = lengths == 0 ? -1 : (lengths == 1 && length >= 0) ? length : -2;
    verbatim = verbatim && PyList_GET_SIZE(fields) > 0 && content_length >= 0;
    PyObject *start = ascii_str(data + head_start, start_end - head_start);
    PyObject *rest = start == NULL ? NULL : PyBytes_FromStringAndSize((const char *)data + body, (Py_ssize_t)(len - body));
    if (rest == NULL) { Py_XDECREF(start); goto failed; }
    return Py_BuildValue("(NNNNLO)", start, fields, index, rest, content_length, verbatim ? Py_True : Py_False);
declined:
    Py_DECREF(fields);
    Py_DECREF(index);
    Py_XDECREF(name);
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_RETURN_NONE;
failed:
    Py_XDECREF(fields);
    Py_XDECREF(index);
    Py_XDECREF(name);
    Py_XDECREF(key);
    Py_XDECREF(value);
    return NULL;
}

static PyObject *frame_length(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "frame_length(head: bytes, end: int)");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    if (end == -1 && PyErr_Occurred()) return NULL;
    if (end < 0 || end > PyBytes_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "end outside head");
        return NULL;
    }
    const unsigned char *head = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    size_t len = (size_t)end;
    long long found = -1;
    int count = 0;
    size_t i = 0;
    /* the first line is the start line: fields start after a "\n" (message._LENGTH_FIELD_RE) */
    while (i < len) {
        const unsigned char *p = memchr(head + i, '\n', len - i);
        if (p == NULL) break;
        i = (size_t)(p - head) + 1;
        if (i >= len) break;
        if (head[i] == ' ' || head[i] == '\t') return PyLong_FromLong(-1);      /* folded: Python's */
        size_t e = i;
        while (e < len && head[e] != ':' && head[e] != '\r' && head[e] != '\n') e++;
        if (e >= len || head[e] != ':') continue;
        size_t ne = e;
        while (ne > i && (head[ne - 1] == ' ' || head[ne - 1] == '\t')) ne--;
        size_t n = ne - i;
        int known = (n == 1 || n == 14) ? known_entry(head + i, n) : -1;
        if (known < 0 || !is_length[known]) continue;
        size_t vs = e + 1, ve = vs;
        while (ve < len && head[ve] != '\r' && head[ve] != '\n') ve++;
        while (vs < ve && (head[vs] == ' ' || head[vs] == '\t')) vs++;
        while (ve > vs && (head[ve - 1] == ' ' || head[ve - 1] == '\t')) ve--;
        found = digits_value(head + vs, ve - vs);
        if (found < 0) return PyLong_FromLong(-1);
        count++;
    }
    return PyLong_FromLongLong(count == 1 ? found : -1);
}

static PyObject *rport_spliced(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "rport_spliced(data: bytes, port: int)");
        return NULL;
    }
    long port = PyLong_AsLong(args[1]);
    if (port == -1 && PyErr_Occurred()) return NULL;
    if (port < 0 || port > 65535) Py_RETURN_NONE;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    size_t n = (size_t)PyBytes_GET_SIZE(args[0]);
    if (n >= 4 && lower(d[0]) == 's' && lower(d[1]) == 'i' && lower(d[2]) == 'p' && d[3] == '/') Py_RETURN_NONE;
    const unsigned char *p = memchr(d, '\n', n);
    if (p == NULL) Py_RETURN_NONE;
    size_t lf = (size_t)(p - d);
    if (lf < 2 || d[lf - 1] != '\r' || n - lf < 7 || memcmp(d + lf + 1, "Via: ", 5) != 0) Py_RETURN_NONE;
    size_t vs = lf + 6;                                /* the Via value */
    p = memchr(d + vs, '\n', n - vs);                 /* the Via line's end: a bare LF ends it too */
    if (p == NULL) Py_RETURN_NONE;
    size_t end = (size_t)(p - d);
    if (end == vs || d[end - 1] != '\r') Py_RETURN_NONE;
    end--;                                             /* the CR of its CRLF */
    static const char RPORT[] = ";rport";
    size_t rl = sizeof RPORT - 1;
    if (end - vs < rl) Py_RETURN_NONE;
    int rports = 0;
    for (size_t k = vs; k < end; k++) {
        if (d[k] == ',' || d[k] == '\r') Py_RETURN_NONE;
        if (d[k] == ';' && k + rl <= end) {
            size_t m = 1;
            while (m < rl && lower(d[k + m]) == (unsigned char)RPORT[m]) m++;
            if (m == rl) rports++;
        }
    }
    if (rports != 1 || memcmp(d + end - rl, RPORT, rl) != 0) Py_RETURN_NONE;
    char stamp[8];
    int sl = snprintf(stamp, sizeof stamp, "=%ld", port);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + (size_t)sl));
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, d, end);
    memcpy(o + end, stamp, (size_t)sl);
    memcpy(o + end + sl, d + end, n - end);
    return out;
}

static PyObject *render(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyUnicode_CheckExact(args[0]) || !PyList_CheckExact(args[1]) || !PyBytes_CheckExact(args[2]))
        Py_RETURN_NONE;
    PyObject *start = args[0], *fields = args[1], *body = args[2];
    if (!PyUnicode_IS_ASCII(start)) Py_RETURN_NONE;
    Py_ssize_t nf = PyList_GET_SIZE(fields), blen = PyBytes_GET_SIZE(body);
    size_t total = (size_t)PyUnicode_GET_LENGTH(start) + 2;
    int lengths = 0;
    for (Py_ssize_t k = 0; k < nf; k++) {
        PyObject *f = PyList_GET_ITEM(fields, k);
        if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 2) Py_RETURN_NONE;
        PyObject *n = PyTuple_GET_ITEM(f, 0), *v = PyTuple_GET_ITEM(f, 1);
        if (!PyUnicode_CheckExact(n) || !PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(n) || !PyUnicode_IS_ASCII(v))
            Py_RETURN_NONE;
        Py_ssize_t nl = PyUnicode_GET_LENGTH(n);
        if (nl == 14 && memcmp(PyUnicode_1BYTE_DATA(n), "Content-Length", 14) == 0) {
            /* the one Content-Length must already say the body's length (else Python fixes it) */
            char want[24];
            int wl = snprintf(want, sizeof want, "%zd", blen);
            if (++lengths > 1 || PyUnicode_GET_LENGTH(v) != wl || memcmp(PyUnicode_1BYTE_DATA(v), want, (size_t)wl) != 0)
                Py_RETURN_NONE;
        }
        total += (size_t)nl + 2 + (size_t)PyUnicode_GET_LENGTH(v) + 2;
    }
    char tail[48];
    int tl = lengths ? snprintf(tail, sizeof tail, "\r\n") : snprintf(tail, sizeof tail, "Content-Length: %zd\r\n\r\n", blen);
    total += (size_t)tl + (size_t)blen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    Py_ssize_t sl = PyUnicode_GET_LENGTH(start);
    memcpy(o, PyUnicode_1BYTE_DATA(start), (size_t)sl); o += sl;
    *o++ = '\r'; *o++ = '\n';
    for (Py_ssize_t k = 0; k < nf; k++) {
        PyObject *f = PyList_GET_ITEM(fields, k);
        PyObject *n = PyTuple_GET_ITEM(f, 0), *v = PyTuple_GET_ITEM(f, 1);
        Py_ssize_t nl = PyUnicode_GET_LENGTH(n), vl = PyUnicode_GET_LENGTH(v);
        memcpy(o, PyUnicode_1BYTE_DATA(n), (size_t)nl); o += nl;
        *o++ = ':'; *o++ = ' ';
        memcpy(o, PyUnicode_1BYTE_DATA(v), (size_t)vl); o += vl;
        *o++ = '\r'; *o++ = '\n';
    }
    memcpy(o, tail, (size_t)tl); o += tl;
    memcpy(o, PyBytes_AS_STRING(body), (size_t)blen);
    return out;
}

static PyObject *known_names(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *names = PyDict_New();
    if (names == NULL) return NULL;
    for (int k = 0; k < N_KNOWN; k++) {
        PyObject *low = PyUnicode_FromString(KNOWN[k][0]);
        if (low == NULL || PyDict_SetItem(names, low, known_canonical[k]) < 0) {
            Py_XDECREF(low);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(low);
    }
    return names;
}

/* --- Via and name-addr: the plain forms (message._parse_via, uri._parse_name_addr are the reference) ------ */

/* character classes of RFC 3261 section 25.1 as uri.py's expressions spell them (no "%" escapes here: an
 * escaped URI goes to Python) */
static unsigned char via_value_char[256];  /* Via gen-value: token / host ":" "[" "]" (message._VIA_PLAIN_RE) */
static unsigned char host_char[256];       /* a host name: alphanum _ . - (uri._HOSTNAME_RE) */
static unsigned char user_char[256];       /* uri._USER_RE: unreserved & = + $ , ; ? / # */
static unsigned char pchar[256];           /* uri._PCHAR_RE: unreserved [ ] / : & + $ */

static void init_value_chars(void) {
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        int unreserved = alnum || (c != 0 && strchr("-_.!~*'()", c) != NULL);
        via_value_char[c] = token_char[c] || c == ':' || c == '[' || c == ']';
        host_char[c] = alnum || c == '_' || c == '.' || c == '-';
        user_char[c] = unreserved || (c != 0 && strchr("&=+$,;?/#", c) != NULL);
        pchar[c] = unreserved || (c != 0 && strchr("[]/:&+$", c) != NULL);
    }
}

static int is_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* the str of s[a..b) */
static PyObject *piece(PyObject *s, Py_ssize_t a, Py_ssize_t b) { return PyUnicode_Substring(s, a, b); }

/* ``;name[=value]`` ... from d[i] to d[n]: names of token characters, values of the given class (both
 * non-empty), nothing else (no whitespace, no quotes), into dict ``params`` (NULL: the form only checked);
 * 0 if the text is not that form, -1 on a Python error. *count is the number of parameters read (a repeated
 * name counts twice). */
static int plain_params(PyObject *s, const unsigned char *d, Py_ssize_t i, Py_ssize_t n,
                        const unsigned char *name_class, const unsigned char *value_class,
                        PyObject *params, Py_ssize_t *count) {
    *count = 0;
    while (i < n) {
        if (d[i] != ';') return 0;
        Py_ssize_t a = ++i;
        while (i < n && name_class[d[i]]) i++;
        if (i == a) return 0;
        if (params == NULL) {                 /* the form checked only: no pieces made */
            if (i < n && d[i] == '=') {
                Py_ssize_t b = ++i;
                while (i < n && value_class[d[i]]) i++;
                if (i == b) return 0;
            }
            (*count)++;
            continue;
        }
        PyObject *name = piece(s, a, i);
        if (name == NULL) return -1;
        PyObject *value = Py_None;
        Py_INCREF(value);
        if (i < n && d[i] == '=') {
            Py_ssize_t b = ++i;
            while (i < n && value_class[d[i]]) i++;
            Py_DECREF(value);
            value = i > b ? piece(s, b, i) : NULL;
            if (value == NULL) {
                Py_DECREF(name);
                return PyErr_Occurred() ? -1 : 0;
            }
        }
        int rc = PyDict_SetItem(params, name, value);
        Py_DECREF(name);
        Py_DECREF(value);
        if (rc < 0) return -1;
        (*count)++;
    }
    return 1;
}

/* 1-5 digits at d[i..j) as a port 0-65535 into *port; 0 if not */
static int plain_port(const unsigned char *d, Py_ssize_t i, Py_ssize_t j, long *port) {
    if (j <= i || j - i > 5) return 0;
    long v = 0;
    for (Py_ssize_t k = i; k < j; k++) {
        if (d[k] < '0' || d[k] > '9') return 0;
        v = v * 10 + (d[k] - '0');
    }
    if (v > 65535) return 0;
    *port = v;
    return 1;
}

/* The plain form of a Via (see via below) checked: 1 if ``text`` is that form (its pieces' ends in *at: transport
 * end, host start, host end, params start; the port in *port, -1 if none; whether str(via) gives the text back
 * as far as the port tells, in *canonical), else 0. No Python object is made. */
static int via_form(PyObject *text, Py_ssize_t *at, long *port, int *canonical) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text)) return 0;
    const unsigned char *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 8;
    if (n < 10 || memcmp(d, "SIP/2.0/", 8) != 0) return 0;
    while (i < n && token_char[d[i]]) i++;
    at[0] = i;
    if (at[0] == 8 || i >= n || d[i] != ' ') return 0;
    at[1] = ++i;
    while (i < n && host_char[d[i]]) i++;
    at[2] = i;
    if (at[2] == at[1]) return 0;
    *port = -1;
    *canonical = 1;
    if (i < n && d[i] == ':') {
        Py_ssize_t p = ++i;
        while (i < n && d[i] >= '0' && d[i] <= '9') i++;
        if (!plain_port(d, p, i, port)) return 0;          /* 6 digits, over 65535: Python says */
        if (d[p] == '0' && i - p > 1) *canonical = 0;       /* str(via) drops the leading zeros */
    }
    at[3] = i;
    Py_ssize_t count;
    return plain_params(text, d, i, n, token_char, via_value_char, NULL, &count);
}

/* via(text: str) -> (transport, host, port or None, params dict, canonical) or None
 *   The form every sender writes, ``SIP/2.0/TLS host[:port][;name[=value]]...`` (no whitespace, no quoted
 *   value, a host name or IPv4 address): the pieces message._parse_via builds its Via from, and whether
 *   str(via) is the text itself (the port in plain digits, no parameter twice). None for everything else. */
static PyObject *via(PyObject *module, PyObject *text) {
    (void)module;
    Py_ssize_t at[4];
    long port;
    int canonical;
    if (!via_form(text, at, &port, &canonical)) Py_RETURN_NONE;
    const unsigned char *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    PyObject *params = PyDict_New();
    if (params == NULL) return NULL;
    Py_ssize_t count;
    int rc = plain_params(text, d, at[3], n, token_char, via_value_char, params, &count);
    if (rc <= 0) {
        Py_DECREF(params);
        if (rc < 0) return NULL;
        Py_RETURN_NONE;
    }
    if (PyDict_GET_SIZE(params) != count) canonical = 0;         /* a repeated name renders once */
    PyObject *port_obj = port < 0 ? (Py_INCREF(Py_None), Py_None) : PyLong_FromLong(port);
    PyObject *transport = piece(text, 8, at[0]), *host = piece(text, at[1], at[2]);
    PyObject *out = NULL;
    if (port_obj != NULL && transport != NULL && host != NULL)
        out = PyTuple_Pack(5, transport, host, port_obj, params, canonical ? Py_True : Py_False);
    Py_XDECREF(port_obj);
    Py_XDECREF(transport);
    Py_XDECREF(host);
    Py_DECREF(params);
    return out;
}

/* via_facts(text: str) -> (host, port or None, branch or None, canonical) or None
 *   What the transaction layer's key (RFC 3261 section 17.2.3) and the transport's rport splice read of a Via of
 *   the plain form via() reads, without the Via made: its host and port as via() gives them, the value of its
 *   one parameter named "branch" (None: a valueless one, or none), and whether str(via) is the text (as via()
 *   says). None for everything else, and for a "branch" in another case or twice (Python's Via answers those). */
static PyObject *via_facts(PyObject *module, PyObject *text) {
    (void)module;
    Py_ssize_t at[4];
    long port;
    int canonical;
    if (!via_form(text, at, &port, &canonical)) Py_RETURN_NONE;
    const unsigned char *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = at[3];
    Py_ssize_t names[16][2], branch[2] = {-1, -1};
    int k = 0, branches = 0;
    while (i < n) {                                   /* ";name[=value]" each (via_form checked the form) */
        Py_ssize_t a = ++i;
        while (i < n && token_char[d[i]]) i++;
        Py_ssize_t b = i, va = -1, vb = -1;
        if (i < n && d[i] == '=') {
            va = ++i;
            while (i < n && via_value_char[d[i]]) i++;
            vb = i;
        }
        if (k == 16) Py_RETURN_NONE;                  /* (16 parameters: more are Python's) */
        for (int j = 0; j < k; j++)
            if (names[j][1] - names[j][0] == b - a && memcmp(d + names[j][0], d + a, (size_t)(b - a)) == 0)
                canonical = 0;                        /* a repeated name renders once */
        names[k][0] = a;
        names[k][1] = b;
        k++;
        if (b - a == 6) {
            int same = 1, exact = 1;
            for (int c = 0; c < 6; c++) {
                if (lower(d[a + c]) != (unsigned char)"branch"[c]) same = 0;
                if (d[a + c] != (unsigned char)"branch"[c]) exact = 0;
            }
            if (same) {
                if (!exact || branches++) Py_RETURN_NONE;
                branch[0] = va;
                branch[1] = vb;
            }
        }
    }
    PyObject *host = piece(text, at[1], at[2]);
    PyObject *port_obj = port < 0 ? (Py_INCREF(Py_None), Py_None) : PyLong_FromLong(port);
    PyObject *branch_obj = branch[0] < 0 ? (Py_INCREF(Py_None), Py_None) : piece(text, branch[0], branch[1]);
    PyObject *out = NULL;
    if (host != NULL && port_obj != NULL && branch_obj != NULL)
        out = PyTuple_Pack(4, host, port_obj, branch_obj, canonical ? Py_True : Py_False);
    Py_XDECREF(host);
    Py_XDECREF(port_obj);
    Py_XDECREF(branch_obj);
    return out;
}

/* name_addr(text: str) -> (display or None, uri text, scheme, user or None, host, port or None, uri params,
 *                          params) or None
 *   The usual From/To/Contact: ``["display"] <sip:user@host[:port];uri-params>;params`` (a quoted display
 *   name without quoted-pairs, optional; a sip/sips URI in lower case with a user part and a host name or
 *   IPv4 address, no password, escapes or headers; header parameters ``;name[=value]`` of tokens and hosts,
 *   no whitespace or quotes): the pieces uri._parse_name_addr builds its NameAddr and SipUri from. None for
 *   everything else (token display names, addr-specs, other schemes, IPv6, ...): Python parses. */
/* The usual name-addr (see name_addr below) checked: 1 if ``text`` is that form (its pieces' offsets in *at:
 * display start (-1: none), display end, uri start, scheme end, user start, user end, host start, host end,
 * uri params start, uri end; the port in *port, -1 if none), else 0 (-1 never: no Python object is made). */
static int name_addr_form(PyObject *text, Py_ssize_t *at, long *port) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text)) return 0;
    const unsigned char *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0;
    at[0] = at[1] = -1;
    if (n > 0 && d[0] == '"') {
        i = 1;
        while (i < n && d[i] >= 0x20 && d[i] < 0x7f && d[i] != '"' && d[i] != '\\') i++;
        if (i >= n || d[i] != '"') return 0;
        at[0] = 1;
        at[1] = i++;
        while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
    }
    if (i >= n || d[i] != '<') return 0;
    at[2] = ++i;
    if (n - i > 5 && memcmp(d + i, "sips:", 5) == 0) at[3] = i + 4;
    else if (n - i > 4 && memcmp(d + i, "sip:", 4) == 0) at[3] = i + 3;
    else return 0;
    at[4] = i = at[3] + 1;
    while (i < n && user_char[d[i]]) i++;
    if (i >= n || d[i] != '@' || i == at[4]) return 0;     /* no user part, a password, escapes */
    at[5] = i;
    at[6] = ++i;
    while (i < n && host_char[d[i]]) i++;
    at[7] = i;
    /* uri._HOSTNAME_RE: begins with alphanum, ends with alphanum or "." */
    if (at[7] == at[6] || !is_alnum(d[at[6]]) || !(is_alnum(d[at[7] - 1]) || d[at[7] - 1] == '.')) return 0;
    *port = -1;
    if (i < n && d[i] == ':') {
        Py_ssize_t p = ++i;
        while (i < n && d[i] >= '0' && d[i] <= '9') i++;
        if (!plain_port(d, p, i, port)) return 0;
    }
    at[8] = i;
    while (i < n && d[i] != '>') i++;
    if (i >= n) return 0;
    at[9] = i;
    Py_ssize_t count;
    return plain_params(text, d, at[8], at[9], pchar, pchar, NULL, &count) > 0
           && plain_params(text, d, at[9] + 1, n, token_char, via_value_char, NULL, &count) > 0;
}

static PyObject *name_addr(PyObject *module, PyObject *text) {
    (void)module;
    Py_ssize_t at[10];
    long port;
    if (!name_addr_form(text, at, &port)) Py_RETURN_NONE;
    const unsigned char *d = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    PyObject *uri_params = PyDict_New(), *params = PyDict_New();
    PyObject *out = NULL, *display = NULL, *uri_text = NULL, *scheme = NULL, *user = NULL, *host = NULL,
             *port_obj = NULL;
    Py_ssize_t count;
    int rc;
    if (uri_params == NULL || params == NULL) goto done;
    rc = plain_params(text, d, at[8], at[9], pchar, pchar, uri_params, &count);
    if (rc > 0) rc = plain_params(text, d, at[9] + 1, n, token_char, via_value_char, params, &count);
    if (rc <= 0) {
        if (rc == 0) {
            out = Py_None;
            Py_INCREF(out);
        }
        goto done;
    }
    display = at[0] < 0 ? (Py_INCREF(Py_None), Py_None) : piece(text, at[0], at[1]);
    uri_text = piece(text, at[2], at[9]);
    scheme = piece(text, at[2], at[3]);
    user = piece(text, at[4], at[5]);
    host = piece(text, at[6], at[7]);
    port_obj = port < 0 ? (Py_INCREF(Py_None), Py_None) : PyLong_FromLong(port);
    if (display && uri_text && scheme && user && host && port_obj)
        out = PyTuple_Pack(8, display, uri_text, scheme, user, host, port_obj, uri_params, params);
done:
    Py_XDECREF(uri_params);
    Py_XDECREF(params);
    Py_XDECREF(display);
    Py_XDECREF(uri_text);
    Py_XDECREF(scheme);
    Py_XDECREF(user);
    Py_XDECREF(host);
    Py_XDECREF(port_obj);
    return out;
}

/* --- the mandatory fields' checks (message._check_fields is the reference) ------------------------------------ */

/* the index keys the checks read (interned, as the scanner's keys are) */
static PyObject *KEY_TO, *KEY_FROM, *KEY_CALL_ID, *KEY_CSEQ, *KEY_VIA, *KEY_MAX_FORWARDS, *KEY_CONTACT;

/* the one value of index[key] (a tuple of one str), or NULL when the key has none or several (set *absent when none) */
static PyObject *single(PyObject *index, PyObject *key, int *absent) {
    PyObject *values = PyDict_GetItemWithError(index, key);       /* borrowed (an error: taken as absent) */
    PyErr_Clear();
    *absent = values == NULL;
    if (values == NULL || !PyTuple_CheckExact(values) || PyTuple_GET_SIZE(values) != 1) return NULL;
    PyObject *v = PyTuple_GET_ITEM(values, 0);
    return PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v) ? v : NULL;
}

/* an ASCII str without SP/HTAB at either end, not empty, without "," (one list element as split_shared leaves it) */
static int one_element(PyObject *v) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    const unsigned char *d = PyUnicode_1BYTE_DATA(v);
    if (n == 0 || d[0] == ' ' || d[0] == '\t' || d[n - 1] == ' ' || d[n - 1] == '\t') return 0;
    return memchr(d, ',', (size_t)n) == NULL;
}

/* fields_checked(index, method or None, addresses, vias) -> int or None
 *   message._check_fields on the usual message: To, From, Call-ID and CSeq once each, one Via field of one
 *   element, a Call-ID without SP/HTAB, "CSeq: <digits up to 2**31-1> <method>" with the request's method
 *   (method None: a response), Max-Forwards absent or 0-255 as senders write it, Contact absent or one field of
 *   one element. Then the values whose syntax only a parse tells: a bit for each not already in its memo
 *   (``addresses``: uri._addr_memo, ``vias``: message._via_memo, which keep successes only) and not of the plain
 *   form via() / name_addr() read (a value of that form parses: it is checked here, and its object is made when
 *   a layer above first reads it; the ACK's To, with the tag of the 407, never is): 1 From, 2 To, 4 Via,
 *   8 Contact ("*" needs none), for Python to parse in that order. None for anything else: Python checks it all. */
static PyObject *fields_checked(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[2]) || !PyDict_CheckExact(args[3]))
        Py_RETURN_NONE;
    PyObject *index = args[0], *method = args[1];
    int absent;
    PyObject *to = single(index, KEY_TO, &absent), *from = single(index, KEY_FROM, &absent);
    PyObject *call_id = single(index, KEY_CALL_ID, &absent), *cseq = single(index, KEY_CSEQ, &absent);
    PyObject *via = single(index, KEY_VIA, &absent);
    if (!to || !from || !call_id || !cseq || !via || !one_element(via)) Py_RETURN_NONE;
    Py_ssize_t n = PyUnicode_GET_LENGTH(call_id);
    const unsigned char *d = PyUnicode_1BYTE_DATA(call_id);
    if (n == 0 || memchr(d, ' ', (size_t)n) || memchr(d, '\t', (size_t)n)) Py_RETURN_NONE;
    /* CSeq: message._CSEQ_RE on the value, the number at most 2**31 - 1 */
    n = PyUnicode_GET_LENGTH(cseq);
    d = PyUnicode_1BYTE_DATA(cseq);
    Py_ssize_t i = 0;
    long long number = 0;
    while (i < n && d[i] >= '0' && d[i] <= '9') {
        number = number * 10 + (d[i] - '0');
        if (number > 2147483647LL) Py_RETURN_NONE;
        i++;
    }
    Py_ssize_t digits_end = i;
    while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
    if (digits_end == 0 || i == digits_end || i == n) Py_RETURN_NONE;
    for (Py_ssize_t k = i; k < n; k++)
        if (!token_char[d[k]]) Py_RETURN_NONE;
    if (method != Py_None) {
        if (!PyUnicode_CheckExact(method) || !PyUnicode_IS_ASCII(method) || PyUnicode_GET_LENGTH(method) != n - i
            || memcmp(PyUnicode_1BYTE_DATA(method), d + i, (size_t)(n - i)) != 0)
            Py_RETURN_NONE;
    }
    PyObject *max_forwards = single(index, KEY_MAX_FORWARDS, &absent);
    if (!absent) {
        if (max_forwards == NULL) Py_RETURN_NONE;
        n = PyUnicode_GET_LENGTH(max_forwards);
        d = PyUnicode_1BYTE_DATA(max_forwards);
        if (n == 0 || n > 3) Py_RETURN_NONE;          /* (before summing: a long digit string would overflow) */
        long v = 0;
        for (i = 0; i < n; i++) {
            if (d[i] < '0' || d[i] > '9') Py_RETURN_NONE;
            v = v * 10 + (d[i] - '0');
        }
        if ((d[0] == '0' && n > 1) || v > 255) Py_RETURN_NONE;   /* message._PLAIN_MAX_FORWARDS */
    }
    PyObject *contact = single(index, KEY_CONTACT, &absent);
    if (!absent && (contact == NULL || !one_element(contact))) Py_RETURN_NONE;
    long missing = 0;
    PyObject *addresses = args[2], *vias = args[3];
    int rc;
    Py_ssize_t at[10];
    long port;
    int canonical;
    if ((rc = PyDict_Contains(addresses, from)) < 0) return NULL;
    if (!rc && !name_addr_form(from, at, &port)) missing |= 1;
    if ((rc = PyDict_Contains(addresses, to)) < 0) return NULL;
    if (!rc && !name_addr_form(to, at, &port)) missing |= 2;
    if ((rc = PyDict_Contains(vias, via)) < 0) return NULL;
    if (!rc && !via_form(via, at, &port, &canonical)) missing |= 4;
    if (contact != NULL && !(PyUnicode_GET_LENGTH(contact) == 1 && PyUnicode_1BYTE_DATA(contact)[0] == '*')) {
        if ((rc = PyDict_Contains(addresses, contact)) < 0) return NULL;
        if (!rc && !name_addr_form(contact, at, &port)) missing |= 8;
    }
    return PyLong_FromLong(missing);
}

/* --- a response's fields (message._response_fields_in_python is the reference) ---------------------------- */

static PyObject *NAME_VIA, *NAME_FROM, *NAME_TO, *NAME_CALL_ID, *NAME_CSEQ, *NAME_TIMESTAMP, *NAME_CONTENT_TYPE;
static PyObject *KEY_TIMESTAMP;

/* an ASCII str holding no CR or LF (what message._checked lets into a field's value) */
static int plain_value(PyObject *v) {
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    const char *d = (const char *)PyUnicode_1BYTE_DATA(v);
    return memchr(d, '\r', (size_t)n) == NULL && memchr(d, '\n', (size_t)n) == NULL;
}

/* fields.append((name, value)) with a new tuple of two strs (untracked: never part of a cycle) */
static int append_field(PyObject *fields, PyObject *name, PyObject *value) {
    PyObject *f = PyTuple_Pack(2, name, value);
    if (f == NULL) return -1;
    PyObject_GC_UnTrack(f);
    int rc = PyList_Append(fields, f);
    Py_DECREF(f);
    return rc;
}

/* *value = the first value of index[key] (borrowed): 1; 0 when the key has no value; -1 when its entry is not a
 * tuple of strs (not what a Headers index holds: Python decides); -2 on a Python error */
static int first_value(PyObject *index, PyObject *key, PyObject **value) {
    *value = NULL;
    PyObject *values = PyDict_GetItemWithError(index, key);
    if (values == NULL) return PyErr_Occurred() ? -2 : 0;
    if (!PyTuple_CheckExact(values)) return -1;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(values); k++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(values, k))) return -1;
    if (PyTuple_GET_SIZE(values) == 0) return 0;
    *value = PyTuple_GET_ITEM(values, 0);
    return 1;
}

/* response_fields(index, to_tag or None, headers, content_type or None, timestamp: bool, known: dict)
 *     -> list or None
 *   message._response_fields_in_python: the fields of a response to the request whose header index is ``index``
 *   (every Via, From, To with ";tag=<to_tag>" added, Call-ID, CSeq, Timestamp if ``timestamp``; then the extra
 *   ``headers`` with their canonical names from ``known`` (message._CANONICAL_OF), then Content-Type). None
 *   (Python builds them, the reference) for anything else: a To that may hold a tag already (its text says "tag"
 *   in any case: only a parse tells), an extra field whose name ``known`` lacks, a value or to_tag not ASCII or
 *   with CR/LF, an extra Content-Type with ``content_type`` given, headers not a list or tuple of 2-tuples. */
static PyObject *response_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6 || !PyDict_CheckExact(args[0]) || !PyDict_Check(args[5])) Py_RETURN_NONE;
    PyObject *index = args[0], *to_tag = args[1], *extra = args[2], *content_type = args[3], *known = args[5];
    int timestamp = PyObject_IsTrue(args[4]);
    if (timestamp < 0) return NULL;
    if (!PyList_CheckExact(extra) && !PyTuple_CheckExact(extra)) Py_RETURN_NONE;
    if (to_tag != Py_None && !plain_value(to_tag)) Py_RETURN_NONE;
    if (content_type != Py_None && !plain_value(content_type)) Py_RETURN_NONE;
    /* the request's fields copied: every Via, then the first From, To, Call-ID, CSeq (and Timestamp) */
    PyObject *keys[6] = {KEY_VIA, KEY_FROM, KEY_TO, KEY_CALL_ID, KEY_CSEQ, KEY_TIMESTAMP};
    PyObject *names[6] = {NAME_VIA, NAME_FROM, NAME_TO, NAME_CALL_ID, NAME_CSEQ, NAME_TIMESTAMP};
    PyObject *found[6];
    for (int k = 0; k < 6; k++) {
        int rc = k == 5 && !timestamp ? 0 : first_value(index, keys[k], &found[k]);
        if (rc == -2) return NULL;
        if (rc == -1) Py_RETURN_NONE;
        if (rc == 0) found[k] = NULL;
    }
    PyObject *to = found[2];
    if (to != NULL && to_tag != Py_None) {
        if (!PyUnicode_IS_ASCII(to)) Py_RETURN_NONE;
        const unsigned char *d = PyUnicode_1BYTE_DATA(to);
        Py_ssize_t n = PyUnicode_GET_LENGTH(to);
        for (Py_ssize_t k = 0; k + 3 <= n; k++)           /* "tag" anywhere in any case: a parse decides */
            if (lower(d[k]) == 't' && lower(d[k + 1]) == 'a' && lower(d[k + 2]) == 'g') Py_RETURN_NONE;
    }
    Py_ssize_t n_extra = PySequence_Fast_GET_SIZE(extra);
    PyObject **extra_items = PySequence_Fast_ITEMS(extra);
    PyObject *fields = PyList_New(0), *tagged = NULL;
    if (fields == NULL) return NULL;
    PyObject *vias = PyDict_GetItem(index, KEY_VIA);     /* borrowed; a tuple of strs (first_value checked) */
    if (vias != NULL) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(vias); k++)
            if (append_field(fields, NAME_VIA, PyTuple_GET_ITEM(vias, k)) < 0) goto failed;
    }
    for (int k = 1; k < 6; k++) {
        PyObject *v = found[k];
        if (v == NULL) continue;
        if (k == 2 && to_tag != Py_None) {
            Py_ssize_t tl = PyUnicode_GET_LENGTH(v), gl = PyUnicode_GET_LENGTH(to_tag);
            tagged = PyUnicode_New(tl + 5 + gl, 127);
            if (tagged == NULL) goto failed;
            unsigned char *o = PyUnicode_1BYTE_DATA(tagged);
            memcpy(o, PyUnicode_1BYTE_DATA(v), (size_t)tl);
            memcpy(o + tl, ";tag=", 5);
            memcpy(o + tl + 5, PyUnicode_1BYTE_DATA(to_tag), (size_t)gl);
            v = tagged;
        }
        if (append_field(fields, names[k], v) < 0) goto failed;
        Py_CLEAR(tagged);
    }
    for (Py_ssize_t k = 0; k < n_extra; k++) {
        PyObject *f = extra_items[k];
        if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 2) goto declined;
        PyObject *name = PyTuple_GET_ITEM(f, 0), *value = PyTuple_GET_ITEM(f, 1);
        if (!PyUnicode_CheckExact(name) || !plain_value(value)) goto declined;
        PyObject *canonical = PyDict_GetItemWithError(known, name);      /* borrowed; no __missing__ */
        if (canonical == NULL) {
            if (PyErr_Occurred()) goto failed;
            goto declined;                                                /* a name not seen yet: Python checks it */
        }
        if (!PyUnicode_CheckExact(canonical)) goto declined;
        if (content_type != Py_None && PyUnicode_Compare(canonical, NAME_CONTENT_TYPE) == 0) goto declined;
        if (append_field(fields, canonical, value) < 0) goto failed;
    }
    if (content_type != Py_None && append_field(fields, NAME_CONTENT_TYPE, content_type) < 0) goto failed;
    return fields;
declined:
    Py_DECREF(fields);
    Py_RETURN_NONE;
failed:
    Py_XDECREF(tagged);
    Py_DECREF(fields);
    return NULL;
}

static PyObject *auth_params(PyObject *module, PyObject *value);     /* digest credentials: at the end */

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, "The common case of a SIP message's header block (see sipscan.c), or None."},
    {"frame_length", (PyCFunction)(void (*)(void))frame_length, METH_FASTCALL,
     "The one plain Content-Length of head[:end], or -1."},
    {"via", via, METH_O, "The plain form of a Via's pieces (see sipscan.c), or None."},
    {"name_addr", name_addr, METH_O, "The usual form of a name-addr's pieces (see sipscan.c), or None."},
    {"via_facts", via_facts, METH_O, "A plain Via's host, port, branch and canonical flag (see sipscan.c), or None."},
    {"rport_spliced", (PyCFunction)(void (*)(void))rport_spliced, METH_FASTCALL,
     "The usual request with =<port> after its first Via's ;rport (see sipscan.c), or None."},
    {"render", (PyCFunction)(void (*)(void))render, METH_FASTCALL,
     "A message's wire form from its start line, fields and body (see sipscan.c), or None."},
    {"fields_checked", (PyCFunction)(void (*)(void))fields_checked, METH_FASTCALL,
     "The usual message's mandatory fields checked (see sipscan.c): bits of the values left to parse, or None."},
    {"response_fields", (PyCFunction)(void (*)(void))response_fields, METH_FASTCALL,
     "The fields of a response to a request with this header index (see sipscan.c), or None."},
    {"auth_params", auth_params, METH_O, "The usual digest credentials' parameters (see sipscan.c), or None."},
    {"known_names", known_names, METH_NOARGS, "The scanner's name table: lower-case spelling -> canonical name."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_sipscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sipscan(void) {
    init_token_chars();
    init_value_chars();
    int filled[MAX_KNOWN_LEN + 1] = {0};
    for (int k = 0; k < N_KNOWN; k++) {
        size_t n = strlen(KNOWN[k][0]);
        known_len[k] = (Py_ssize_t)strlen(KNOWN[k][1]);
        if (n > MAX_KNOWN_LEN) return PyErr_Format(PyExc_SystemError, "name %s too long", KNOWN[k][0]);
        by_length[n][filled[n]++] = (signed char)k;
        is_length[k] = strcmp(KNOWN[k][1], "Content-Length") == 0;
        if (known_canonical[k] == NULL) {
            known_canonical[k] = PyUnicode_InternFromString(KNOWN[k][1]);
            if (known_canonical[k] == NULL) return NULL;
            known_key[k] = PyUnicode_InternFromString(KNOWN[k][0]);
            if (known_key[k] == NULL) return NULL;
        }
    }
    for (int n = 0; n <= MAX_KNOWN_LEN; n++) by_length[n][filled[n]] = -1;
    if (KEY_TO == NULL) {
        KEY_TO = PyUnicode_InternFromString("to");
        KEY_FROM = PyUnicode_InternFromString("from");
        KEY_CALL_ID = PyUnicode_InternFromString("call-id");
        KEY_CSEQ = PyUnicode_InternFromString("cseq");
        KEY_VIA = PyUnicode_InternFromString("via");
        KEY_MAX_FORWARDS = PyUnicode_InternFromString("max-forwards");
        KEY_CONTACT = PyUnicode_InternFromString("contact");
        KEY_TIMESTAMP = PyUnicode_InternFromString("timestamp");
        NAME_VIA = PyUnicode_InternFromString("Via");
        NAME_FROM = PyUnicode_InternFromString("From");
        NAME_TO = PyUnicode_InternFromString("To");
        NAME_CALL_ID = PyUnicode_InternFromString("Call-ID");
        NAME_CSEQ = PyUnicode_InternFromString("CSeq");
        NAME_TIMESTAMP = PyUnicode_InternFromString("Timestamp");
        NAME_CONTENT_TYPE = PyUnicode_InternFromString("Content-Type");
        if (!KEY_TO || !KEY_FROM || !KEY_CALL_ID || !KEY_CSEQ || !KEY_VIA || !KEY_MAX_FORWARDS || !KEY_CONTACT
            || !KEY_TIMESTAMP || !NAME_VIA || !NAME_FROM || !NAME_TO || !NAME_CALL_ID || !NAME_CSEQ || !NAME_TIMESTAMP
            || !NAME_CONTENT_TYPE)
            return NULL;
    }
    /* a compact name's key is its full name's ("v" -> "via") */
    for (int k = 0; k < N_KNOWN; k++) {
        if (strlen(KNOWN[k][0]) != 1) continue;
        for (int j = 0; j < N_KNOWN; j++) {
            if (strlen(KNOWN[j][0]) > 1 && strcmp(KNOWN[j][1], KNOWN[k][1]) == 0) {
                Py_INCREF(known_key[j]);
                Py_SETREF(known_key[k], known_key[j]);
                break;
            }
        }
    }
    return PyModule_Create(&module_def);
}

/* --- digest credentials ---------------------------------------------------------------------------------------
 * auth_params(value: str) -> dict or None
 *   What digest._parse_auth_params gives for the usual Authorization/Proxy-Authorization (or challenge) value:
 *   {lower-case name: value} of ``Digest name=value, name="value", ...``. Taken only when the value is ASCII
 *   without control characters (HTAB aside), starts with "Digest" in any case followed by one SP, does not
 *   end in SP/HTAB, and every parameter is ``[SP/HTAB/,]* token [SP/HTAB]* = [SP/HTAB]* (quoted | bare)
 *   [SP/HTAB]*`` followed by "," or the end (a quoted value without backslash, a bare value without SP, HTAB,
 *   "," or DQUOTE); a later parameter of the same name wins, like the dict Python fills. None for anything
 *   else (another scheme, quoted-pairs, stray characters, errors): Python's character loop, the reference,
 *   reads those and raises the errors (tests/test_sip_digest.py compares the two). */

static const char *AUTH_NAME_TEXT[] = {"username", "realm", "nonce", "uri", "response", "algorithm", "cnonce",
                                       "opaque", "qop", "nc"};
#define N_AUTH_NAMES (sizeof(AUTH_NAME_TEXT) / sizeof(AUTH_NAME_TEXT[0]))
static PyObject *auth_name[N_AUTH_NAMES];     /* the usual names, interned once: no new key string per call */
static Py_ssize_t auth_name_len[N_AUTH_NAMES];

/* the character classes of a parameter, one table look-up per character */
enum { AUTH_TOKEN = 1, AUTH_QUOTED = 2, AUTH_BARE = 4 };
static unsigned char auth_class[256];

static int auth_init(void) {
    for (size_t k = 0; k < N_AUTH_NAMES; k++) {
        auth_name_len[k] = (Py_ssize_t)strlen(AUTH_NAME_TEXT[k]);
        auth_name[k] = PyUnicode_InternFromString(AUTH_NAME_TEXT[k]);
        if (auth_name[k] == NULL) {            /* none kept: auth_name[0] NULL, the next call tries again */
            for (size_t j = 0; j < k; j++) Py_CLEAR(auth_name[j]);
            return -1;
        }
    }
    for (int c = 0x20; c < 0x7f; c++) {        /* control characters, DEL and non-ASCII: in no class */
        unsigned char cls = 0;
        if (strchr("-.!%*_+`'~", c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            cls |= AUTH_TOKEN;                 /* digest._NAME_RE */
        if (c != '"' && c != '\\') cls |= AUTH_QUOTED;     /* a quoted value without quoted-pairs */
        if (c != ' ' && c != ',' && c != '"') cls |= AUTH_BARE;  /* digest._BARE_VALUE_RE */
        auth_class[c] = cls;
    }
    return 0;
}

/* the parameter name d[0:n], lower-cased: an interned usual name, or a new string */
static PyObject *auth_key(const unsigned char *d, Py_ssize_t n) {
    if (n <= 9) {                              /* "algorithm", the longest usual name */
        char low[9];
        for (Py_ssize_t k = 0; k < n; k++) low[k] = (char)Py_TOLOWER(d[k]);
        for (size_t k = 0; k < N_AUTH_NAMES; k++) {
            if (auth_name_len[k] == n && memcmp(low, AUTH_NAME_TEXT[k], (size_t)n) == 0) {
                Py_INCREF(auth_name[k]);
                return auth_name[k];
            }
        }
    }
    PyObject *key = PyUnicode_New(n, 127);
    if (key == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(key);
    for (Py_ssize_t k = 0; k < n; k++) out[k] = (Py_UCS1)Py_TOLOWER(d[k]);
    return key;
}

static PyObject *auth_params(PyObject *module, PyObject *value) {
    if (!PyUnicode_Check(value) || !PyUnicode_IS_ASCII(value)) Py_RETURN_NONE;
    if (auth_name[0] == NULL && auth_init() < 0) return NULL;
    const unsigned char *d = PyUnicode_1BYTE_DATA(value);
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    /* "Digest" SP ...: Python strips the value and splits it at its first SP; anything else is Python's */
    if (n < 7 || PyOS_strnicmp((const char *)d, "digest", 6) != 0 || d[6] != ' ' || d[n - 1] == ' '
        || d[n - 1] == '\t')
        Py_RETURN_NONE;
    PyObject *params = PyDict_New();
    if (params == NULL) return NULL;
    Py_ssize_t i = 7;
    for (;;) {
        while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == ',')) i++;
        if (i >= n) return params;
        Py_ssize_t name = i;
        while (i < n && (auth_class[d[i]] & AUTH_TOKEN)) i++;
        Py_ssize_t name_end = i;
        while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
        if (name_end == name || i >= n || d[i] != '=') goto declined;
        i++;
        while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
        Py_ssize_t start, end;
        if (i < n && d[i] == '"') {
            start = ++i;
            while (i < n && (auth_class[d[i]] & AUTH_QUOTED)) i++;
            if (i >= n || d[i] != '"') goto declined;       /* unterminated, a quoted-pair, a control character */
            end = i++;
        } else {
            start = i;
            while (i < n && (auth_class[d[i]] & AUTH_BARE)) i++;
            end = i;
            if (end == start) goto declined;
        }
        while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
        if (i < n && d[i] != ',') goto declined;            /* a DQUOTE or a control character after a bare value */
        PyObject *key = auth_key(d + name, name_end - name);
        if (key == NULL) goto failed;
        PyObject *text = PyUnicode_Substring(value, start, end);
        if (text == NULL || PyDict_SetItem(params, key, text) < 0) {
            Py_DECREF(key);
            Py_XDECREF(text);
            goto failed;
        }
        Py_DECREF(key);
        Py_DECREF(text);
    }
declined:
    Py_DECREF(params);
    Py_RETURN_NONE;
failed:
    Py_DECREF(params);
    return NULL;
}
