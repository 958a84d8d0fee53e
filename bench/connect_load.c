/* One load process of bench/workers_scale.py: MQTT 3.1.1 connects back to back, as cheap for the CPU as a
 * client can be (a blocking socket, a pre-built CONNECT, no allocation per connect), so that on a small
 * machine the clients leave the cores to the gateway being measured.
 *
 *   connect_load PORT INDEX START WINDOW_START WINDOW_END
 *
 * Times are CLOCK_MONOTONIC seconds (Python's time.monotonic() on Linux). From START until WINDOW_END: TCP
 * connect (from 127.0.0.2..9 in turn, IP_BIND_ADDRESS_NO_PORT: TIME_WAIT never runs out of ports), CONNECT
 * (clean session, user "bench" / password "bench", client id "cl<INDEX>-<9 digits>"), CONNACK (must be
 * 20 02 00 00), DISCONNECT, close. Prints "counted total failed first_error": connects completed inside
 * [WINDOW_START, WINDOW_END), all connects, failures (it gives up after 50), the first failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define MAX_FAILURES 50

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_until(double when) {
    for (;;) {
        double d = when - now();
        if (d <= 0) return;
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static size_t put_string(unsigned char *out, const char *s) {
    size_t n = strlen(s);
    out[0] = (unsigned char)(n >> 8);
    out[1] = (unsigned char)(n & 0xff);
    memcpy(out + 2, s, n);
    return n + 2;
}

static int send_all(int s, const unsigned char *buf, size_t len) {
    while (len) {
        ssize_t k = send(s, buf, len, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        buf += k;
        len -= (size_t)k;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: connect_load PORT INDEX START WINDOW_START WINDOW_END\n");
        return 2;
    }
    int port = atoi(argv[1]), idx = atoi(argv[2]);
    double start = atof(argv[3]), win_start = atof(argv[4]), win_end = atof(argv[5]);

    char client_id[32];
    snprintf(client_id, sizeof client_id, "cl%d-000000000", idx);
    unsigned char body[128], packet[132];
    size_t n = 0;
    n += put_string(body + n, "MQTT");
    body[n++] = 4;    /* MQTT 3.1.1 */
    body[n++] = 0xC2; /* username, password, clean session */
    body[n++] = 0;    /* keep-alive 0 */
    body[n++] = 0;
    size_t id_at = n + 2 + strlen(client_id) - 9; /* the 9 digits, patched per connect */
    n += put_string(body + n, client_id);
    n += put_string(body + n, "bench");
    n += put_string(body + n, "bench");
    packet[0] = 0x10;
    packet[1] = (unsigned char)n; /* < 128: one length byte */
    memcpy(packet + 2, body, n);
    size_t packet_len = n + 2;
    id_at += 2;
    static const unsigned char disconnect[2] = {0xE0, 0x00};
    static const unsigned char connack_ok[4] = {0x20, 0x02, 0x00, 0x00};

    struct sockaddr_in dst = {0};
    dst.sin_family = AF_INET;
    dst.sin_port = htons((unsigned short)port);
    dst.sin_addr.s_addr = htonl(0x7F000001);
    long total = 0, counted = 0, failed = 0;
    char first_error[160] = "";
    struct timeval timeout = {10, 0};
    sleep_until(start);
    for (;;) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1, ok = 0;
        const char *what = "socket";
        if (s >= 0) {
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
            struct sockaddr_in src = {0};
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl(0x7F000002 + (uint32_t)((idx + total) & 7));
            char digits[16];
            snprintf(digits, sizeof digits, "%09ld", total % 1000000000L);
            memcpy(packet + id_at, digits, 9);
            unsigned char reply[4];
            size_t got = 0;
            what = "bind";
            if (bind(s, (struct sockaddr *)&src, sizeof src) == 0) {
                what = "connect";
                if (connect(s, (struct sockaddr *)&dst, sizeof dst) == 0) {
                    what = "send CONNECT";
                    if (send_all(s, packet, packet_len) == 0) {
                        what = "CONNACK";
                        while (got < 4) {
                            ssize_t k = recv(s, reply + got, 4 - got, 0);
                            if (k <= 0) break;
                            got += (size_t)k;
                        }
                        if (got == 4 && memcmp(reply, connack_ok, 4) == 0) {
                            what = "send DISCONNECT";
                            ok = send_all(s, disconnect, 2) == 0;
                        }
                    }
                }
            }
            close(s);
        }
        if (!ok) {
            failed++;
            if (!first_error[0])
                snprintf(first_error, sizeof first_error, "%s: %s", what, errno ? strerror(errno) : "bad reply");
        }
        total++;
        double t = now();
        if (t >= win_start && t < win_end) counted++;
        if (t >= win_end || failed > MAX_FAILURES) break;
    }
    printf("%ld %ld %ld %s\n", counted, total, failed, first_error);
    return 0;
}
