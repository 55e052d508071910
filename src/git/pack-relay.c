/*
 * vcs-worker's pack relay (src/git/relay.ts, docs/git.md "How a pack crosses the worker"): runs
 * `git upload-pack` and moves its answer to the client's socket with splice(2), so the pack
 * never passes through the worker's event loop nor through user space. Profiled on an 81 MB
 * clone, the copy through Node cost the clone ~100 ms on 2 cores; git writing into the socket
 * itself (the HTTP floor) and this relay cost none of it.
 *
 *   pack-relay IDLE_MS HEAD -- CMD ARGS...
 *     fd 0  CMD's stdin (inherited by CMD; closed here)
 *     fd 1  the client's socket (shared with the worker, which wrote nothing on it yet)
 *     fd 2  CMD's stderr (inherited)
 *     fd 3  the report to the worker, one line once done:
 *           "v=1 sent=<bytes after HEAD> head=<0|1> boundary=<0|1> sideband=<0|1> idle=<0|1> gone=<0|1>"
 *           " exec=<errno> closed=<0|1> slow=<0|1>" (key=value pairs, read in any order by the worker,
 *           which refuses another v: src/process/relay.ts RELAY_PROTOCOL)
 *           (exec: why CMD could not be started, 0 when it was; closed: the answer was whole and
 *           CMD succeeded, so the relay ended the connection itself: the client is done without
 *           waiting for the worker to hear of the exit)
 *
 * HEAD (the status line and headers, `Connection: close`, no length: the body ends with the
 * connection) is written only when CMD's first byte is there, so a CMD that fails before it
 * leaves the socket untouched and the worker answers a one-line HTTP error itself. The relay
 * follows the pkt-line framing as it goes (reads each 4-byte header and the band byte, splices
 * the payload): at the end it tells whether the answer stopped between two packets, where the
 * worker can still tell the client CMD failed inside the protocol. Output that is not pkt-lines
 * (a v0 pack without side-band) is spliced as it comes.
 *
 * No progress either way for IDLE_MS (CMD silent, or the client not reading): reported with
 * idle=1, then the process group (this process and CMD's) is sent SIGTERM. The exit status is
 * CMD's: its code, or its signal raised again here. No library beyond libc.
 *
 *   pack-relay IDLE_MS[,MIN_RATE,WINDOW_MS] HEAD --file PATH INO OFFSET LENGTH
 *     The same for a file (a Git LFS object, a clone bundle: src/http/send-file.ts): HEAD (with
 *     its Content-Length), then LENGTH bytes of PATH from OFFSET, read and sent 32 KiB at a time,
 *     uncorked, as nginx serves a static file by default (sendfile off, output_buffers 32k, no
 *     MSG_MORE nor TCP_CORK): on loopback, where HAProxy hands the worker its connections,
 *     sendfile(2) measured 5-15% slower for the same CPU, and corked blocks 15-20% slower
 *     (bench:lfs). PATH must still be the file the worker judged (inode INO, at least
 *     OFFSET + LENGTH bytes): else nothing is written and the report says exec=ESTALE (exec=
 *     open's errno when it cannot be opened), and the worker answers itself. Exit 0 once every
 *     byte went out and the connection was ended, else 1. With MIN_RATE (bytes per second) and
 *     WINDOW_MS, a client that takes fewer than MIN_RATE x WINDOW_MS / 1000 bytes in a window is
 *     let go as an idle one is, reported with slow=1 (a reader of 4 KiB every 2 s never idles,
 *     and would hold its transfer slot for as long as the file lasts).
 *
 *   pack-relay --wait
 *     The --file mode, started ahead of its download by the spawn helper (helper-main.ts), so a
 *     download does not wait for a fork and exec (~7 ms from Node, a tenth of a 200 MB transfer
 *     on loopback). fds 2 and 3 are pipes the helper reads (and passes on to the worker). It
 *     waits for the client's connection over the IPC channel Node opened for it (fd
 *     NODE_CHANNEL_FD: newline-ended JSON messages, a handle in SCM_RIGHTS on its message,
 *     acknowledged with {"cmd":"NODE_HANDLE_ACK"}: the contract as src/process/node-internals.ts
 *     writes it down), which becomes fd 1, says so on the channel
 *     ({"took":true,"v":1}, v being RELAY_PROTOCOL), then waits for the arguments that follow `pack-relay` in the --file mode,
 *     each ended by a NUL, on stdin. Then as --file.
 *     The channel or stdin closed first (the helper is gone): exit 1, having written nothing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define RELAY_PROTOCOL 1 /* the report line and the --wait hand-over (src/process/relay.ts RELAY_PROTOCOL) */
#define STR(x) #x
#define XSTR(x) STR(x)
#define MAX_PKT 65520
#define CHUNK (64 * 1024) /* one read of CMD's output at most */
#define SMALL 16384 /* a packet's rest up to this size is read with the next block, past it spliced */
#define PIPE_SIZE (1024 * 1024)

static int in_fd = -1;     /* the read end of CMD's stdout (blocking: a read waits for CMD) */
static volatile long long sent; /* bytes written to the client after HEAD (read by the clock's tick) */
static int head_sent, framed = 1, boundary = 1, sideband, gone, exec_errno, closed;
static const char *head;
static pid_t cmd_pid;

/*
 * Idleness without a clock read per call: a timer ticks every quarter of IDLE_MS and compares
 * the progress count with the one it saw last. Its signal also interrupts a read or splice that
 * waits (no SA_RESTART), so a wait never outlives the verdict.
 */
static volatile sig_atomic_t idle;
static volatile unsigned long progress;
static unsigned long seen;
static int idle_ms, still_ms, tick_ms;
/* the minimum rate (--file): bytes per second, the window it is measured over, and where the window started */
static long long min_rate, window_start;
static int window_ms, window_elapsed;
static volatile sig_atomic_t slow;

static void tick(int sig) {
  (void)sig;
  if (min_rate > 0 && (window_elapsed += tick_ms) >= window_ms) {
    if (sent - window_start < min_rate * window_elapsed / 1000) slow = idle = 1;
    window_start = sent;
    window_elapsed = 0;
  }
  if (progress != seen) {
    seen = progress;
    still_ms = 0;
  } else if ((still_ms += tick_ms) >= idle_ms) {
    idle = 1;
  }
}

static void report(void) {
  char line[184];
  int n = snprintf(line, sizeof line, "v=%d sent=%lld head=%d boundary=%d sideband=%d idle=%d gone=%d exec=%d closed=%d slow=%d\n",
                   RELAY_PROTOCOL, sent, head_sent, framed && boundary, sideband, (int)idle, gone, exec_errno, closed, (int)slow);
  if (write(3, line, (size_t)n) < 0) { /* the worker is gone: nobody to tell */ }
  close(3);
}

/* No progress for IDLE_MS: tell the worker, then end this group (CMD, what it forked, and us). */
static void give_up_idle(void) {
  report();
  if (cmd_pid == 0) _exit(124); /* --file: no CMD */
  if (getpgrp() != getpid()) {
    kill(cmd_pid, SIGTERM); /* not a group of our own: CMD alone */
    _exit(124);
  }
  kill(0, SIGTERM);
  _exit(124); /* not reached: SIGTERM's default ends this process */
}

/* Waits until the client's socket takes more (it is non-blocking: the worker shares it). */
static void wait_writable(void) {
  struct pollfd p = { .fd = 1, .events = POLLOUT };
  poll(&p, 1, -1); /* EINTR at the next tick; errors show in the call that follows */
  if (idle) give_up_idle();
}

/* Sends `n` bytes to the client (HEAD first, once). 0, or -1 when the client is gone. */
static int send_all(const char *p, size_t n, int more) {
  if (!head_sent) {
    head_sent = 1;
    if (send_all(head, strlen(head), 1) < 0) return -1;
    sent = 0;
  }
  while (n > 0) {
    ssize_t w = send(1, p, n, MSG_NOSIGNAL | MSG_DONTWAIT | (more ? MSG_MORE : 0));
    if (w < 0) {
      if (errno == EINTR) { if (idle) give_up_idle(); continue; }
      if (errno == EAGAIN || errno == EWOULDBLOCK) { wait_writable(); continue; }
      gone = 1;
      return -1;
    }
    p += w;
    n -= (size_t)w;
    sent += w;
    progress++;
  }
  return 0;
}

/* Splices `n` bytes (or, n < 0, everything up to the end) of CMD's output to the client: 0 once
 * done, 1 when the output ended first, -1 when the client is gone. */
static int splice_out(long long n) {
  while (n != 0) {
    size_t want = n < 0 || n > PIPE_SIZE ? PIPE_SIZE : (size_t)n;
    /* waits for CMD (the pipe blocks); a full socket answers EAGAIN (it does not) */
    ssize_t s = splice(in_fd, NULL, 1, NULL, want, SPLICE_F_MOVE);
    if (s > 0) {
      sent += s;
      if (n > 0) n -= s;
      progress++;
      continue;
    }
    if (s == 0) return n < 0 ? 0 : 1; /* CMD's output ended */
    if (errno == EINTR) { if (idle) give_up_idle(); continue; }
    if (errno == EAGAIN) { wait_writable(); continue; }
    gone = 1;
    return -1;
  }
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* One read of CMD's output: whatever is there, up to `n` bytes (waiting for some). 0 at its end. */
static size_t read_some(char *p, size_t n) {
  for (;;) {
    ssize_t r = read(in_fd, p, n);
    if (r > 0) {
      progress++;
      return (size_t)r;
    }
    if (r == 0) return 0;
    if (errno == EINTR) { if (idle) give_up_idle(); continue; }
    return 0;
  }
}

/*
 * The relay. CMD's output is read in blocks of up to CHUNK (whatever the pipe holds), its
 * packets parsed here and the whole ones sent with one send; the rest of a long packet whose
 * header is in the block (git's 64 KiB side-band packets) is spliced, never entering user space.
 * Output that is not pkt-lines (a v0 pack without side-band) is spliced as it comes.
 */
static void relay(void) {
  static char buf[CHUNK];
  size_t have = 0; /* bytes in buf */
  size_t whole = 0; /* of them, whole packets (parsed) */
  for (;;) {
    size_t r = read_some(buf + have, CHUNK - have);
    if (r == 0) { /* the end: what is left is a packet cut short */
      boundary = have == whole;
      if (have) send_all(buf, have, 0);
      return;
    }
    have += r;
    long long rest = 0; /* bytes of the packet at `whole` not in buf yet */
    while (have - whole >= 4) {
      int len = 0;
      for (int i = 0; i < 4 && len >= 0; i++) {
        int v = hexval(buf[whole + i]);
        len = v < 0 ? -1 : len * 16 + v;
      }
      if (len < 0 || len == 3 || len > MAX_PKT) {
        framed = 0; /* not pkt-lines (a raw pack): everything as it comes */
        if (send_all(buf, have, 1) == 0) splice_out(-1);
        return;
      }
      size_t size = len < 4 ? 4 : (size_t)len;
      if (size > 4 && have - whole > 4 && (buf[whole + 4] == 1 || buf[whole + 4] == 2)) sideband = 1;
      if (have - whole < size) {
        rest = (long long)(size - (have - whole));
        break;
      }
      whole += size;
    }
    if (rest > SMALL && have - whole > 4) {
      /* a long packet: what of it is here goes with the whole ones, its rest is spliced */
      if (send_all(buf, have, 1) < 0) return;
      have = whole = 0;
      boundary = 0;
      if (splice_out(rest) != 0) return; /* gone, or CMD ended inside the packet */
      boundary = 1;
      continue;
    }
    if (whole > 0) {
      if (send_all(buf, whole, 0) < 0) return;
      memmove(buf, buf + whole, have - whole);
      have -= whole;
      whole = 0;
    }
  }
}

/* The idle clock: a tick every quarter of IDLE_MS (see tick). */
static void start_clock(void) {
  tick_ms = idle_ms / 4 > 10 ? idle_ms / 4 : 10;
  if (min_rate > 0 && window_ms / 4 < tick_ms) tick_ms = window_ms / 4 > 10 ? window_ms / 4 : 10;
  struct sigaction sa = { .sa_handler = tick }; /* no SA_RESTART: a waiting call returns EINTR */
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval every = { { tick_ms / 1000, (tick_ms % 1000) * 1000 }, { tick_ms / 1000, (tick_ms % 1000) * 1000 } };
  setitimer(ITIMER_REAL, &every, NULL);
}

static void stop_clock(void) {
  struct itimerval off = { { 0, 0 }, { 0, 0 } };
  setitimer(ITIMER_REAL, &off, NULL);
}

/* --file: HEAD, then the file's bytes; the report and the exit as described on top. */
static int relay_file(const char *path, const char *ino, const char *offset, const char *length) {
  framed = 0; /* no packets: never "at a boundary" */
  signal(SIGPIPE, SIG_IGN);
  fcntl(3, F_SETFD, FD_CLOEXEC);
  off_t off = (off_t)strtoll(offset, NULL, 10);
  long long left = strtoll(length, NULL, 10);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0) exec_errno = errno;
  else if (fstat(fd, &st) < 0) exec_errno = errno;
  else if (st.st_ino != (ino_t)strtoull(ino, NULL, 10) || off < 0 || left < 0 || st.st_size < off + left) exec_errno = ESTALE;
  if (exec_errno) {
    report();
    return 1;
  }
  start_clock();
  if (send_all("", 0, left > 0) == 0) {
    static char block[32 << 10];
    while (left > 0) {
      ssize_t r = pread(fd, block, left < (long long)sizeof block ? (size_t)left : sizeof block, off);
      if (r < 0 && errno == EINTR) { if (idle) give_up_idle(); continue; }
      if (r <= 0) break; /* the file is shorter than it was, or unreadable: a cut answer */
      off += r;
      left -= r;
      /* no MSG_MORE here: corked 32 KiB sends measured 15-20% slower on loopback (the
       * receiver waits for full segments); HEAD alone goes out corked, with the first block */
      if (send_all(block, (size_t)r, 0) < 0) break;
    }
  }
  stop_clock();
  if (left == 0 && !gone) {
    slow = 0; /* a window that ended as the last bytes went out: the file is whole all the same */
    closed = shutdown(1, SHUT_WR) == 0;
  }
  report();
  return left == 0 && !gone ? 0 : 1;
}

/* --wait: the client's connection from the channel, then the arguments from stdin, into argv
 * (its 8 slots); 0, or -1 when the helper went away first. */
static int wait_for_work(char **argv) {
  const char *ch = getenv("NODE_CHANNEL_FD");
  if (!ch) return -1;
  int c = atoi(ch), client = -1, owed = 0;
  char buf[4096];
  signal(SIGPIPE, SIG_IGN); /* the helper gone: a failed write, not a death */
  while (client < 0 || owed) {
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * 4)]; } ctrl;
    struct iovec iov = { buf, sizeof buf };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctrl, .msg_controllen = sizeof ctrl };
    ssize_t n = recvmsg(c, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    for (struct cmsghdr *m = CMSG_FIRSTHDR(&mh); m; m = CMSG_NXTHDR(&mh, m)) {
      if (m->cmsg_level != SOL_SOCKET || m->cmsg_type != SCM_RIGHTS) continue;
      int *in = (int *)CMSG_DATA(m);
      for (size_t i = 0; i < (m->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
        if (client < 0) client = in[i];
        else close(in[i]);
        owed++;
      }
    }
    /* a handle's message ends with this read's newline: acknowledge it, or Node sends no more */
    if (owed && memchr(buf, '\n', (size_t)n)) {
      static const char ack[] = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n";
      for (; owed > 0; owed--)
        if (write(c, ack, sizeof ack - 1) < 0) return -1;
    }
  }
  /* the helper writes the arguments only once it reads this: a spare that died before taking
   * the connection is told apart from one that took it, and the request goes elsewhere */
  static const char took[] = "{\"took\":true,\"v\":" XSTR(RELAY_PROTOCOL) "}\n";
  if (write(c, took, sizeof took - 1) < 0) return -1;
  static char args[65536];
  size_t len = 0;
  int nuls = 0;
  while (nuls < 7) {
    if (len == sizeof args) return -1;
    ssize_t n = read(0, args + len, sizeof args - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    for (ssize_t i = 0; i < n; i++) nuls += args[len + (size_t)i] == '\0';
    len += (size_t)n;
  }
  char *p = args;
  for (int i = 1; i < 8; i++, p += strlen(p) + 1) argv[i] = p;
  if (dup2(client, 1) < 0) return -1;
  close(client);
  close(c);
  close(0);
  return 0;
}

int main(int argc, char **argv) {
  char *waited[9] = { argv[0] };
  if (argc == 2 && strcmp(argv[1], "--wait") == 0) {
    if (wait_for_work(waited) < 0) return 1;
    if (strcmp(waited[3], "--file") != 0) return 2; /* a file only: no CMD comes this way */
    argv = waited;
    argc = 8;
  }
  if (argc == 8 && strcmp(argv[3], "--file") == 0) {
    char *rest;
    idle_ms = (int)strtol(argv[1], &rest, 10);
    if (idle_ms < 1) idle_ms = 1;
    if (*rest == ',') {
      min_rate = strtoll(rest + 1, &rest, 10);
      window_ms = *rest == ',' ? (int)strtol(rest + 1, NULL, 10) : 0;
      if (min_rate < 0 || window_ms < 1) min_rate = 0;
    }
    head = argv[2];
    return relay_file(argv[4], argv[5], argv[6], argv[7]);
  }
  if (argc < 5 || strcmp(argv[3], "--") != 0) {
    fprintf(stderr, "usage: pack-relay IDLE_MS HEAD -- CMD ARGS...\n       pack-relay IDLE_MS[,MIN_RATE,WINDOW_MS] HEAD --file PATH INO OFFSET LENGTH\n       pack-relay --wait\n");
    return 2;
  }
  idle_ms = atoi(argv[1]);
  if (idle_ms < 1) idle_ms = 1;
  head = argv[2];
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    perror("pack-relay: pipe");
    return 1;
  }
  fcntl(p[0], F_SETPIPE_SZ, PIPE_SIZE); /* fewer wake-ups; the default 64 KiB if refused */
  fcntl(3, F_SETFD, FD_CLOEXEC);
  int ep[2]; /* the exec's errno, when it fails; closed by a successful exec */
  if (pipe2(ep, O_CLOEXEC) < 0) {
    perror("pack-relay: pipe");
    return 1;
  }
  cmd_pid = fork();
  if (cmd_pid < 0) {
    perror("pack-relay: fork");
    return 1;
  }
  if (cmd_pid == 0) {
    if (dup2(p[1], 1) < 0) _exit(127);
    execvp(argv[4], argv + 4);
    int e = errno;
    if (write(ep[1], &e, sizeof e) < 0) { /* the relay reports exit 127 alone */ }
    fprintf(stderr, "pack-relay: cannot run %s: %s\n", argv[4], strerror(e));
    _exit(127);
  }
  close(ep[1]);
  if (read(ep[0], &exec_errno, sizeof exec_errno) != sizeof exec_errno) exec_errno = 0;
  close(ep[0]);
  signal(SIGPIPE, SIG_IGN); /* a client gone is EPIPE here, not a signal */
  close(p[1]);
  close(0);
  in_fd = p[0];
  start_clock();
  relay();
  stop_clock();
  /* From here on the report always goes out: the worker's SIGTERM (its connection closed, which
   * we may have done ourselves) waits until we are done, and is dropped when we exit. CMD, not
   * blocking it, still ends by it. */
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigprocmask(SIG_BLOCK, &term, NULL);
  /* CMD's output ended, or the client left: closing the pipe makes a CMD still writing stop (EPIPE) */
  close(in_fd);
  int status;
  while (waitpid(cmd_pid, &status, 0) < 0 && errno == EINTR) {}
  if (head_sent && !gone && (boundary || !framed) && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    closed = shutdown(1, SHUT_WR) == 0;
  }
  report();
  if (WIFSIGNALED(status)) {
    if (WTERMSIG(status) != SIGTERM) signal(SIGTERM, SIG_IGN); /* a pending one must not stand in for it */
    signal(WTERMSIG(status), SIG_DFL);
    sigprocmask(SIG_UNBLOCK, &term, NULL);
    raise(WTERMSIG(status));
    return 128 + WTERMSIG(status);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
