/*
 * vcs-worker's git hook program (src/git/hook-service.ts installs it, docs/git.md). One binary,
 * linked under each hook's name in the worker's hooks dir (core.hooksPath), that does what its
 * name says:
 *   pre-receive   classifies each ref update (create, update, force by ancestry, delete), asks
 *                 the worker which ones its ref hooks refuse (the worker writes those to the
 *                 push's rejects file), prints the reasons, then runs the repository's own
 *                 pre-receive; any failure refuses the whole push: fail closed;
 *   update        declines a ref named in the rejects file, else runs the repository's own;
 *   post-receive  tells the worker what moved (it points a dangling HEAD at the first branch
 *                 pushed), then runs the repository's own;
 *   post-update, push-to-checkout   the repository's own, when it has one;
 *   pack-objects  git's uploadpack.packObjectsHook, run as `HOOK git pack-objects ARGS` for
 *                 every fetch: it asks the worker's pack cache and then
 *     - 200 with X-VCS-File: a finished entry; copies that file to stdout itself (the worker
 *       stays out of the data path), after the progress pack-objects showed when it made it;
 *     - 200, chunked: a production it follows as it is written; only the last chunk says the
 *       pack is whole, and its trailer carries the rest of the progress;
 *     - anything else, or the worker unreachable: runs pack-objects itself on the same input.
 *     Once a byte went to stdout, a failure exits 1 (git then reports the fetch failed).
 *
 * Every call is a POST to VCS_WORKER_HOOK_URL (http://127.0.0.1:PORT) + /NAME with the headers
 * X-VCS-Hook-Protocol, X-VCS-Token (VCS_WORKER_HOOK_TOKEN, the session of this git run) and
 * X-VCS-Cwd; the frames are defined in src/git/hook-protocol.ts, whose HOOK_PROTOCOL this
 * program's must equal (the worker answers another with 409).
 *
 * C and not a script: git starts it for every fetch and several times per push, and on these
 * machines starting Node costs ~40 ms, perl ~7 ms, sh with curl ~120 ms; a static binary starts
 * in ~1 ms. No library beyond libc.
 */
#define _GNU_SOURCE
#define HOOK_PROTOCOL 2 /* src/git/hook-protocol.ts HOOK_PROTOCOL */
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
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIPE_BUF_BYTES 65536
#define MAX_HEAD 65536
#define MAX_ANSWER (4 * 1024 * 1024)
#define BUF_BYTES (256 * 1024)

static char **git_argv; /* pack-objects' command: `git pack-objects ARGS` */
static char *in;        /* the hook's input, read whole first */
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

/* argv run in place of this process, with the input read above on its stdin; never returns */
static void exec_with_input(char **argv) {
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
  execvp(argv[0], argv);
  die(argv[0]);
}

/* pack-objects run here, on the input read above; never returns */
static void direct(void) { exec_with_input(git_argv); }

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

/* the worker's address and this run's token from the environment: 0 when absent or not loopback */
static unsigned long port;
static const char *token;
static int worker_env(void) {
  const char *url = getenv("VCS_WORKER_HOOK_URL");
  const char *prefix = "http://127.0.0.1:";
  token = getenv("VCS_WORKER_HOOK_TOKEN");
  if (!url || !token || !*token || strncmp(url, prefix, strlen(prefix)) != 0) return 0;
  char *rest;
  port = strtoul(url + strlen(prefix), &rest, 10);
  if (port == 0 || port > 65535 || *rest != '\0') return 0;
  for (const char *c = token; *c; c++)
    if (*c < '!' || *c > '~') return 0;
  return 1;
}

static int printable_line(const char *s) {
  for (const char *c = s; *c; c++)
    if (*c == '\r' || *c == '\n') return 0;
  return 1;
}

/*
 * POSTs the input read above to /NAME, with `extra` header lines (each ending \r\n), and reads
 * the answer's head into buf; its status code, or -1 when the worker could not be asked.
 * With a timeout (seconds), a worker that stops answering counts as unreachable.
 */
static int call(const char *name, const char *extra, int timeout) {
  char cwd[4096];
  ssize_t cl = readlink("/proc/self/cwd", cwd, sizeof cwd - 1);
  cwd[cl < 0 ? 0 : cl] = '\0';
  if (!printable_line(cwd)) return -1;
  sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return -1;
  if (timeout > 0) {
    struct timeval tv = { .tv_sec = timeout };
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) return -1;
  signal(SIGPIPE, SIG_IGN); /* a worker that goes away answers EPIPE, not a signal */
  char *req;
  int req_len = asprintf(&req,
                         "POST /%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-VCS-Hook-Protocol: %d\r\n"
                         "X-VCS-Token: %s\r\nX-VCS-Cwd: %s\r\n%sContent-Length: %zu\r\n\r\n",
                         name, HOOK_PROTOCOL, token, cwd, extra, in_len);
  if (req_len < 0 || write_all(sock, req, (size_t)req_len) != 0 || write_all(sock, in, in_len) != 0) return -1;
  signal(SIGPIPE, SIG_DFL);
  while (!find("\r\n\r\n")) {
    if (end - beg >= MAX_HEAD || !fill()) return -1;
  }
  if (end - beg < 13 || (strncmp(buf + beg, "HTTP/1.1 ", 9) != 0 && strncmp(buf + beg, "HTTP/1.0 ", 9) != 0)) return -1;
  return atoi(buf + beg + 9);
}

/* the answer's body after call(), read to the end (the request asked the worker to close); NUL-terminated */
static char *answer_body(size_t *len) {
  char *head_end = find("\r\n\r\n");
  beg = (size_t)(head_end + 4 - buf);
  size_t cap = 4096, n = 0;
  char *body = malloc(cap);
  if (!body) die("answer");
  for (;;) {
    size_t have = end - beg;
    if (n + have + 1 > cap) {
      while (n + have + 1 > cap) cap *= 2;
      if (cap > MAX_ANSWER) break;
      body = realloc(body, cap);
      if (!body) die("answer");
    }
    memcpy(body + n, buf + beg, have);
    n += have;
    beg = end;
    if (!fill()) break;
  }
  body[n] = '\0';
  *len = n;
  return body;
}

/* the repository's own hook of this name (git runs ours with the repository as its cwd) */
static int has_own(const char *name, char *path, size_t size) {
  snprintf(path, size, "hooks/%s", name);
  return access(path, X_OK) == 0;
}

/* runs the repository's own hook in place of this process, its input the one read above; 0 without one */
static int chain_with_input(const char *name, char **argv) {
  char path[256];
  if (!has_own(name, path, sizeof path)) return 0;
  argv[0] = path;
  exec_with_input(argv);
  return 1;
}

static int chain(const char *name, char **argv) {
  char path[256];
  if (!has_own(name, path, sizeof path)) return 0;
  argv[0] = path;
  execv(path, argv);
  die(path);
  return 1;
}

static int object_id(const char *s, size_t n) {
  if (n != 40 && n != 64) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

static int zero(const char *s) {
  for (; *s; s++)
    if (*s != '0') return 0;
  return 1;
}

/* 0 when new descends from old (an update), 1 when not (a force); git runs with the push's quarantine in its environment */
static int ancestry(const char *old_id, const char *new_id) {
  const char *git = getenv("VCS_WORKER_GIT");
  if (!git || !*git) git = "git";
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    execlp(git, git, "merge-base", "--is-ancestor", old_id, new_id, (char *)NULL);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int refuse(const char *why) {
  fprintf(stderr, "error: push checks failed: %s\n", why);
  return 1;
}

static int pre_receive(char **argv) {
  read_input();
  if (!worker_env() || !getenv("VCS_WORKER_HOOK_REJECTS")) {
    fputs("error: push checks are not available\n", stderr);
    return 1;
  }
  /* the request: one line per update, `OLD NEW KIND REF` */
  size_t cap = in_len * 2 + 64, n = 0;
  char *body = malloc(cap);
  if (!body) die("input");
  char *line = in, *stop = in + in_len;
  while (line < stop) {
    char *eol = memchr(line, '\n', (size_t)(stop - line));
    if (!eol) eol = stop;
    char *sp1 = memchr(line, ' ', (size_t)(eol - line));
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (eol == line) {
      line = eol + 1;
      continue;
    }
    if (!sp2 || !object_id(line, (size_t)(sp1 - line)) || !object_id(sp1 + 1, (size_t)(sp2 - sp1 - 1)) || sp2 + 1 == eol) return refuse("unexpected hook input");
    char old_id[65], new_id[65];
    memcpy(old_id, line, (size_t)(sp1 - line));
    old_id[sp1 - line] = '\0';
    memcpy(new_id, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    new_id[sp2 - sp1 - 1] = '\0';
    const char *kind;
    if (zero(old_id)) kind = "create";
    else if (zero(new_id)) kind = "delete";
    else {
      int a = ancestry(old_id, new_id);
      if (a != 0 && a != 1) {
        fprintf(stderr, "error: push checks failed: cannot tell whether %s descends from %s\n", new_id, old_id);
        return 1;
      }
      kind = a == 0 ? "update" : "force";
    }
    int w = snprintf(body + n, cap - n, "%s %s %s ", old_id, new_id, kind);
    n += (size_t)w;
    memcpy(body + n, sp2 + 1, (size_t)(eol - sp2 - 1));
    n += (size_t)(eol - sp2 - 1);
    body[n++] = '\n';
    line = eol + 1;
  }
  char *input = in;
  size_t input_len = in_len;
  in = body, in_len = n;
  /* the push's quarantine, where git put the pushed objects until the hooks agree */
  const char *objects = getenv("GIT_OBJECT_DIRECTORY");
  char *extra = "";
  if (objects && (!printable_line(objects) || asprintf(&extra, "X-VCS-Objects: %s\r\n", objects) < 0)) return refuse("unexpected object directory");
  int status = call("pre-receive", extra, 30);
  if (status < 0) return refuse("the worker is unreachable");
  size_t len;
  char *answer = answer_body(&len);
  if (status != 200) {
    /* the worker's one-line reason (the account store unreachable), else the status */
    char *nl = strchr(answer, '\n');
    if (nl) *nl = '\0';
    if (!*answer) fprintf(stderr, "error: push checks failed: worker answered %d\n", status);
    else refuse(answer);
    return 1;
  }
  write_all(2, answer, len); /* the refused refs and why */
  in = input, in_len = input_len;
  return chain_with_input("pre-receive", argv);
}

static int update(char **argv) {
  const char *rejects = getenv("VCS_WORKER_HOOK_REJECTS");
  if (argv[1] && rejects) {
    FILE *f = fopen(rejects, "r");
    if (f) {
      char *line = NULL;
      size_t cap = 0;
      ssize_t n;
      while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n') line[n - 1] = '\0';
        if (strcmp(line, argv[1]) == 0) return 1;
      }
      fclose(f);
    }
  }
  return chain("update", argv);
}

static int post_receive(char **argv) {
  read_input();
  /* the refs already moved: whatever the worker answers, the repository's own hook runs */
  if (worker_env() && call("post-receive", "", 30) == 200) {
    size_t len;
    char *answer = answer_body(&len);
    write_all(2, answer, len);
  }
  if (sock >= 0) close(sock);
  return chain_with_input("post-receive", argv);
}

static void pack_objects(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s git pack-objects ARGS (run by git as uploadpack.packObjectsHook)\n", argv[0]);
    exit(2);
  }
  git_argv = argv + 1;
  read_input();
  if (!worker_env()) direct();
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
  char *extra;
  if (!printable_line(args) || asprintf(&extra, "X-VCS-Args: %s\r\n", args) < 0) direct();
  if (call("pack-objects", extra, 0) != 200) direct();

  char *head_end = find("\r\n\r\n");
  size_t head_len = (size_t)(head_end - (buf + beg));
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
}

int main(int argc, char **argv) {
  const char *slash = strrchr(argv[0], '/');
  const char *name = slash ? slash + 1 : argv[0];
  if (strcmp(name, "pack-objects") == 0) pack_objects(argc, argv);
  if (strcmp(name, "pre-receive") == 0) return pre_receive(argv);
  if (strcmp(name, "update") == 0) return update(argv);
  if (strcmp(name, "post-receive") == 0) return post_receive(argv);
  if (strcmp(name, "post-update") == 0 || strcmp(name, "push-to-checkout") == 0) return chain(name, argv);
  fprintf(stderr, "vcs-worker-hook: run by git under a hook's name (pre-receive, update, post-receive, post-update, push-to-checkout, pack-objects), not as %s\n", name);
  return 2;
}
