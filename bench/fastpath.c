/* The load generator's per-packet hot path, in C (bench/business_peer.py builds and loads it with
 * ctypes; without a C compiler the generator falls back to the same logic in Python).
 *
 * It only moves packets for calls whose ICE and DTLS handshakes Python already completed: every
 * 20 ms tick, fp_send() builds one RTP packet per sending call (12-byte header + a pre-encoded
 * Opus frame), SRTP-protects it with the call's libsrtp session (the one pylibsrtp created from the
 * DTLS-exported keys; the function pointers come from pylibsrtp's own binding) and send()s it on
 * the call's connected UDP socket. fp_drain() empties every readable socket (epoll, zero timeout):
 * SRTP/SRTCP of calls with keys is unprotected (authenticated + decrypted) and counted here, RTP
 * sequence numbers tracked (gaps = loss); every other datagram (STUN, DTLS, media before the keys)
 * is handed back to Python.
 *
 * The call table is an array of struct fp_call shared with Python (ctypes); all fields are 64-bit.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);

struct fp_call {
    int64_t fd;
    int64_t active;          /* keys installed: the C path owns this call's media */
    int64_t sending;         /* send a frame per tick */
    int64_t tx;              /* srtp_t for protect */
    int64_t rx;              /* srtp_t for unprotect */
    int64_t ssrc;
    int64_t seq;
    int64_t ts;
    int64_t frame;
    int64_t sent;
    int64_t octets;
    int64_t send_errors;
    int64_t rx_packets;
    int64_t rx_rtcp;
    int64_t rx_bad;
    int64_t rx_started;
    int64_t rx_base;
    int64_t rx_max;          /* extended highest sequence number */
    int64_t payload_type;
};

static srtp_fn p_protect, p_unprotect, p_unprotect_rtcp;
#define MAX_FRAMES 4096
#define MAX_FRAME_BYTES 1200
static uint8_t frame_data[MAX_FRAMES][MAX_FRAME_BYTES];
static int frame_len[MAX_FRAMES];
static int n_frames;

void fp_init(void *protect, void *unprotect, void *unprotect_rtcp) {
    p_protect = (srtp_fn)protect;
    p_unprotect = (srtp_fn)unprotect;
    p_unprotect_rtcp = (srtp_fn)unprotect_rtcp;
}

int fp_set_frames(const uint8_t *data, const int *lengths, int n) {
    if (n > MAX_FRAMES) n = MAX_FRAMES;
    int off = 0;
    for (int i = 0; i < n; i++) {
        int len = lengths[i] > MAX_FRAME_BYTES ? MAX_FRAME_BYTES : lengths[i];
        memcpy(frame_data[i], data + off, len);
        frame_len[i] = len;
        off += lengths[i];
    }
    n_frames = n;
    return n;
}

/* Send `due` frames for every sending call among calls[0..n). Returns packets sent. */
int64_t fp_send(struct fp_call *calls, int n, int due) {
    uint8_t buf[2048] __attribute__((aligned(16)));
    int64_t total = 0;
    if (n_frames == 0) return 0;
    for (int i = 0; i < n; i++) {
        struct fp_call *c = &calls[i];
        if (!c->sending || !c->active) continue;
        for (int k = 0; k < due; k++) {
            int f = (int)(c->frame % n_frames);
            int plen = frame_len[f];
            uint32_t seq = (uint32_t)c->seq, ts = (uint32_t)c->ts, ssrc = (uint32_t)c->ssrc;
            buf[0] = 0x80;
            buf[1] = (uint8_t)((c->sent == 0 ? 0x80 : 0) | (c->payload_type & 0x7f));
            buf[2] = (uint8_t)(seq >> 8); buf[3] = (uint8_t)seq;
            buf[4] = (uint8_t)(ts >> 24); buf[5] = (uint8_t)(ts >> 16); buf[6] = (uint8_t)(ts >> 8); buf[7] = (uint8_t)ts;
            buf[8] = (uint8_t)(ssrc >> 24); buf[9] = (uint8_t)(ssrc >> 16); buf[10] = (uint8_t)(ssrc >> 8); buf[11] = (uint8_t)ssrc;
            memcpy(buf + 12, frame_data[f], plen);
            int len = 12 + plen;
            c->frame++;
            c->seq = (seq + 1) & 0xFFFF;
            c->ts = (ts + 960) & 0xFFFFFFFFu;
            c->sent++;
            c->octets += plen;
            if (p_protect((void *)(intptr_t)c->tx, buf, &len) != 0) { c->send_errors++; continue; }
            if (send((int)c->fd, buf, len, MSG_DONTWAIT) < 0) c->send_errors++;
            else total++;
        }
    }
    return total;
}

/* Drain every readable socket. Media of active calls is handled here; anything else is copied to
 * `out` (up to out_cap bytes) with (call index, length) pairs in `meta` (up to meta_cap pairs).
 * Returns the number of datagrams handed back. `fd_index` maps an fd to its call index (-1: none). */
int fp_drain(int epfd, struct fp_call *calls, const int32_t *fd_index, int fd_index_len,
             uint8_t *out, int out_cap, int32_t *meta, int meta_cap, int64_t *media_count) {
    struct epoll_event events[1024];
    uint8_t buf[2048] __attribute__((aligned(16)));
    int handed = 0, used = 0;
    int64_t media = 0;
    for (int round = 0; round < 64; round++) {
        int n = epoll_wait(epfd, events, 1024, 0);
        if (n <= 0) break;
        for (int e = 0; e < n; e++) {
            int fd = events[e].data.fd;
            if (fd < 0 || fd >= fd_index_len) continue;
            int idx = fd_index[fd];
            if (idx < 0) { ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT); (void)r; continue; }
            if (handed >= meta_cap || used + 2048 > out_cap) goto done;   /* Python's share is full */
            ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (got <= 0) continue;
            struct fp_call *c = &calls[idx];
            int len = (int)got;
            if (buf[0] >= 128 && buf[0] <= 191 && c->active) {
                media++;
                if (buf[1] >= 192 && buf[1] <= 223) {           /* RTCP (RFC 5761) */
                    if (p_unprotect_rtcp((void *)(intptr_t)c->rx, buf, &len) == 0) c->rx_rtcp++;
                    else c->rx_bad++;
                    continue;
                }
                if (p_unprotect((void *)(intptr_t)c->rx, buf, &len) != 0) { c->rx_bad++; continue; }
                int64_t seq = ((int64_t)buf[2] << 8) | buf[3];
                if (!c->rx_started) {
                    c->rx_started = 1;
                    c->rx_base = c->rx_max = seq;
                } else {
                    int64_t d = (seq - c->rx_max) & 0xFFFF;
                    if (d < 0x8000) c->rx_max += d;
                }
                c->rx_packets++;
                continue;
            }
            memcpy(out + used, buf, len);
            meta[2 * handed] = idx;
            meta[2 * handed + 1] = len;
            used += len;
            handed++;
        }
    }
done:
    *media_count += media;
    return handed;
}
