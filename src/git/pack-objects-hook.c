/*
 * vcs-worker's uploadpack.packObjectsHook (src/git/pack-cache.ts, docs/git.md): git runs it as
 * `hook git pack-objects ARGS` for every fetch, with pack-objects' input on stdin, and takes
 * what it writes to stdout as the pack and to stderr as progress. It reads its input, asks the
 * worker's pack-cache endpoint (VCS_WORKER_PACK_URL, on 127.0.0.1 only) and then:
 *   - 200 with X-VCS-File: a finished entry; copies that file to stdout itself (the worker stays
 *     out of the data path), after the progress pack-objects showed when it made it;
 *   - 200, chunked: a production it follows as it is written; only the last chunk says the pack
 *     is whole, and its trailer carries the rest of the progress;
 *   - anything else, or the worker unreachable: runs pack-objects itself on the same input.
 * The request carries X-VCS-Hook-Protocol (HOOK_PROTOCOL, src/git/pack-cache.ts
 * PACK_HOOK_PROTOCOL); the endpoint answers another one with 409, so the hook runs pack-objects.
 * Once a byte went to stdout, a failure exits 1 (git then reports the fetch failed) rather
 * than sending more.
 *
 * C and not a script: git starts this process for every fetch, and on these machines starting
 * perl costs ~7 ms of CPU (and sh with curl ~120 ms), more than replaying a cached pack; a
 * static binary starts in ~1 ms. No library beyond libc.
 */
#define _GNU_SOURCE
#define HOOK_PROTOCOL 1 /* the request and answers below; src/git/pack-cache.ts PACK_HOOK_PROTOCOL */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIPE_BUF_BYTES 65536
#define MAX_HEAD 65536
#define BUF_BYTES (256 * 1024)

static char **git_argv; /* pack-objects' command: `git pack-objects ARGS` */
static char *in;        /* pack-objects' input, read whole first */
static size_t in_len;

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void die(const char *what) {
  fprintf(stderr, "vcs-worker pack-objects hook: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* pack-objects run here, on the input read above; never returns */
static void direct(void) {
  int p[2];
  if (pipe(p) != 0) die("pipe");
  if (in_len <= PIPE_BUF_BYTES) {
    /* fits the pipe's buffer (64 KiB on Linux): written before the exec, no writer process */
    if (write_all(p[1], in, in_len) != 0) die("pipe");
    close(p[1]);
  } else {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid > 0) {
      int status;
      close(p[0]);
      signal(SIGPIPE, SIG_IGN); /* pack-objects may stop reading: its exit status says why */
      write_all(p[1], in, in_len);
      close(p[1]);
      while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) die("wait");
      exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
    }
    close(p[1]);
  }
  if (dup2(p[0], 0) < 0) die("stdin");
  close(p[0]);
  execvp(git_argv[0], git_argv);
  die(git_argv[0]);
}

static void read_input(void) {
  size_t cap = PIPE_BUF_BYTES;
  in = malloc(cap);
  if (!in) die("input");
  for (;;) {
    if (in_len == cap) {
      cap *= 2;
      in = realloc(in, cap);
      if (!in) die("input");
    }
    ssize_t r = read(0, in + in_len, cap - in_len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("stdin");
    if (r == 0) return;
    in_len += (size_t)r;
  }
}

/* the response as it arrives: buf[beg..end) not yet consumed */
static int sock = -1;
static char buf[BUF_BYTES];
static size_t beg, end;

/* reads more of the response; 0 at its end or on an error */
static int fill(void) {
  if (beg == end) beg = end = 0;
  if (end == sizeof buf) {
    memmove(buf, buf + beg, end - beg);
    end -= beg;
    beg = 0;
  }
  for (;;) {
    ssize_t r = read(sock, buf + end, sizeof buf - end);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    end += (size_t)r;
    return 1;
  }
}

static char *find(const char *needle) {
  return memmem(buf + beg, end - beg, needle, strlen(needle));
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* progress text the worker sends as hex, written to stderr */
static void progress(const char *hex, size_t n) {
  char out[4096];
  size_t k = 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    int hi = hexval(hex[i]), lo = hexval(hex[i + 1]);
    if (hi < 0 || lo < 0) break;
    out[k++] = (char)(hi * 16 + lo);
    if (k == sizeof out) {
      write_all(2, out, k);
      k = 0;
    }
  }
  write_all(2, out, k);
}

/* the value of header `name` in head[0..n) (lines after the status line), or NULL; its length in *len */
static const char *header(const char *head, size_t n, const char *name, size_t *len) {
  size_t nl = strlen(name);
  const char *p = head, *stop = head + n;
  while (p < stop) {
    const char *eol = memmem(p, (size_t)(stop - p), "\r\n", 2);
    if (!eol) eol = stop;
    if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
      const char *v = p + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      *len = (size_t)(eol - v);
      return v;
    }
    p = eol + 2;
  }
  return NULL;
}

static void out_all(const char *p, size_t n) {
  if (write_all(1, p, n) != 0) exit(1);
}

/* a finished entry: copied to stdout here; one evicted before it was opened means running pack-objects after all */
static void send_file(const char *name, const char *hex, size_t hex_len) {
  int fd = open(name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) direct();
    exit(1);
  }
  progress(hex, hex_len);
  for (;;) {
    ssize_t n = sendfile(1, fd, NULL, 1 << 20);
    if (n > 0) continue;
    if (n == 0) exit(0);
    if (errno == EINTR) continue;
    if (errno != EINVAL && errno != ENOSYS) exit(1);
    break; /* stdout that sendfile cannot write to: plain reads and writes */
  }
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) exit(1);
    if (n == 0) exit(0);
    out_all(buf, (size_t)n);
  }
}

/* a production followed as it is written, chunked: only the last chunk says it is whole */
static void follow(void) {
  for (;;) {
    char *nl;
    while (!(nl = find("\r\n"))) {
      if (end - beg > 64 || !fill()) exit(1);
    }
    char *e;
    unsigned long long size = strtoull(buf + beg, &e, 16);
    if (e == buf + beg) exit(1);
    beg = (size_t)(nl + 2 - buf);
    if (size == 0) {
      /* the trailer: the progress pack-objects wrote after the first chunk */
      char *t;
      while (!(t = find("\r\n\r\n")) && !(end - beg >= 2 && buf[beg] == '\r' && buf[beg + 1] == '\n')) {
        if (end - beg >= MAX_HEAD || !fill()) exit(0);
      }
      if (t) {
        size_t len;
        const char *v = header(buf + beg, (size_t)(t - (buf + beg)), "x-vcs-progress-rest", &len);
        if (v) progress(v, len);
      }
      exit(0);
    }
    while (size > 0) {
      if (beg == end && !fill()) exit(1);
      size_t n = end - beg < size ? end - beg : (size_t)size;
      out_all(buf + beg, n);
      beg += n;
      size -= n;
    }
    while (end - beg < 2) {
      if (!fill()) exit(1);
    }
    beg += 2;
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s git pack-objects ARGS (run by git as uploadpack.packObjectsHook)\n", argv[0]);
    return 2;
  }
  git_argv = argv + 1;
  read_input();

  /* http://127.0.0.1:PORT/PATH, the path printable ASCII without spaces */
  const char *url = getenv("VCS_WORKER_PACK_URL");
  const char *token = getenv("VCS_WORKER_PACK_TOKEN");
  const char *prefix = "http://127.0.0.1:";
  if (!url || !token || strncmp(url, prefix, strlen(prefix)) != 0) direct();
  char *path;
  unsigned long port = strtoul(url + strlen(prefix), &path, 10);
  if (port == 0 || port > 65535 || *path != '/') direct();
  for (const char *c = path; *c; c++)
    if (*c < '!' || *c > '~') direct();
  for (const char *c = token; *c; c++)
    if (*c < '!' || *c > '~') direct();

  char cwd[4096];
  ssize_t cl = readlink("/proc/self/cwd", cwd, sizeof cwd - 1);
  cwd[cl < 0 ? 0 : cl] = '\0';
  /* git's arguments joined by spaces, as the endpoint expects them */
  size_t args_len = 0;
  for (char **a = git_argv; *a; a++) args_len += strlen(*a) + 1;
  char *args = malloc(args_len + 1);
  if (!args) direct();
  args[0] = '\0';
  for (char **a = git_argv; *a; a++) {
    if (a != git_argv) strcat(args, " ");
    strcat(args, *a);
  }
  for (const char *c = args; *c; c++)
    if (*c == '\r' || *c == '\n') direct();
  for (const char *c = cwd; *c; c++)
    if (*c == '\r' || *c == '\n') direct();

  sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) direct();
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) direct();
  signal(SIGPIPE, SIG_IGN); /* a worker that goes away answers EPIPE, not a signal */
  char *req;
  int req_len = asprintf(&req,
                         "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-VCS-Hook-Protocol: %d\r\n"
                         "X-VCS-Token: %s\r\nX-VCS-Cwd: %s\r\nX-VCS-Args: %s\r\nContent-Length: %zu\r\n\r\n",
                         path, HOOK_PROTOCOL, token, cwd, args, in_len);
  if (req_len < 0 || write_all(sock, req, (size_t)req_len) != 0 || write_all(sock, in, in_len) != 0) direct();
  signal(SIGPIPE, SIG_DFL);

  char *head_end;
  while (!(head_end = find("\r\n\r\n"))) {
    if (end - beg >= MAX_HEAD || !fill()) direct();
  }
  size_t head_len = (size_t)(head_end - (buf + beg));
  if (head_len < 13 || (strncmp(buf + beg, "HTTP/1.1 200 ", 13) != 0 && strncmp(buf + beg, "HTTP/1.0 200 ", 13) != 0)) direct();
  /* the header lines: after the status line's \n, which is at the latest the one ending the head */
  const char *head = (const char *)memchr(buf + beg, '\n', head_len + 2) + 1;
  size_t n = head < head_end ? (size_t)(head_end - head) : 0;
  size_t file_len = 0, hex_len = 0, te_len = 0;
  const char *file = header(head, n, "x-vcs-file", &file_len);
  const char *hex = header(head, n, "x-vcs-progress", &hex_len);
  const char *te = header(head, n, "transfer-encoding", &te_len);
  if (!hex) hex = "", hex_len = 0;
  if (file) {
    char name[4096];
    if (file_len >= sizeof name) exit(1);
    memcpy(name, file, file_len);
    name[file_len] = '\0';
    send_file(name, hex, hex_len);
  }
  if (!te || te_len != 7 || strncasecmp(te, "chunked", 7) != 0) exit(1);
  progress(hex, hex_len);
  beg = (size_t)(head_end + 4 - buf);
  follow();
  return 0;
}
