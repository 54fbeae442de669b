/* The compiled SDP scanner, ``wacall.domain._sdpscan`` (a CPython extension built by setup.py; see
 * wacall.domain.sdp_syntax): a well-formed RFC 8866 session description read in one pass, straight into the
 * Python objects sdp_syntax.parse_sdp builds (SessionDescription, MediaDescription, Origin, Connection, RtpMap),
 * with the pure-Python parser (sdp_syntax.parse_sdp_in_python) as the reference and the fallback.
 *
 * bind(session, media, origin, connection, rtpmap)
 *   The classes the scanner makes (sdp_syntax calls it once, at import): two dataclasses, whose instances get
 *   their fields in their __init__'s order, and three named tuples.
 * bind_crypto(crypto)
 *   The class crypto() makes (sdp_syntax.CryptoAttribute, a frozen dataclass), bound once it is defined.
 * scan(text: str) -> SessionDescription or None
 *   The description parse_sdp_in_python gives, for an ASCII text it accepts; None for everything else (every
 *   text it refuses, and the non-ASCII ones, and numbers past 10^18 but an origin's): Python parses those, and
 *   raises its errors with their line numbers. The checks below are parse_sdp_in_python's, line for line (the comments name
 *   its pieces); tests/test_sdp.py compares the two on the SDP corpus and thousands of mutated SDPs.
 * crypto(value: str) -> CryptoAttribute or None
 *   An RFC 4568 a=crypto value as sdp_syntax.parse_crypto_in_python reads it, for the usual shape: printable
 *   ASCII, an AES_CM_128 suite, an inline key of 40 base64 characters (30 bytes, no padding); None for everything
 *   else (every error included: Python reads those and says what is wrong). tests/test_sdp.py compares the two.
 *
 * The domain stays I/O-free: this is a parser, nothing more. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef const unsigned char *text_t;

/* RFC 8866 token characters (sdp_syntax._TOKEN_RE): ! # $ % & ' * + - . 0-9 A-Z ^ _ ` a-z { | } ~ */
static unsigned char token_char[256];
/* what the regular expression \s matches in a str, among ASCII characters (str.isspace: 0x1c-0x1f too) */
static unsigned char space_char[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++) {
        token_char[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                        || (c != 0 && strchr("!#$%&'*+-.^_`{|}~", c) != NULL);
        space_char[c] = c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
    }
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* p[0..n) as a number when it is 1 or more ASCII digits (leading zeros as int() reads them) worth at most
 * 10^18: 1 and the value in *out; 0 else (not a number, or a big one: Python reads that) */
static int number(text_t p, Py_ssize_t n, long long *out) {
    if (n <= 0) return 0;
    long long x = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!is_digit(p[k]) || x > 100000000000000000LL) return 0;     /* (x * 10 + 9 then fits: no overflow) */
        x = x * 10 + (p[k] - '0');
        if (x > 1000000000000000000LL) return 0;
    }
    *out = x;
    return 1;
}

/* p[0..n) is 1 or more ASCII digits, of any number (what _number checks where the value is not kept) */
static int digits(text_t p, Py_ssize_t n) {
    if (n <= 0) return 0;
    for (Py_ssize_t k = 0; k < n; k++)
        if (!is_digit(p[k])) return 0;
    return 1;
}

static int tokens(text_t p, Py_ssize_t n) {
    if (n <= 0) return 0;
    for (Py_ssize_t k = 0; k < n; k++)
        if (!token_char[p[k]]) return 0;
    return 1;
}

/* Strings every SDP here carries (attribute names, media types, protocols, address types, ...): one interned str
 * each, handed out again instead of a new str per line (and compared by identity in the rules' lookups). */
static const char *const COMMON[] = {
    "rtpmap", "fmtp", "crypto", "ptime", "maxptime", "sendrecv", "sendonly", "recvonly", "inactive", "rtcp-mux",
    "rtcp-rsize", "rtcp-fb", "rtcp", "mid", "candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite",
    "fingerprint", "setup", "ssrc", "ssrc-group", "msid", "msid-semantic", "group", "extmap", "extmap-allow-mixed",
    "audio", "RTP/SAVP", "RTP/AVP", "RTP/SAVPF", "RTP/AVPF", "UDP/TLS/RTP/SAVPF", "IN", "IP4", "IP6", "-",
    "0.0.0.0", "127.0.0.1", "111", "126", "0", "8", "9", "101", "13", "opus", "telephone-event", "PCMU", "PCMA",
};
#define N_COMMON ((int)(sizeof COMMON / sizeof COMMON[0]))
#define MAX_COMMON_LEN 18
static PyObject *common_str[N_COMMON];
/* the entries of each length, in table order, -1 ended (a text is compared with those of its length only) */
static signed char common_by_length[MAX_COMMON_LEN + 1][N_COMMON + 1];

/* a new str of the ASCII text p[0..n) */
static PyObject *new_str(text_t p, Py_ssize_t n) {
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL) memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    return s;
}

/* a str of the ASCII text p[0..n): the interned one of COMMON if it is one of those (names, kinds, protocols,
 * address types, the usual payload types), else a new one */
static PyObject *str_of(text_t p, Py_ssize_t n) {
    if (n > 0 && n <= MAX_COMMON_LEN) {
        for (const signed char *e = common_by_length[n]; *e >= 0; e++)
            if (COMMON[*e][0] == p[0] && memcmp(COMMON[*e], p, (size_t)n) == 0) {
                Py_INCREF(common_str[*e]);
                return common_str[*e];
            }
    }
    return new_str(p, n);
}

/* the bound classes (bind) and the field names of the two dataclasses, in their __init__'s order */
static PyTypeObject *session_cls, *media_cls, *origin_cls, *connection_cls, *rtpmap_cls;
enum { S_ATTRIBUTES, S_ATTRIBUTE_LINES, S_VERSION, S_ORIGIN, S_SESSION_NAME, S_CONNECTION, S_TIMING, S_MEDIA,
       S_LINES, S_FIELDS };
static const char *const SESSION_FIELDS[S_FIELDS] = {
    "attributes", "attribute_lines", "version", "origin", "session_name", "connection", "timing", "media", "lines"};
enum { M_ATTRIBUTES, M_ATTRIBUTE_LINES, M_KIND, M_PORT, M_PORT_COUNT, M_PROTO, M_FORMATS, M_CONNECTION, M_RTPMAP,
       M_FMTP, M_LINE, M_CHOSEN_CRYPTO, M_PARSED_PAYLOAD_TYPES, M_FIELDS };
static const char *const MEDIA_FIELDS[M_FIELDS] = {
    "attributes", "attribute_lines", "kind", "port", "port_count", "proto", "formats", "connection", "rtpmap",
    "fmtp", "line", "chosen_crypto", "parsed_payload_types"};
static PyObject *session_names[S_FIELDS], *media_names[M_FIELDS];
static PyObject *empty_tuple;

/* an instance of the dataclass cls with values[k] (stolen, every one set) as its field names[k], set in that
 * order: what its __init__ makes. Each field set as __init__ sets it (the generic setattr: into the instance's
 * inline values, CPython 3.11+, which the interpreter's specialised attribute reads expect; a __dict__ filled
 * through vars() is a split dict those reads give up on) */
static PyObject *instance(PyTypeObject *cls, PyObject *const *names, PyObject **values, int n) {
    PyObject *obj = cls->tp_new(cls, empty_tuple, NULL);
    for (int k = 0; k < n; k++) {
        if (obj != NULL && PyObject_GenericSetAttr(obj, names[k], values[k]) < 0) Py_CLEAR(obj);
        Py_CLEAR(values[k]);
    }
    return obj;
}

/* a named tuple of class cls with the n items (stolen), as cls(*items) makes it */
static PyObject *named_tuple(PyTypeObject *cls, PyObject **items, Py_ssize_t n) {
    PyObject *t = cls->tp_alloc(cls, n);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (t != NULL) PyTuple_SET_ITEM(t, k, items[k]);
        else Py_XDECREF(items[k]);
        items[k] = NULL;
    }
    return t;
}

/* p[0..n) split on single spaces (str.split(" ")) into at most max pieces (more: -1), each piece's start and
 * length; the number of pieces */
static int split_spaces(text_t p, Py_ssize_t n, text_t *starts, Py_ssize_t *lens, int max) {
    int count = 0;
    Py_ssize_t start = 0;
    for (Py_ssize_t k = 0; k <= n; k++) {
        if (k == n || p[k] == ' ') {
            if (count == max) return -1;
            starts[count] = p + start;
            lens[count] = k - start;
            count++;
            start = k + 1;
        }
    }
    return count;
}

/* pieces of one split, all non-empty (parse_sdp_in_python's "not all(parts)") */
static int all_filled(const Py_ssize_t *lens, int count) {
    for (int k = 0; k < count; k++)
        if (lens[k] == 0) return 0;
    return 1;
}

/* Result codes of the pieces below: OK, REFUSED (Python parses: an error or something unusual), FAILED (a Python
 * exception is set: out of memory) */
enum { OK = 0, REFUSED = 1, FAILED = -1 };

/* o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address> (_parse_origin) */
static int read_origin(text_t v, Py_ssize_t n, PyObject **out) {
    text_t s[6];
    Py_ssize_t l[6];
    if (split_spaces(v, n, s, l, 6) != 6 || !all_filled(l, 6)) return REFUSED;
    /* digits of any length: the origin keeps them as text (WebRTC stacks' and wacall's own 62-bit session ids
     * have 19 digits most of the time) */
    if (!digits(s[1], l[1]) || !digits(s[2], l[2])) return REFUSED;
    PyObject *items[6];
    for (int k = 0; k < 6; k++) items[k] = str_of(s[k], l[k]);
    for (int k = 0; k < 6; k++)
        if (items[k] == NULL) {
            for (int j = 0; j < 6; j++) Py_XDECREF(items[j]);
            return FAILED;
        }
    *out = named_tuple(origin_cls, items, 6);
    return *out == NULL ? FAILED : OK;
}

/* c=<nettype> <addrtype> <address>, address type IP4 or IP6 (_parse_connection) */
static int read_connection(text_t v, Py_ssize_t n, PyObject **out) {
    text_t s[3];
    Py_ssize_t l[3];
    if (split_spaces(v, n, s, l, 3) != 3 || !all_filled(l, 3)) return REFUSED;
    if (!(l[1] == 3 && (memcmp(s[1], "IP4", 3) == 0 || memcmp(s[1], "IP6", 3) == 0))) return REFUSED;
    PyObject *items[3];
    for (int k = 0; k < 3; k++) items[k] = str_of(s[k], l[k]);
    if (items[0] == NULL || items[1] == NULL || items[2] == NULL) {
        for (int k = 0; k < 3; k++) Py_XDECREF(items[k]);
        return FAILED;
    }
    *out = named_tuple(connection_cls, items, 3);
    return *out == NULL ? FAILED : OK;
}

/* t=<start-time> <stop-time>, appended to timing as (int, int) */
static int read_timing(text_t v, Py_ssize_t n, PyObject *timing) {
    text_t s[2];
    Py_ssize_t l[2];
    long long start, stop;
    if (split_spaces(v, n, s, l, 2) != 2 || !number(s[0], l[0], &start) || !number(s[1], l[1], &stop))
        return REFUSED;
    PyObject *pair = Py_BuildValue("(LL)", start, stop);
    if (pair == NULL) return FAILED;
    int rc = PyList_Append(timing, pair);
    Py_DECREF(pair);
    return rc < 0 ? FAILED : OK;
}

/* <proto>: tokens joined by single '/' (sdp_syntax._PROTO_RE) */
static int proto_ok(text_t p, Py_ssize_t n) {
    if (n <= 0 || p[0] == '/' || p[n - 1] == '/') return 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (p[k] == '/') {
            if (p[k + 1] == '/') return 0;      /* (k < n - 1: the last is not '/') */
        } else if (!token_char[p[k]]) {
            return 0;
        }
    }
    return 1;
}

#define MAX_FORMATS 64

/* the parts of a MediaDescription that the following lines fill (borrowed: the instance holds them) */
typedef struct {
    PyObject *self, *attributes, *attribute_lines, *rtpmap, *fmtp;
} section_t;

/* m=<media> <port>[/<count>] <proto> <fmt> ... as a new MediaDescription (_read_media_line) */
static int read_media(text_t v, Py_ssize_t n, long number_of_line, PyObject **out, section_t *section) {
    text_t s[MAX_FORMATS + 3];
    Py_ssize_t l[MAX_FORMATS + 3];
    int count = split_spaces(v, n, s, l, MAX_FORMATS + 3);
    if (count < 4 || !all_filled(l, count)) return REFUSED;      /* (more than MAX_FORMATS formats: Python) */
    if (!tokens(s[0], l[0])) return REFUSED;
    text_t slash = memchr(s[1], '/', (size_t)l[1]);
    Py_ssize_t port_len = slash == NULL ? l[1] : slash - s[1];
    long long port, port_count = -1;
    if (!number(s[1], port_len, &port) || port > 65535) return REFUSED;
    if (slash != NULL && l[1] - port_len - 1 > 0) {           /* "4000/" has no count: None, as partition gives */
        if (!number(slash + 1, l[1] - port_len - 1, &port_count) || port_count < 1) return REFUSED;
    }
    if (!proto_ok(s[2], l[2])) return REFUSED;
    int rtp = 0;
    for (Py_ssize_t k = 0; k + 4 <= l[2]; k++)
        if (memcmp(s[2] + k, "RTP/", 4) == 0) rtp = 1;       /* MediaDescription.is_rtp */
    long long pts[MAX_FORMATS];
    if (rtp) {
        for (int k = 3; k < count; k++)
            if (!number(s[k], l[k], &pts[k - 3]) || pts[k - 3] > 127) return REFUSED;
    }
    PyObject *values[M_FIELDS] = {NULL};
    values[M_ATTRIBUTES] = PyList_New(0);
    values[M_ATTRIBUTE_LINES] = PyList_New(0);
    values[M_KIND] = str_of(s[0], l[0]);
    values[M_PORT] = PyLong_FromLongLong(port);
    values[M_PORT_COUNT] = port_count < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(port_count);
    values[M_PROTO] = str_of(s[2], l[2]);
    values[M_FORMATS] = PyList_New(count - 3);
    values[M_CONNECTION] = Py_NewRef(Py_None);
    values[M_RTPMAP] = PyDict_New();
    values[M_FMTP] = PyDict_New();
    values[M_LINE] = PyLong_FromLong(number_of_line);
    values[M_CHOSEN_CRYPTO] = Py_NewRef(Py_None);
    values[M_PARSED_PAYLOAD_TYPES] = PyTuple_New(rtp ? count - 3 : 0);
    int failed = 0;
    for (int k = 0; k < M_FIELDS; k++) failed |= values[k] == NULL;
    for (int k = 3; k < count && !failed; k++) {
        PyObject *format = str_of(s[k], l[k]);
        PyObject *pt = rtp ? PyLong_FromLongLong(pts[k - 3]) : NULL;
        if (format == NULL || (rtp && pt == NULL)) {
            Py_XDECREF(format);
            Py_XDECREF(pt);
            failed = 1;
            break;
        }
        PyList_SET_ITEM(values[M_FORMATS], k - 3, format);
        if (rtp) PyTuple_SET_ITEM(values[M_PARSED_PAYLOAD_TYPES], k - 3, pt);
    }
    if (failed) {
        for (int k = 0; k < M_FIELDS; k++) Py_XDECREF(values[k]);
        return FAILED;
    }
    section->attributes = values[M_ATTRIBUTES];
    section->attribute_lines = values[M_ATTRIBUTE_LINES];
    section->rtpmap = values[M_RTPMAP];
    section->fmtp = values[M_FMTP];
    *out = section->self = instance(media_cls, media_names, values, M_FIELDS);
    return *out == NULL ? FAILED : OK;
}

/* a=rtpmap:<pt> <encoding>/<clock>[/<channels>] into media.rtpmap (_add_codec_attribute; sdp_syntax._RTPMAP_RE:
 * ^(\d{1,3}) ([^\s/]+)/(\d+)(?:/(\d+))?$, the payload type at most 127 and not mapped before) */
static int read_rtpmap(text_t v, Py_ssize_t n, PyObject *rtpmap) {
    Py_ssize_t k = 0;
    while (k < n && k < 4 && is_digit(v[k])) k++;
    if (k < 1 || k > 3 || k >= n || v[k] != ' ') return REFUSED;
    long long pt = 0, clock, channels = -1;
    number(v, k, &pt);
    if (pt > 127) return REFUSED;
    Py_ssize_t enc = ++k;
    while (k < n && v[k] != '/' && !space_char[v[k]]) k++;
    if (k == enc || k >= n || v[k] != '/') return REFUSED;
    Py_ssize_t enc_len = k - enc, clock_at = ++k;
    while (k < n && is_digit(v[k])) k++;
    if (!number(v + clock_at, k - clock_at, &clock)) return REFUSED;
    if (k < n) {
        if (v[k] != '/' || !number(v + k + 1, n - k - 1, &channels)) return REFUSED;
    }
    PyObject *key = PyLong_FromLongLong(pt);
    if (key == NULL) return FAILED;
    int known = PyDict_Contains(rtpmap, key);
    if (known != 0) {
        Py_DECREF(key);
        return known < 0 ? FAILED : REFUSED;                  /* a duplicate rtpmap */
    }
    PyObject *items[3] = {str_of(v + enc, enc_len), PyLong_FromLongLong(clock),
                          channels < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(channels)};
    if (items[0] == NULL || items[1] == NULL || items[2] == NULL) {
        for (int j = 0; j < 3; j++) Py_XDECREF(items[j]);
        Py_DECREF(key);
        return FAILED;
    }
    PyObject *codec = named_tuple(rtpmap_cls, items, 3);
    int rc = codec == NULL ? -1 : PyDict_SetItem(rtpmap, key, codec);
    Py_XDECREF(codec);
    Py_DECREF(key);
    return rc < 0 ? FAILED : OK;
}

/* a=fmtp:<pt> <parameters> into media.fmtp (sdp_syntax._FMTP_RE: ^(\d{1,3}) (.+)$; a later one replaces) */
static int read_fmtp(text_t v, Py_ssize_t n, PyObject *fmtp) {
    Py_ssize_t k = 0;
    while (k < n && k < 4 && is_digit(v[k])) k++;
    if (k < 1 || k > 3 || k + 1 >= n || v[k] != ' ') return REFUSED;
    long long pt = 0;
    number(v, k, &pt);
    PyObject *key = PyLong_FromLongLong(pt);
    PyObject *parameters = new_str(v + k + 1, n - k - 1);
    int rc = key == NULL || parameters == NULL ? -1 : PyDict_SetItem(fmtp, key, parameters);
    Py_XDECREF(key);
    Py_XDECREF(parameters);
    return rc < 0 ? FAILED : OK;
}

/* an a= line (after the first three): (name, value or None) appended to the section's attributes and its line
 * number to attribute_lines; a media section's a=rtpmap and a=fmtp read into its codec tables */
static int read_attribute(text_t raw, Py_ssize_t n, long number_of_line, PyObject *attributes, PyObject *lines,
                          PyObject *media_rtpmap, PyObject *media_fmtp) {
    text_t name = raw + 2;
    text_t colon = memchr(name, ':', (size_t)(n - 2));
    Py_ssize_t name_len = colon == NULL ? n - 2 : colon - name;
    if (!tokens(name, name_len)) return REFUSED;                /* "invalid attribute name" */
    Py_ssize_t value_len = colon == NULL ? 0 : n - 2 - name_len - 1;
    if (media_rtpmap != NULL && name_len == 6 && memcmp(name, "rtpmap", 6) == 0) {
        if (colon == NULL) return REFUSED;
        int rc = read_rtpmap(colon + 1, value_len, media_rtpmap);
        if (rc != OK) return rc;
    } else if (media_fmtp != NULL && name_len == 4 && memcmp(name, "fmtp", 4) == 0) {
        if (colon == NULL) return REFUSED;
        int rc = read_fmtp(colon + 1, value_len, media_fmtp);
        if (rc != OK) return rc;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) return FAILED;
    PyObject *n_name = str_of(name, name_len);
    PyObject *value = colon == NULL ? Py_NewRef(Py_None) : new_str(colon + 1, value_len);
    PyObject *line = PyLong_FromLong(number_of_line);
    if (n_name == NULL || value == NULL || line == NULL) {
        Py_XDECREF(n_name);
        Py_XDECREF(value);
        Py_XDECREF(line);
        Py_DECREF(pair);
        return FAILED;
    }
    PyTuple_SET_ITEM(pair, 0, n_name);
    PyTuple_SET_ITEM(pair, 1, value);
    int rc = PyList_Append(attributes, pair) < 0 || PyList_Append(lines, line) < 0 ? FAILED : OK;
    Py_DECREF(pair);
    Py_DECREF(line);
    return rc;
}

#define SEEN(kind) (1u << ((kind) - 'a'))

/* parse_sdp_in_python's loop over the lines, on the ASCII text t[0..len) */
static int read_description(text_t t, Py_ssize_t len, PyObject **values) {
    PyObject *lines = values[S_LINES], *media = values[S_MEDIA];
    PyObject *attributes = values[S_ATTRIBUTES], *attribute_lines = values[S_ATTRIBUTE_LINES];
    section_t current = {NULL, NULL, NULL, NULL, NULL};     /* the last of media */
    unsigned seen = 0;
    long number_of_line = 0;
    Py_ssize_t at = 0;
    while (at < len) {
        /* the next line: up to LF, one CR before it dropped (_split_lines); the last line may have no LF, and a
         * text ending in LF has no line after it */
        text_t lf = memchr(t + at, '\n', (size_t)(len - at));
        Py_ssize_t end = lf == NULL ? len : lf - t;
        text_t raw = t + at;
        Py_ssize_t n = end - at;
        at = end + 1;
        if (n > 0 && raw[n - 1] == '\r') n--;
        number_of_line++;
        if (n < 2 || raw[1] != '=' || raw[0] < 'a' || raw[0] > 'z') return REFUSED;   /* "<type>=<value>", empty */
        if (memchr(raw, '\r', (size_t)n) != NULL) return REFUSED;                      /* a stray CR */
        PyObject *line = new_str(raw, n);
        if (line == NULL) return FAILED;
        int rc = PyList_Append(lines, line);
        Py_DECREF(line);
        if (rc < 0) return FAILED;
        unsigned char kind = raw[0];
        if (kind == 'a' && number_of_line > 3) {
            rc = read_attribute(raw, n, number_of_line, attributes, attribute_lines, current.rtpmap, current.fmtp);
            if (rc != OK) return rc;
            continue;
        }
        if (number_of_line <= 3 && kind != "vos"[number_of_line - 1]) return REFUSED;
        text_t value = raw + 2;
        Py_ssize_t value_len = n - 2;
        if (kind == 'v') {
            if (number_of_line != 1 || value_len != 1 || value[0] != '0') return REFUSED;
            continue;
        }
        if (current.self == NULL) {
            if (strchr("osiuepcbtrzkam", kind) == NULL) return REFUSED;   /* (kind is a letter: never NUL) */
            if ((kind == 'o' || kind == 's') && (seen & SEEN(kind))) return REFUSED;
            seen |= SEEN(kind);
        } else if (strchr("icbkam", kind) == NULL) {
            return REFUSED;
        }
        if (kind == 'o') {
            PyObject *origin = NULL;
            rc = read_origin(value, value_len, &origin);
            if (rc != OK) return rc;
            Py_SETREF(values[S_ORIGIN], origin);
        } else if (kind == 's') {
            if (value_len == 0) return REFUSED;
            PyObject *name = str_of(value, value_len);        /* (usually "-") */
            if (name == NULL) return FAILED;
            Py_SETREF(values[S_SESSION_NAME], name);
        } else if (kind == 't') {
            rc = read_timing(value, value_len, values[S_TIMING]);
            if (rc != OK) return rc;
        } else if (kind == 'c') {
            PyObject *connection = NULL;
            rc = read_connection(value, value_len, &connection);
            if (rc != OK) return rc;
            if (current.self == NULL) {
                Py_SETREF(values[S_CONNECTION], connection);
            } else {
                rc = PyObject_GenericSetAttr(current.self, media_names[M_CONNECTION], connection);
                Py_DECREF(connection);
                if (rc < 0) return FAILED;
            }
        } else if (kind == 'm') {
            if (!(seen & SEEN('t'))) return REFUSED;                      /* "m= line before any t= line" */
            PyObject *section = NULL;
            rc = read_media(value, value_len, number_of_line, &section, &current);
            if (rc != OK) return rc;
            rc = PyList_Append(media, section);
            Py_DECREF(section);                                 /* (media holds it) */
            if (rc < 0) return FAILED;
            attributes = current.attributes;
            attribute_lines = current.attribute_lines;
        }
        /* i= u= e= p= b= r= z= k= are accepted and not modelled */
    }
    if ((seen & (SEEN('o') | SEEN('s') | SEEN('t'))) != (SEEN('o') | SEEN('s') | SEEN('t'))) return REFUSED;
    if (values[S_CONNECTION] == Py_None) {                       /* every section needs a c= of its own */
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(media); k++) {
            PyObject *connection = PyObject_GenericGetAttr(PyList_GET_ITEM(media, k), media_names[M_CONNECTION]);
            if (connection == NULL) return FAILED;
            Py_DECREF(connection);
            if (connection == Py_None) return REFUSED;
        }
    }
    return OK;
}

static PyObject *no_origin;         /* sdp_syntax._NO_ORIGIN: bound with the classes */

static PyObject *scan(PyObject *module, PyObject *arg) {
    (void)module;
    if (session_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_sdpscan.bind() was not called");
        return NULL;
    }
    if (!PyUnicode_CheckExact(arg) || !PyUnicode_IS_ASCII(arg) || PyUnicode_GET_LENGTH(arg) == 0) Py_RETURN_NONE;
    PyObject *values[S_FIELDS] = {NULL};
    values[S_ATTRIBUTES] = PyList_New(0);
    values[S_ATTRIBUTE_LINES] = PyList_New(0);
    values[S_VERSION] = PyLong_FromLong(0);
    values[S_ORIGIN] = Py_NewRef(no_origin);
    values[S_SESSION_NAME] = str_of((text_t) "-", 1);
    values[S_CONNECTION] = Py_NewRef(Py_None);
    values[S_TIMING] = PyList_New(0);
    values[S_MEDIA] = PyList_New(0);
    values[S_LINES] = PyList_New(0);
    int rc = OK;
    for (int k = 0; k < S_FIELDS; k++)
        if (values[k] == NULL) rc = FAILED;
    if (rc == OK) rc = read_description(PyUnicode_1BYTE_DATA(arg), PyUnicode_GET_LENGTH(arg), values);
    if (rc != OK) {
        for (int k = 0; k < S_FIELDS; k++) Py_XDECREF(values[k]);
        if (rc == FAILED) return NULL;
        Py_RETURN_NONE;
    }
    return instance(session_cls, session_names, values, S_FIELDS);
}

static PyObject *bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "bind(session, media, origin, connection, rtpmap, no_origin)");
        return NULL;
    }
    for (int k = 0; k < 5; k++) {
        if (!PyType_Check(args[k])) {
            PyErr_SetString(PyExc_TypeError, "bind() takes the five classes first");
            return NULL;
        }
        int is_tuple = PyType_IsSubtype((PyTypeObject *)args[k], &PyTuple_Type);
        if (k < 2 ? (is_tuple || ((PyTypeObject *)args[k])->tp_dictoffset == 0) : !is_tuple) {
            PyErr_SetString(PyExc_TypeError, "bind(): two classes with a __dict__, then three named tuples");
            return NULL;
        }
    }
    if (Py_TYPE(args[5]) != (PyTypeObject *)args[2]) {
        PyErr_SetString(PyExc_TypeError, "bind(): no_origin must be an instance of origin");
        return NULL;
    }
    PyTypeObject **slots[5] = {&session_cls, &media_cls, &origin_cls, &connection_cls, &rtpmap_cls};
    for (int k = 0; k < 5; k++) {
        Py_INCREF(args[k]);
        Py_XSETREF(*slots[k], (PyTypeObject *)args[k]);
    }
    Py_INCREF(args[5]);
    Py_XSETREF(no_origin, args[5]);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------------------------
 * crypto(value): the SDES key a flow reads besides the description
 * --------------------------------------------------------------------------------------------------------- */

static PyTypeObject *crypto_cls;
enum { C_TAG, C_SUITE, C_KEY_B64, C_KEY, C_LIFETIME, C_MKI, C_SESSION_PARAMS, C_FIELDS };
static const char *const CRYPTO_FIELDS[C_FIELDS] = {
    "tag", "suite", "key_b64", "key", "lifetime", "mki", "session_params"};
static PyObject *crypto_names[C_FIELDS];
/* sdp_syntax.SDES_SUITES: both take 30 bytes of key||salt, 40 base64 characters */
static const char *const SUITES[] = {"AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"};
#define N_SUITES 2
#define SUITE_LEN 23
#define KEY_CHARS 40
#define KEY_BYTES 30
static PyObject *suite_str[N_SUITES];
/* the value of each base64 character (RFC 4648 section 4), -1 for the others ('=' included) */
static signed char base64_value[256];
#define MAX_SESSION_PARAMS 16

static PyObject *crypto(PyObject *module, PyObject *arg) {
    (void)module;
    if (crypto_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_sdpscan.bind_crypto() was not called");
        return NULL;
    }
    if (!PyUnicode_CheckExact(arg) || !PyUnicode_IS_ASCII(arg)) Py_RETURN_NONE;
    text_t v = PyUnicode_1BYTE_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    /* printable characters and single spaces between them: then _CRYPTO_RE's \S+ pieces are the pieces between
     * spaces (a tab, a line end, any other control character: Python reads it) */
    for (Py_ssize_t k = 0; k < n; k++)
        if (v[k] < ' ' || v[k] > '~') Py_RETURN_NONE;
    text_t s[3 + MAX_SESSION_PARAMS];
    Py_ssize_t l[3 + MAX_SESSION_PARAMS];
    int count = split_spaces(v, n, s, l, 3 + MAX_SESSION_PARAMS);
    if (count < 3 || !all_filled(l, count)) Py_RETURN_NONE;
    /* <tag>: \d{1,9} */
    long long tag;
    if (l[0] > 9 || !number(s[0], l[0], &tag)) Py_RETURN_NONE;
    /* <crypto-suite>: one of SDES_SUITES */
    int suite = -1;
    for (int k = 0; k < N_SUITES; k++)
        if (l[1] == SUITE_LEN && memcmp(s[1], SUITES[k], SUITE_LEN) == 0) suite = k;
    if (suite < 0) Py_RETURN_NONE;
    /* <key-params>: the first of its ';' keys, "inline:<key||salt>[|lifetime][|MKI:length]" */
    text_t first = s[2];
    text_t semicolon = memchr(first, ';', (size_t)l[2]);
    Py_ssize_t first_len = semicolon == NULL ? l[2] : semicolon - first;
    if (first_len < 7 || memcmp(first, "inline:", 7) != 0) Py_RETURN_NONE;
    text_t key = first + 7, end = first + first_len;
    text_t bar = memchr(key, '|', (size_t)(end - key));
    if ((bar == NULL ? end : bar) - key != KEY_CHARS) Py_RETURN_NONE;
    /* binascii.a2b_base64(strict_mode=True) of 40 characters of the alphabet: 30 bytes, no padding */
    unsigned char key_salt[KEY_BYTES];
    for (int k = 0; k < KEY_CHARS; k += 4) {
        int a = base64_value[key[k]], b = base64_value[key[k + 1]], c = base64_value[key[k + 2]],
            d = base64_value[key[k + 3]];
        if ((a | b | c | d) < 0) Py_RETURN_NONE;
        unsigned char *out = key_salt + k / 4 * 3;
        out[0] = (unsigned char)(a << 2 | b >> 4);
        out[1] = (unsigned char)(b << 4 | c >> 2);
        out[2] = (unsigned char)(c << 6 | d);
    }
    PyObject *values[C_FIELDS] = {NULL};
    values[C_TAG] = PyLong_FromLongLong(tag);
    values[C_SUITE] = Py_NewRef(suite_str[suite]);
    values[C_KEY_B64] = new_str(key, KEY_CHARS);
    values[C_KEY] = PyBytes_FromStringAndSize((const char *)key_salt, KEY_BYTES);
    values[C_LIFETIME] = Py_NewRef(Py_None);
    values[C_MKI] = Py_NewRef(Py_None);
    values[C_SESSION_PARAMS] = PyTuple_New(count - 3);
    int failed = 0;
    /* the pieces after the key: one with ':' is the MKI, the others the lifetime (the last of each kind wins) */
    for (text_t piece = bar; piece != NULL && !failed;) {
        piece++;
        text_t next = memchr(piece, '|', (size_t)(end - piece));
        Py_ssize_t piece_len = (next == NULL ? end : next) - piece;
        PyObject *text = new_str(piece, piece_len);
        if (text == NULL) failed = 1;
        else Py_SETREF(values[memchr(piece, ':', (size_t)piece_len) != NULL ? C_MKI : C_LIFETIME], text);
        piece = next;
    }
    for (int k = 0; k < C_FIELDS; k++) failed |= values[k] == NULL;
    for (int k = 3; k < count && !failed; k++) {
        PyObject *param = new_str(s[k], l[k]);
        if (param == NULL) failed = 1;
        else PyTuple_SET_ITEM(values[C_SESSION_PARAMS], k - 3, param);
    }
    if (failed) {
        for (int k = 0; k < C_FIELDS; k++) Py_XDECREF(values[k]);
        return NULL;
    }
    return instance(crypto_cls, crypto_names, values, C_FIELDS);
}

static PyObject *bind_crypto(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyType_Check(arg) || ((PyTypeObject *)arg)->tp_dictoffset == 0) {
        PyErr_SetString(PyExc_TypeError, "bind_crypto(crypto): a class with a __dict__");
        return NULL;
    }
    Py_INCREF(arg);
    Py_XSETREF(crypto_cls, (PyTypeObject *)arg);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL,
     "bind(session, media, origin, connection, rtpmap, no_origin): the classes scan() makes."},
    {"scan", scan, METH_O, "The SessionDescription of a well-formed ASCII SDP text (see sdpscan.c), or None."},
    {"bind_crypto", bind_crypto, METH_O, "bind_crypto(crypto): the class crypto() makes."},
    {"crypto", crypto, METH_O, "The CryptoAttribute of a usual a=crypto value (see sdpscan.c), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_sdpscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sdpscan(void) {
    init_tables();
    int filled[MAX_COMMON_LEN + 1] = {0};
    memset(common_by_length, -1, sizeof common_by_length);
    for (int k = 0; k < N_COMMON; k++) {
        size_t n = strlen(COMMON[k]);
        if (n == 0 || n > MAX_COMMON_LEN) return PyErr_Format(PyExc_SystemError, "common string %s too long", COMMON[k]);
        common_by_length[n][filled[n]++] = (signed char)k;
        if (common_str[k] == NULL && (common_str[k] = PyUnicode_InternFromString(COMMON[k])) == NULL) return NULL;
    }
    for (int k = 0; k < S_FIELDS; k++)
        if (session_names[k] == NULL && (session_names[k] = PyUnicode_InternFromString(SESSION_FIELDS[k])) == NULL)
            return NULL;
    for (int k = 0; k < M_FIELDS; k++)
        if (media_names[k] == NULL && (media_names[k] = PyUnicode_InternFromString(MEDIA_FIELDS[k])) == NULL)
            return NULL;
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    for (int k = 0; k < C_FIELDS; k++)
        if (crypto_names[k] == NULL && (crypto_names[k] = PyUnicode_InternFromString(CRYPTO_FIELDS[k])) == NULL)
            return NULL;
    for (int k = 0; k < N_SUITES; k++)
        if (suite_str[k] == NULL && (suite_str[k] = PyUnicode_InternFromString(SUITES[k])) == NULL) return NULL;
    memset(base64_value, -1, sizeof base64_value);
    for (int k = 0; k < 64; k++)
        base64_value[(unsigned char)"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[k]] =
            (signed char)k;
    return PyModule_Create(&module_def);
}
