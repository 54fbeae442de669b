/* wacall's per-packet media path in C, for established legs (see wacall/media/fastpath.py).
 *
 * Built with cffi in API mode at install time (wacall/media/fastpath_build.py). It links nothing:
 * srtp_protect/srtp_unprotect are the libsrtp inside pylibsrtp, whose addresses Python passes to
 * fp_init(), and each leg's srtp_t is the session pylibsrtp created from the DTLS or SDES keys, so
 * Python (RTCP, DTMF, restarts) and C share one SRTP state per direction.
 *
 * A leg is "fast" once Python has done everything a call's first packets need (ICE, DTLS, the first
 * media, the answer). Then:
 *   fp_recv(): recvmmsg() on a shared port socket; a datagram from a fast leg's remote address that
 *     is SRTP (not SRTCP) is unprotected, parsed and counted here (RFC 3550 A.1 sequence, A.8 jitter,
 *     exactly as wacall.media.rtp.SourceStats), its payload kept for the level and the recording.
 *     Python gets back, in one array: every other datagram (STUN, DTLS, SRTCP, unknown sources,
 *     packets that fail SRTP) as it arrived; RFC 4733 event packets (plain); the first packet that
 *     surprises (new SSRC, other payload type, too long): the leg then stops being fast for receive;
 *     and "a recording chunk is ready" marks.
 *   fp_send(): every 20 ms, one RTP packet per fast sending leg from the frames Python handed over
 *     once (fp_frames_add), SRTP-protected and sent with sendmmsg() per socket.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

#define FP_MAX_LEGS 65536
#define FP_BUCKETS 65536
#define FP_RING 15           /* the last packets heard, for the level (users.phone.LEVEL_PACKETS) */
#define FP_RING_SLOT 320     /* longest plain RTP kept here; longer packets go to Python */
#define FP_REC_CHUNK 8192    /* a recording chunk is handed to Python at this size */
#define FP_BATCH 64
#define FP_BUF 2048
#define FP_MAX_SETS 256
#define FP_SEND_SLOT 1400    /* 12-byte header + frame + SRTP trailer */
#define FP_MAX_FRAME (FP_SEND_SLOT - 12 - 160)
#define SEQ_MOD 65536
#define MAX_DROPOUT 3000
#define MAX_MISORDER 100

enum { FP_RAW = 0, FP_DTMF = 1, FP_DEMOTED = 2, FP_REC = 3, FP_MEDIA = 4 };

#include "fastpath.h"

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);
static srtp_fn p_protect, p_unprotect;
static struct fp_leg *legs[FP_MAX_LEGS];
static int32_t buckets[FP_BUCKETS];
static int32_t n_legs;           /* high-water mark of leg ids */
static int32_t free_ids[FP_MAX_LEGS];
static int32_t n_free;
static double clock_override;

struct fp_frames { int32_t n; int32_t *off; int32_t *len; uint8_t *data; };
static struct fp_frames sets[FP_MAX_SETS];
static int32_t n_sets;

static double now_mono(void) {
    if (clock_override > 0) return clock_override;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

void fp_init(void *protect, void *unprotect) {
    p_protect = (srtp_fn)protect;
    p_unprotect = (srtp_fn)unprotect;
    for (int i = 0; i < FP_BUCKETS; i++) buckets[i] = -1;
}

void fp_set_clock(double t) { clock_override = t; }

/* -- frame sets: a user's pre-encoded microphone, shared by every leg that plays it ------------------ */
int fp_frames_add(const uint8_t *data, const int32_t *lengths, int32_t n) {
    if (n_sets >= FP_MAX_SETS || n <= 0) return -1;
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (lengths[i] < 0 || lengths[i] > FP_MAX_FRAME) return -1;
        total += lengths[i];
    }
    struct fp_frames *s = &sets[n_sets];
    s->data = malloc(total ? total : 1);
    s->off = malloc(sizeof(int32_t) * n);
    s->len = malloc(sizeof(int32_t) * n);
    if (!s->data || !s->off || !s->len) return -1;
    memcpy(s->data, data, total);
    int32_t off = 0;
    for (int i = 0; i < n; i++) { s->off[i] = off; s->len[i] = lengths[i]; off += lengths[i]; }
    s->n = n;
    return n_sets++;
}

/* -- legs ------------------------------------------------------------------------------------------- */
struct fp_leg *fp_leg(int32_t id) { return (id >= 0 && id < n_legs) ? legs[id] : NULL; }

int32_t fp_leg_new(void) {
    int32_t id;
    if (n_free) id = free_ids[--n_free];
    else if (n_legs < FP_MAX_LEGS) id = n_legs++;
    else return -1;
    struct fp_leg *l = calloc(1, sizeof *l);
    if (!l) { free_ids[n_free++] = id; return -1; }
    l->next = -1;
    l->family = -1;
    legs[id] = l;
    return id;
}

static uint32_t key_hash(int32_t family, const uint8_t *addr, int32_t port) {
    uint32_t h = 2166136261u ^ (uint32_t)family;
    int n = family == AF_INET6 ? 16 : 4;
    for (int i = 0; i < n; i++) h = (h ^ addr[i]) * 16777619u;
    h = (h ^ (uint32_t)port) * 16777619u;
    return h & (FP_BUCKETS - 1);
}

static int same_key(struct fp_leg *l, int32_t family, const uint8_t *addr, int32_t port) {
    return l->family == family && l->port == port && memcmp(l->addr, addr, family == AF_INET6 ? 16 : 4) == 0;
}

static void unlink_key(int32_t id) {
    struct fp_leg *l = legs[id];
    if (!l->linked) return;
    uint32_t h = key_hash(l->family, l->addr, l->port);
    int32_t *p = &buckets[h];
    while (*p >= 0) {
        if (*p == id) { *p = l->next; break; }
        p = &legs[*p]->next;
    }
    l->next = -1;
    l->linked = 0;
}

/* The leg's remote address (family AF_INET: 4 bytes, AF_INET6: 16; port in host order) and the socket
 * its media goes out on. Another leg keyed on the same address loses the key (Python demotes it first). */
int fp_leg_bind(int32_t id, int32_t family, const uint8_t *addr, int32_t port, int32_t fd) {
    struct fp_leg *l = fp_leg(id);
    if (!l) return -1;
    unlink_key(id);
    uint32_t h = key_hash(family, addr, port);
    for (int32_t o = buckets[h]; o >= 0; o = legs[o]->next)
        if (legs[o]->linked && same_key(legs[o], family, addr, port)) { unlink_key(o); break; }
    l->family = family;
    l->port = port;
    memset(l->addr, 0, 16);
    memcpy(l->addr, addr, family == AF_INET6 ? 16 : 4);
    l->fd = fd;
    l->next = buckets[h];
    l->linked = 1;
    buckets[h] = id;
    return 0;
}

int fp_leg_recording(int32_t id, int64_t left) {
    struct fp_leg *l = fp_leg(id);
    if (!l) return -1;
    if (!l->rec) {
        l->rec_cap = FP_REC_CHUNK + FP_BUF + 2;
        l->rec = malloc(l->rec_cap);
        if (!l->rec) return -1;
    }
    l->rec_left = left;
    return 0;
}

int fp_leg_level(int32_t id) {
    struct fp_leg *l = fp_leg(id);
    if (!l) return -1;
    if (!l->ring && !(l->ring = malloc(FP_RING * FP_RING_SLOT))) return -1;
    return 0;
}

void fp_leg_free(int32_t id) {
    struct fp_leg *l = fp_leg(id);
    if (!l) return;
    unlink_key(id);
    free(l->rec);
    free(l->ring);
    free(l);
    legs[id] = NULL;
    free_ids[n_free++] = id;
}

/* The recording bytes buffered for a leg (2-byte length + plain RTP per packet, the file format of
 * wacall.media.recording): copied to out (rec_len bytes; the caller sizes it), then emptied. */
int32_t fp_leg_take_recording(int32_t id, uint8_t *out, int64_t *count) {
    struct fp_leg *l = fp_leg(id);
    if (!l || !l->rec) { *count = 0; return 0; }
    int32_t n = l->rec_len;
    memcpy(out, l->rec, n);
    *count = l->rec_count;
    l->rec_len = 0;
    l->rec_count = 0;
    l->rec_flagged = 0;
    return n;
}

/* The last packets heard, oldest first, each as 4-byte length + bytes; returns bytes written. */
int32_t fp_leg_recent(int32_t id, uint8_t *out) {
    struct fp_leg *l = fp_leg(id);
    if (!l || !l->ring) return 0;
    int32_t pos = 0;
    for (int i = 0; i < l->ring_n; i++) {
        int slot = (l->ring_pos - l->ring_n + i + FP_RING) % FP_RING;
        int32_t n = l->ring_len[slot];
        memcpy(out + pos, &n, 4);
        memcpy(out + pos + 4, l->ring + slot * FP_RING_SLOT, n);
        pos += 4 + n;
    }
    return pos;
}

/* -- receive ---------------------------------------------------------------------------------------- */
static void init_seq(struct fp_leg *l, int64_t seq) {
    l->base_seq = seq;
    l->max_seq = seq;
    l->bad_seq = SEQ_MOD + 1;
    l->cycles = 0;
    l->received = 0;
    l->received_prior = 0;
    l->expected_prior = 0;
}

/* RFC 3550 A.1, as wacall.media.rtp.SourceStats.update_seq */
static int update_seq(struct fp_leg *l, int64_t seq) {
    if (!l->started) {
        l->started = 1;
        init_seq(l, seq);
        l->max_seq = (seq - 1) & 0xFFFF;
    }
    int64_t udelta = (seq - l->max_seq) & 0xFFFF;
    if (l->probation) {
        if (seq == ((l->max_seq + 1) & 0xFFFF)) {
            l->probation -= 1;
            l->max_seq = seq;
            if (l->probation == 0) { init_seq(l, seq); l->received += 1; return 1; }
        } else {
            l->probation = l->min_sequential - 1;
            l->max_seq = seq;
        }
        return 0;
    }
    if (udelta == 0) {
        l->duplicates_or_late += 1;
    } else if (udelta < MAX_DROPOUT) {
        if (seq < l->max_seq) l->cycles += SEQ_MOD;
        l->max_seq = seq;
    } else if (udelta <= SEQ_MOD - MAX_MISORDER) {
        if (seq == l->bad_seq) { init_seq(l, seq); l->restarts += 1; }
        else { l->bad_seq = (seq + 1) & 0xFFFF; return 0; }
    } else {
        l->duplicates_or_late += 1;
    }
    l->received += 1;
    return 1;
}

/* RFC 3550 A.8, as SourceStats.update_jitter */
static void update_jitter(struct fp_leg *l, int64_t timestamp, double arrival) {
    if (!l->jitter_started) {
        l->jitter_started = 1;
    } else {
        int64_t dts = (timestamp - l->last_ts) & 0xFFFFFFFFLL;
        if (dts >= 0x80000000LL) dts -= 0x100000000LL;
        double d = (arrival - l->last_arrival) * l->clock_rate - (double)dts;
        l->jitter += (fabs(d) - l->jitter) / 16.0;
    }
    l->last_arrival = arrival;
    l->last_ts = timestamp;
}

static struct fp_leg *lookup(int32_t family, const uint8_t *addr, int32_t port, int32_t *id) {
    for (int32_t o = buckets[key_hash(family, addr, port)]; o >= 0; o = legs[o]->next)
        if (same_key(legs[o], family, addr, port)) { *id = o; return legs[o]; }
    return NULL;
}

static void source_of(const struct sockaddr_storage *sa, int32_t *family, uint8_t *addr, int32_t *port) {
    memset(addr, 0, 16);
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        *family = AF_INET6;
        memcpy(addr, &a->sin6_addr, 16);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        *family = AF_INET;
        memcpy(addr, &a->sin_addr, 4);
        *port = ntohs(a->sin_port);
    }
}

/* Handle one datagram; returns the item kind to hand to Python, or -1 when C consumed it. The
 * packet may be rewritten in place (unprotected), *len updated. */
static int handle(struct fp_leg *l, uint8_t *buf, int *len, double now, int *item_is_rec) {
    int n = *len;
    *item_is_rec = 0;
    if (n < 12 || buf[0] < 128 || buf[0] > 191 || (buf[1] >= 192 && buf[1] <= 223)) return FP_RAW;
    int plain_len = n;
    if (p_unprotect(l->rx, buf, &plain_len) != 0) return FP_RAW;   /* Python repeats it and says why */
    l->datagrams += 1;
    l->octets_in += n;
    if (!l->media_flag) { l->media_flag = 1; *item_is_rec |= 2; }   /* Python notes "media seen" now */
    *len = plain_len;
    int pt = buf[1] & 0x7F;
    uint32_t ssrc = ((uint32_t)buf[8] << 24) | ((uint32_t)buf[9] << 16) | ((uint32_t)buf[10] << 8) | buf[11];
    if (plain_len < 12 || (buf[0] >> 6) != 2 || ssrc != l->ssrc || (pt != l->codec_pt && pt != l->te_pt)
            || plain_len > FP_RING_SLOT) {
        l->rx_on = 0;              /* a surprise: Python carries this leg's receive from here (fp_recv unlinks) */
        return FP_DEMOTED;
    }
    int64_t seq = ((int64_t)buf[2] << 8) | buf[3];
    int64_t ts = ((int64_t)buf[4] << 24) | ((int64_t)buf[5] << 16) | ((int64_t)buf[6] << 8) | buf[7];
    l->packets += 1;
    l->last_packet_at = now;
    int valid = update_seq(l, seq);
    l->octets += plain_len - 12;
    if (valid && pt != l->te_pt) update_jitter(l, ts, now);
    if (pt == l->te_pt) return FP_DTMF;
    if (l->ring) {
        memcpy(l->ring + l->ring_pos * FP_RING_SLOT, buf, plain_len);
        l->ring_len[l->ring_pos] = plain_len;
        l->ring_pos = (l->ring_pos + 1) % FP_RING;
        if (l->ring_n < FP_RING) l->ring_n++;
    }
    if (l->rec_left > 0) {
        if (l->rec_len + 2 + plain_len > l->rec_cap) {
            uint8_t *grown = realloc(l->rec, l->rec_cap * 2);
            if (!grown) return -1;
            l->rec = grown;
            l->rec_cap *= 2;
        }
        l->rec[l->rec_len] = (uint8_t)(plain_len >> 8);
        l->rec[l->rec_len + 1] = (uint8_t)plain_len;
        memcpy(l->rec + l->rec_len + 2, buf, plain_len);
        l->rec_len += 2 + plain_len;
        l->rec_count += 1;
        l->rec_left -= 1;
        if (l->rec_len >= FP_REC_CHUNK && !l->rec_flagged) { l->rec_flagged = 1; *item_is_rec |= 1; }
    }
    return -1;
}

/* Receive what is waiting on fd (recvmmsg, up to max_datagrams). Items for Python go to items[] (at
 * most max_items) with their bytes in arena. Returns the number of items; *more is set when the
 * socket may still hold datagrams (a limit was reached). */
int fp_recv(int fd, struct fp_item *items, int max_items, uint8_t *arena, int arena_cap, int max_datagrams,
            int *more, int64_t *consumed) {
    static uint8_t bufs[FP_BATCH][FP_BUF] __attribute__((aligned(16)));
    static struct sockaddr_storage names[FP_BATCH];
    static struct iovec iov[FP_BATCH];
    static struct mmsghdr msgs[FP_BATCH];
    int n_items = 0, used = 0, total = 0;
    *more = 0;
    while (total < max_datagrams) {
        if (n_items + 3 * FP_BATCH > max_items || used + FP_BATCH * FP_BUF > arena_cap) { *more = 1; break; }
        for (int i = 0; i < FP_BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = FP_BUF - 256;      /* room for libsrtp to work in place */
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof names[i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, msgs, FP_BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0) break;
        total += got;
        double now = now_mono();
        for (int i = 0; i < got; i++) {
            uint8_t *buf = bufs[i];
            int len = (int)msgs[i].msg_len;
            int32_t family, port, id = -1;
            uint8_t addr[16];
            source_of(&names[i], &family, addr, &port);
            struct fp_leg *l = lookup(family, addr, port, &id);
            int kind = FP_RAW, rec = 0;
            if (l && l->rx_on) {
                kind = handle(l, buf, &len, now, &rec);
                if (kind == FP_DEMOTED) unlink_key(id);
            } else {
                id = -1;
            }
            for (int bit = 1; bit <= 2; bit <<= 1) {
                if (!(rec & bit)) continue;
                struct fp_item *it = &items[n_items++];
                memset(it, 0, sizeof *it);
                it->kind = bit == 1 ? FP_REC : FP_MEDIA;
                it->leg = id;
            }
            if (kind < 0) { (*consumed)++; continue; }
            struct fp_item *it = &items[n_items++];
            it->kind = kind;
            it->leg = kind == FP_RAW ? -1 : id;
            it->off = used;
            it->len = len;
            it->family = family;
            it->port = port;
            memcpy(it->addr, addr, 16);
            it->arrival = now;
            memcpy(arena + used, buf, len);
            used += len;
        }
        if (got < FP_BATCH) break;
    }
    if (total >= max_datagrams) *more = 1;
    return n_items;
}

/* -- send ------------------------------------------------------------------------------------------- */
static int flush_batch(int fd, struct mmsghdr *msgs, int n, int64_t *errors) {
    int sent = 0;
    while (sent < n) {
        int r = sendmmsg(fd, msgs + sent, n - sent, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            *errors += n - sent;          /* a full send buffer drops the rest, as UDP does */
            break;
        }
        if (r == 0) break;
        sent += r;
    }
    return sent;
}

#define FP_SEND_BATCH 256
#define FP_FDS 8

/* One 20 ms interval of the user's microphone for every fast sending leg of the group. Returns packets sent. */
int64_t fp_send(int32_t group, int64_t *errors) {
    static uint8_t slots[FP_FDS][FP_SEND_BATCH][FP_SEND_SLOT] __attribute__((aligned(16)));
    static struct sockaddr_storage names[FP_FDS][FP_SEND_BATCH];
    static struct iovec iov[FP_FDS][FP_SEND_BATCH];
    static struct mmsghdr msgs[FP_FDS][FP_SEND_BATCH];
    int fds[FP_FDS], count[FP_FDS], n_fds = 0;
    int64_t total = 0;
    for (int32_t id = 0; id < n_legs; id++) {
        struct fp_leg *l = legs[id];
        if (!l || !l->tx_on || l->group != group || l->family < 0 || l->frames < 0 || l->frames >= n_sets) continue;
        int b = 0;
        while (b < n_fds && fds[b] != l->fd) b++;
        if (b == n_fds) {
            if (n_fds == FP_FDS) continue;
            fds[n_fds] = l->fd;
            count[n_fds++] = 0;
        }
        if (count[b] == FP_SEND_BATCH) { total += flush_batch(fds[b], msgs[b], count[b], errors); count[b] = 0; }
        struct fp_frames *s = &sets[l->frames];
        int f = (int)(l->frame_index % s->n);
        int plen = s->len[f];
        uint8_t *buf = slots[b][count[b]];
        uint32_t seq = (uint32_t)l->seq, ts = (uint32_t)l->ts, ssrc = l->tx_ssrc;
        buf[0] = 0x80;
        buf[1] = (uint8_t)(l->send_pt & 0x7F);
        buf[2] = (uint8_t)(seq >> 8); buf[3] = (uint8_t)seq;
        buf[4] = (uint8_t)(ts >> 24); buf[5] = (uint8_t)(ts >> 16); buf[6] = (uint8_t)(ts >> 8); buf[7] = (uint8_t)ts;
        buf[8] = (uint8_t)(ssrc >> 24); buf[9] = (uint8_t)(ssrc >> 16); buf[10] = (uint8_t)(ssrc >> 8); buf[11] = (uint8_t)ssrc;
        memcpy(buf + 12, s->data + s->off[f], plen);
        int len = 12 + plen;
        l->frame_index += 1;
        l->seq = (seq + 1) & 0xFFFF;
        l->packet_count += 1;
        l->octet_count += plen;
        l->packets_sent += 1;
        l->ts = (l->ts + l->spp) & 0xFFFFFFFFLL;
        if (p_protect(l->tx, buf, &len) != 0) { l->send_errors++; continue; }
        struct sockaddr_storage *name = &names[b][count[b]];
        memset(name, 0, sizeof *name);
        socklen_t namelen;
        if (l->family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)name;
            a->sin6_family = AF_INET6;
            memcpy(&a->sin6_addr, l->addr, 16);
            a->sin6_port = htons((uint16_t)l->port);
            namelen = sizeof *a;
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)name;
            a->sin_family = AF_INET;
            memcpy(&a->sin_addr, l->addr, 4);
            a->sin_port = htons((uint16_t)l->port);
            namelen = sizeof *a;
        }
        iov[b][count[b]].iov_base = buf;
        iov[b][count[b]].iov_len = len;
        memset(&msgs[b][count[b]], 0, sizeof msgs[b][count[b]]);
        msgs[b][count[b]].msg_hdr.msg_name = name;
        msgs[b][count[b]].msg_hdr.msg_namelen = namelen;
        msgs[b][count[b]].msg_hdr.msg_iov = &iov[b][count[b]];
        msgs[b][count[b]].msg_hdr.msg_iovlen = 1;
        count[b]++;
    }
    for (int b = 0; b < n_fds; b++)
        if (count[b]) total += flush_batch(fds[b], msgs[b], count[b], errors);
    return total;
}
