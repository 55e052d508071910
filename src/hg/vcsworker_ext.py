# vcs-worker's guard for its `hg serve` children (loaded with --config extensions.vcsworker=...).
#
# `hg serve` sets no REMOTE_USER and runs with pushes allowed over plain HTTP, so anything on
# this machine that reaches a child's port directly could push. This extension makes a child
# answer only requests that carry the worker's per-child secret, sets REMOTE_USER from the user
# the worker authenticated (so hg hooks and logs name the pusher), and exits when the worker
# that started it is gone (a worker killed with -9 leaves no child behind).
import hmac
import os
import threading
import time

from mercurial import extensions
from mercurial.hgweb import hgwebdir_mod

_SECRET = os.environ.get('VCS_WORKER_CHILD_SECRET', '').encode('latin-1')
_PARENT = int(os.environ.get('VCS_WORKER_PID', '0') or '0')


def _guarded(orig, self, env, respond):
    given = env.get('HTTP_X_VCS_WORKER_SECRET', '').encode('latin-1')
    if not _SECRET or not hmac.compare_digest(given, _SECRET):
        respond('403 Forbidden', [('Content-Type', 'text/plain')])
        return [b'direct access to this hg serve child is not allowed\n']
    env.pop('REMOTE_USER', None)
    user = env.get('HTTP_X_VCS_WORKER_USER', '')
    if user:
        env['REMOTE_USER'] = user
    return orig(self, env, respond)


def _watch_parent():
    while True:
        time.sleep(0.5)
        if _PARENT and os.getppid() != _PARENT:
            os._exit(0)


def uisetup(ui):
    extensions.wrapfunction(hgwebdir_mod.hgwebdir, '__call__', _guarded)
    if _PARENT:
        threading.Thread(target=_watch_parent, name='vcs-worker-lifeline', daemon=True).start()
