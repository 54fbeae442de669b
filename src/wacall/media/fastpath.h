/* The compiled media path's interface: read by the C compiler (fastpath.c includes it) and by cffi's
 * cdef (fastpath_build.py), so it holds only what cdef parses: no #include, no macros. */

struct fp_leg {
    int32_t rx_on, tx_on;
    int32_t group;                 /* the engine (one process may run several): fp_send(group) */
    int32_t family, port;          /* the remote (latched) address: key of the receive table */
    uint8_t addr[16];
    int32_t fd;                    /* the shared socket media goes out on */
    int32_t next, linked;          /* hash chain; linked: datagrams from addr are looked up here */
    void *rx, *tx;                 /* srtp_t of each direction */
    /* receive */
    uint32_t ssrc;
    int32_t codec_pt, te_pt;       /* te_pt: RFC 4733 events count for loss, not jitter */
    double clock_rate;
    int64_t datagrams, octets_in, packets;   /* leg counters, ReceiveStats.packets: only grow */
    int32_t media_flag;                      /* set at the first media since Python last cleared it */
    double last_packet_at;                   /* ReceiveStats and SourceStats */
    int64_t max_seq, cycles, base_seq, bad_seq, probation, received, expected_prior, received_prior;
    int32_t min_sequential, started;
    double jitter;
    int32_t jitter_started;
    double last_arrival;
    int64_t last_ts, octets, duplicates_or_late, restarts;
    /* recording and level */
    int64_t rec_left, rec_count;
    int32_t rec_len, rec_cap, rec_flagged, ring_pos, ring_n;
    uint8_t *rec;
    uint8_t *ring;
    int32_t ring_len[15];       /* FP_RING */
    /* send */
    int32_t frames, send_pt;
    uint32_t tx_ssrc;
    int64_t seq, ts, spp, packet_count, octet_count, frame_index, packets_sent, send_errors;
};

struct fp_item {
    int32_t kind, leg, off, len, family, port;
    uint8_t addr[16];
    double arrival;
};

void fp_init(void *protect, void *unprotect);
void fp_set_clock(double t);
int fp_frames_add(const uint8_t *data, const int32_t *lengths, int32_t n);
struct fp_leg *fp_leg(int32_t id);
int32_t fp_leg_new(void);
int fp_leg_bind(int32_t id, int32_t family, const uint8_t *addr, int32_t port, int32_t fd);
int fp_leg_recording(int32_t id, int64_t left);
int fp_leg_level(int32_t id);
void fp_leg_free(int32_t id);
int32_t fp_leg_take_recording(int32_t id, uint8_t *out, int64_t *count);
int32_t fp_leg_recent(int32_t id, uint8_t *out);
int fp_recv(int fd, struct fp_item *items, int max_items, uint8_t *arena, int arena_cap, int max_datagrams,
            int *more, int64_t *consumed);
int64_t fp_send(int32_t group, int64_t *errors);
