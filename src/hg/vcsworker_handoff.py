# The handed-over connections of a vcs-worker `hg serve` child (see src/hg/handoff.ts and
# vcsworker_ext.py, which loads this module): Node's IPC channel to the worker, the sockets it
# passes (SCM_RIGHTS with a NODE_HANDLE line, acknowledged with NODE_HANDLE_ACK: the contract is
# written down in src/process/node-internals.ts), the request
# each carries, and the watchdog that cuts off a request hg stays silent on.
import base64
import io
import json
import os
import socket
import threading
import time

# the messages' version, as src/hg/handoff.ts defines them (HANDOFF_PROTOCOL)
PROTOCOL = 1


class _HeadFirst(io.RawIOBase):
    """Reads the request head the worker already read off the socket, then the socket."""

    def __init__(self, head, sock):
        self._head = memoryview(head)
        self._sock = sock

    def readable(self):
        return True

    def readinto(self, b):
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(b)


class Handed:
    """A client connection the worker handed over, as the request handler's socket: reads
    start with the request head, sends are counted, and a watchdog may cut it off."""

    def __init__(self, sock, msg):
        self.id = msg['id']
        self._sock = sock
        self._head = base64.b64decode(msg['head'])
        self.silence = msg['timeoutMs'] / 1000.0
        self.silent_answer = msg['timeoutBody'].encode('utf-8')
        self.status = 0
        self.sent = 0
        self.answered = False
        self.sending = False
        self.last = time.monotonic()
        self.cut = False
        self.failed = False
        self._closed = False
        self.lock = threading.Lock()

    def makefile(self, mode, buffering=-1):
        if 'r' not in mode:
            raise ValueError('only the read side is a file')
        return io.BufferedReader(_HeadFirst(self._head, self._sock))

    def sendall(self, data):
        with self.lock:
            if self.cut:
                raise ConnectionAbortedError('cut off: silent past the worker\'s hgTimeoutMs')
            self.sending = True
        try:
            head = not self.status and data[:5] == b'HTTP/'
            if head:
                self.status = int(bytes(data[9:12]))
            self._sock.sendall(data)
            if not head:
                self.sent += len(data)  # the body's bytes, as the worker counts them
            self.answered = True
        finally:
            self.sending = False
            self.last = time.monotonic()

    def cut_if_silent(self, now):
        """Cuts the connection off when hg has been silent too long (not when the client reads
        slowly: a send in progress is the client's pace). Answers 504 if nothing was sent yet."""
        with self.lock:
            if self.cut or self.sending or now - self.last < self.silence:
                return
            self.cut = True
            try:
                if not self.answered:
                    self.status = 504
                    # hg shows the reason phrase ("abort: HTTP Error 504: <phrase>"): it carries the line too
                    self._sock.sendall(b'HTTP/1.1 504 %s\r\nContent-Type: text/plain; charset=utf-8\r\n'
                                       b'Content-Length: %d\r\nConnection: close\r\n\r\n%s'
                                       % (self.silent_answer.strip(), len(self.silent_answer), self.silent_answer))
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shutdown(self, how):
        try:
            self._sock.shutdown(how)
        except OSError:
            pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        HANDOFF.finished(self)

    def fileno(self):
        return self._sock.fileno()

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Handoff:
    """Node's IPC channel to the worker (newline-delimited JSON; a socket arrives as SCM_RIGHTS
    with a NODE_HANDLE line, acknowledged with NODE_HANDLE_ACK), and the connections in service."""

    def __init__(self):
        self.server = None
        self.jobs = {}
        self.beat = 1.0  # how often to tell the worker we are alive while holding connections
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.channel = None
        self.selftest = None  # an Event while `hg debugvcsworkerhandoff` runs

    def start(self, fd):
        self.channel = socket.socket(fileno=fd)
        self.channel.setblocking(True)
        threading.Thread(target=self._read, name='vcs-worker-handoff', daemon=True).start()
        threading.Thread(target=self._watch, name='vcs-worker-handoff-watch', daemon=True).start()

    def send(self, msg):
        data = (json.dumps(msg, separators=(',', ':')) + '\n').encode('utf-8')
        with self.send_lock:
            self.channel.sendall(data)

    def _read(self):
        buf = b''
        fds = []
        while True:
            try:
                data, got, _flags, _addr = socket.recv_fds(self.channel, 65536, 8)
            except OSError:
                data = b''
            if not data:
                os._exit(0)  # the worker is gone: so is every reason to serve
            fds.extend(got)
            buf += data
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                msg = json.loads(line)
                cmd = msg.get('cmd')
                if cmd == 'NODE_HANDLE':
                    fd = fds.pop(0) if fds else None
                    if fd is None:
                        self.send({'cmd': 'NODE_HANDLE_NACK'})
                        continue
                    self.send({'cmd': 'NODE_HANDLE_ACK'})
                    self._serve(fd, msg['msg'])
                elif cmd == 'vcsworker-serve':
                    # the socket did not come along (the client was already gone): nothing to serve
                    self.send({'cmd': 'vcsworker-done', 'id': msg['id'], 'status': 0, 'bytes': 0, 'complete': False, 'cut': False})

    def _serve(self, fd, msg):
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        if msg.get('v') != PROTOCOL:
            # a worker of another build: nothing served, the request lost (the worker answers 502)
            sock.close()
            self.send({'cmd': 'vcsworker-done', 'id': msg.get('id'), 'status': 0, 'bytes': 0, 'complete': False, 'cut': False})
            return
        if self.selftest is not None:
            self._answer_selftest(sock, msg)
            return
        sock.settimeout(msg['idleMs'] / 1000.0)  # a client that stops reading for this long is let go
        conn = Handed(sock, msg)
        self.beat = msg.get('beatMs', 1000) / 1000.0
        with self.lock:
            self.jobs[conn.id] = conn
        if self.server is None:
            conn.failed = True
            conn.close()
            return
        self.server.process_request(conn, (msg.get('addr') or '127.0.0.1', 0))

    def _answer_selftest(self, sock, msg):
        # what a handed-over request needs end to end: the socket from SCM_RIGHTS, the head
        # decoded from the message, an answer on the socket, the done report on the channel
        line = base64.b64decode(msg['head']).split(b'\r\n', 1)[0]
        body = b'handoff ok: ' + line
        sock.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' % (len(body), body))
        sock.close()
        self.send({'cmd': 'vcsworker-done', 'id': msg['id'], 'status': 200, 'bytes': len(body), 'complete': True, 'cut': False})
        self.selftest.set()

    def finished(self, conn):
        with self.lock:
            self.jobs.pop(conn.id, None)
        try:
            self.send({'cmd': 'vcsworker-done', 'id': conn.id, 'status': conn.status, 'bytes': conn.sent,
                       'complete': not (conn.failed or conn.cut), 'cut': conn.cut})
        except OSError:
            pass

    def _watch(self):
        beat = 0.0
        while True:
            time.sleep(min(0.2, self.beat / 2))
            now = time.monotonic()
            with self.lock:
                jobs = list(self.jobs.values())
            for conn in jobs:
                conn.cut_if_silent(now)
            try:
                if jobs and now - beat >= self.beat:
                    beat = now
                    self.send({'cmd': 'vcsworker-alive'})
            except OSError:
                pass


HANDOFF = _Handoff()
