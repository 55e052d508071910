# vcs-worker's guard for its `hg serve` children (loaded with --config extensions.vcsworker=...).
#
# `hg serve` sets no REMOTE_USER and runs with pushes allowed over plain HTTP, so anything on
# this machine that reaches a child's port directly could push. This extension makes a child
# answer only requests that carry the worker's per-child secret, sets REMOTE_USER from the user
# the worker authenticated (so hg hooks and logs name the pusher), and exits when the worker
# that started it is gone (a worker killed with -9 leaves no child behind).
#
# Defence in depth: `allow-push = *` is not trusted on its own. The worker tells each request
# what it authorized (X-VCS-Worker-Access: read or write, always set by the worker, never passed
# through from a client); an operation other than a pull is refused unless that says write.
#
# A request that fails with an exception before hg answered gets a 500 whose reason phrase
# (what hg clients print) says what went wrong where that is safe to say (out of disk space);
# the traceback goes to the error log, which the worker logs.
#
# With clone bundles on (VCS_WORKER_CLONEBUNDLES=1), every repo advertises the clonebundles
# capability; the worker answers that command itself.
#
# It also takes connections handed over by the worker (see src/hg/handoff.ts and
# vcsworker_handoff.py): a client's socket arrives over Node's IPC channel with the request head
# the worker already read and vetted; the child serves that one request on it itself and closes
# it, so a bundle's bytes go from hg straight to the client instead of through the worker's
# single thread.
import errno
import hmac
import os
import sys
import threading
import time
import traceback

from mercurial import extensions, registrar, wireprotov1server
from mercurial import pathutil
from mercurial.hgweb import common, hgwebdir_mod, server as hgserver

# the handoff's half lives beside this file (hg loads an extension by path, not as a package)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vcsworker_handoff import HANDOFF as _handoff, Handed as _Handed  # noqa: E402

_SECRET = os.environ.get('VCS_WORKER_CHILD_SECRET', '').encode('latin-1')
_CLONEBUNDLES = os.environ.get('VCS_WORKER_CLONEBUNDLES') == '1'
_PARENT = int(os.environ.get('VCS_WORKER_PID', '0') or '0')


def _guarded(orig, self, env, respond):
    given = env.get('HTTP_X_VCS_WORKER_SECRET', '').encode('latin-1')
    if not _SECRET or not hmac.compare_digest(given, _SECRET):
        respond('403 Forbidden', [('Content-Type', 'text/plain')])
        return [b'direct access to this hg serve child is not allowed\n']
    env.pop('REMOTE_USER', None)
    user = env.pop('HTTP_X_VCS_WORKER_USER', '')
    if user:
        env['REMOTE_USER'] = user
    env['VCSWORKER_ACCESS'] = env.pop('HTTP_X_VCS_WORKER_ACCESS', 'read')
    return _answered(orig(self, env, respond), env, respond)


def _authorized(rctx, req, op):
    """hgweb permission hook: anything but a pull needs the worker's word that it may write."""
    if op in (b'pull', None):
        return
    if req.rawenv.get(b'VCSWORKER_ACCESS') != b'write':
        raise common.ErrorResponse(common.HTTP_FORBIDDEN, b'push not authorized by the worker')


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _reason(exc):
    """What a client may be told about an exception: the kind of failure, never its details."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return 'the server is out of disk space'
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return 'the repository is read-only on the server'
    return 'hg serve failed (%s); the server log has the details' % type(exc).__name__


def _answered(chunks, env, respond):
    """Passes hgweb's answer through; an exception before its first byte becomes a 500 whose
    reason says what failed (hg clients print the reason phrase), with the traceback logged."""
    sent = False
    try:
        for chunk in chunks:
            sent = True
            yield chunk
    except Exception as exc:
        errors = env.get('wsgi.errors')
        text = 'vcs-worker: request %s failed:\n%s' % (env.get('REQUEST_URI', '?'), traceback.format_exc())
        try:
            if errors is not None:
                errors.write(text.encode('utf-8', 'replace'))  # hgweb's error log takes bytes
            else:
                sys.stderr.write(text)
        except Exception:
            pass
        if sent or isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            raise
        reason = _reason(exc)
        body = (reason + '\n').encode('utf-8')
        respond('500 ' + reason, [('Content-Type', 'text/plain; charset=utf-8'), ('Content-Length', str(len(body)))], sys.exc_info())
        yield body


def _fresh_index(orig, self, req, res):
    """hgweb rescans the repos dir at most every web.refreshinterval; the worker forwards only
    requests for repos it found on disk, so a path missing from the index means the index is
    older than the repo (created a moment ago): rescan now instead of answering 404."""
    self.refresh()
    virtual = req.dispatchpath.strip(b'/')
    repos = dict(self.repos)
    if virtual and virtual not in repos and not any(d in repos for d in pathutil.finddirs(virtual)):
        self.lastrefresh = 0
    return orig(self, req, res)


def _watch_parent():
    while True:
        time.sleep(0.5)
        if _PARENT and os.getppid() != _PARENT:
            os._exit(0)


def _create_server(orig, ui, app):
    httpd = orig(ui, app)
    _handoff.server = httpd
    handle_error = httpd.handle_error

    def _handle_error(request, client_address):
        if isinstance(request, _Handed):
            request.failed = True
            if request.cut:
                return  # the watchdog's doing, already told
        handle_error(request, client_address)

    httpd.handle_error = _handle_error
    return httpd


cmdtable = {}
command = registrar.command(cmdtable)


@command(b'debugvcsworkerhandoff', [], norepo=True)
def debugvcsworkerhandoff(ui, **opts):
    """answer one connection the worker hands over, then exit (the worker's start-up self-test)"""
    if _handoff.channel is None or _handoff.selftest is None:
        ui.warn(b'no IPC channel from the worker, or not started for the self-test\n')
        return 1
    return 0 if _handoff.selftest.wait(15) else 1


def _capabilities(orig, repo, proto):
    # clone bundles: the worker answers the clonebundles command itself (src/hg/clone-bundles.ts)
    # with the bundles it keeps, so every repo advertises it (hg's own clonebundles extension
    # advertises it only where a .hg/clonebundles.manifest file exists)
    caps = orig(repo, proto)
    if b'clonebundles' not in caps:
        caps.append(b'clonebundles')
    return caps


def uisetup(ui):
    extensions.wrapfunction(hgwebdir_mod.hgwebdir, '__call__', _guarded)
    if _CLONEBUNDLES:
        extensions.wrapfunction(wireprotov1server, '_capabilities', _capabilities)
    extensions.wrapfunction(hgwebdir_mod.hgwebdir, '_runwsgi', _fresh_index)
    common.permhooks.append(_authorized)
    if _PARENT:
        threading.Thread(target=_watch_parent, name='vcs-worker-lifeline', daemon=True).start()
    channel = os.environ.pop('NODE_CHANNEL_FD', None)
    if channel:
        os.environ.pop('NODE_CHANNEL_SERIALIZATION_MODE', None)
        extensions.wrapfunction(hgserver, 'create_server', _create_server)
        if os.environ.pop('VCS_WORKER_HANDOFF_SELFTEST', None) == '1':
            # set before the channel is read: the socket may arrive before the command runs
            _handoff.selftest = threading.Event()
        _handoff.start(int(channel))
