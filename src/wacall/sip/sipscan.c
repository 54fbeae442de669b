/* The compiled SIP scanner (see sipscan.h and wacall.sip.message): the common case of RFC 3261 section 7's
 * message layout in one pass, with the pure-Python parser as the reference and the fallback. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "sipscan.h"

/* RFC 3261 section 25.1 token characters: alphanum - . ! % * _ + ` ' ~ */
static int is_token_char(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    switch (c) {
    case '-': case '.': case '!': case '%': case '*': case '_': case '+': case '`': case '\'': case '~':
        return 1;
    default:
        return 0;
    }
}

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

/* name[0..n) is "content-length" or "l", case-insensitively */
static int is_length_name(const unsigned char *name, size_t n) {
    static const char cl[] = "content-length";
    if (n == 1) return lower(name[0]) == 'l';
    if (n != sizeof cl - 1) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(name[i]) != (unsigned char)cl[i]) return 0;
    return 1;
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

/* the end of the first line break "\r?\n" at or after i (its first octet's index in *brk), or 0 */
static size_t line_end(const unsigned char *d, size_t i, size_t n, size_t *brk) {
    const unsigned char *p = memchr(d + i, '\n', n - i);
    if (p == NULL) return 0;
    size_t at = (size_t)(p - d);
    *brk = (at > i && d[at - 1] == '\r') ? at - 1 : at;
    return at + 1;
}

long sip_scan(const unsigned char *data, size_t len, unsigned char *out, size_t out_cap, long *info) {
    size_t i = 0;
    while (i < len && (data[i] == '\r' || data[i] == '\n')) i++;          /* section 7.5 */
    size_t head_start = i;
    /* the header block ends at the first "\r?\n\r?\n" (what message._HEADER_END_RE finds); on the way every octet
     * before it is checked: no NUL, nothing over 0x7f, no CR but in CRLF (those go to Python). One pass. */
    size_t head_end = 0, body = 0;
    size_t p = head_start;
    for (;;) {
        while (p < len && ordinary(data[p])) p++;
        if (p >= len) return -1;                      /* no empty line */
        size_t q;
        if (data[p] == '\r') {
            if (p + 1 >= len || data[p + 1] != '\n') return -1;      /* bare CR (or no empty line after it) */
            q = p + 2;
        } else if (data[p] == '\n') {
            q = p + 1;
        } else {
            return -1;                                /* NUL or non-ASCII: decoding and odd octets are Python's */
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
    info[0] = (long)head_start;
    info[1] = (long)start_end;
    info[2] = (long)body;
    /* verbatim: the octets are already the form Message.to_bytes renders (no leading line breaks, CRLF
     * everywhere, "name: value" with one SP and nothing trailing, one Content-Length in plain digits);
     * Python checks the names' spelling and keeps the received octets as the message's wire form */
    int verbatim = head_start == 0 && start_end < head_end && data[start_end] == '\r' && body == head_end + 4;
    long long length = -1;
    int lengths = 0;
    long fields = 0;
    size_t o = start_end - head_start;               /* out starts with the start line */
    if (o > out_cap) return -1;
    memcpy(out, data + head_start, o);
    i = next;
    while (i < head_end) {
        size_t e;
        size_t after = line_end(data, i, head_end, &e);
        if (after == 0) { e = head_end; after = head_end; }
        /* the line is data[i..e) */
        if (data[i] == ' ' || data[i] == '\t') return -1;     /* folding: Python's */
        size_t c = i;
        while (c < e && data[c] != ':') c++;
        if (c == e) return -1;                                  /* no colon */
        size_t ne = c;
        while (ne > i && (data[ne - 1] == ' ' || data[ne - 1] == '\t')) ne--;
        if (ne == i) return -1;
        for (size_t k = i; k < ne; k++)
            if (!is_token_char(data[k])) return -1;
        size_t vs = c + 1, ve = e;
        while (vs < ve && (data[vs] == ' ' || data[vs] == '\t')) vs++;
        while (ve > vs && (data[ve - 1] == ' ' || data[ve - 1] == '\t')) ve--;
        if (verbatim && (ne != c || vs != c + 2 || data[c + 1] != ' ' || ve != e || (after != head_end && data[e] != '\r')))
            verbatim = 0;
        size_t need = (ne - i) + (ve - vs) + 2;
        if (o + need > out_cap) return -1;
        out[o++] = '\n';
        memcpy(out + o, data + i, ne - i); o += ne - i;
        out[o++] = '\n';
        memcpy(out + o, data + vs, ve - vs); o += ve - vs;
        if (is_length_name(data + i, ne - i)) {
            lengths++;
            length = digits_value(data + vs, ve - vs);
            if (data[vs] == '0' && ve - vs > 1) verbatim = 0;              /* rendered without leading zeros */
        }
        fields++;
        i = after;
    }
    if (lengths == 0) info[3] = -1;
    else if (lengths == 1 && length >= 0) info[3] = (long)length;
    else info[3] = -2;
    info[4] = (long)o;
    info[5] = verbatim && fields > 0 && info[3] >= 0;
    return fields;
}

long long sip_frame_length(const unsigned char *head, size_t len) {
    long long found = -1;
    int count = 0;
    size_t i = 0;
    /* the first line is the start line: fields start after a "\n" (message._LENGTH_FIELD_RE) */
    while (i < len) {
        const unsigned char *p = memchr(head + i, '\n', len - i);
        if (p == NULL) break;
        i = (size_t)(p - head) + 1;
        if (i >= len) break;
        if (head[i] == ' ' || head[i] == '\t') return -1;       /* folded: Python's */
        size_t e = i;
        while (e < len && head[e] != ':' && head[e] != '\r' && head[e] != '\n') e++;
        if (e >= len || head[e] != ':') continue;
        size_t ne = e;
        while (ne > i && (head[ne - 1] == ' ' || head[ne - 1] == '\t')) ne--;
        if (!is_length_name(head + i, ne - i)) continue;
        size_t vs = e + 1, ve = vs;
        while (ve < len && head[ve] != '\r' && head[ve] != '\n') ve++;
        while (vs < ve && (head[vs] == ' ' || head[vs] == '\t')) vs++;
        while (ve > vs && (head[ve - 1] == ' ' || head[ve - 1] == '\t')) ve--;
        found = digits_value(head + vs, ve - vs);
        if (found < 0) return -1;
        count++;
    }
    return count == 1 ? found : -1;
}
