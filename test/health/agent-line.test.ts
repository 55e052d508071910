import t from 'tap'
import { agentLine } from '../../src/health/agent.js'
import type { HealthSnapshot } from '../../src/health/checks.js'

const NOW = 1_000_000
const green = { ok: true, lastRun: NOW - 500, durationMs: 3, message: 'ok' }
const snapshot = (over: Partial<HealthSnapshot> = {}): HealthSnapshot => ({
  staleAfterMs: 5000,
  draining: false,
  load: { active: 0, queued: 0, heavyLimit: 16, queueLimit: 64 },
  checks: { repos_dir: green, disk: green, git_binary: green, git_canary: green, hg_children: green },
  ...over,
})

t.test('the agent line: weight from the load, maxconn from the limits', async (t) => {
  t.equal(agentLine(snapshot(), 'git', NOW), 'up ready 100% maxconn:80\n')
  t.equal(agentLine(snapshot({ load: { active: 16, queued: 24, heavyLimit: 16, queueLimit: 64 } }), 'git', NOW), 'up ready 50% maxconn:80\n')
  t.equal(agentLine(snapshot({ load: { active: 16, queued: 64, heavyLimit: 16, queueLimit: 64 } }), 'hg', NOW), 'up ready 1% maxconn:80\n', 'full: weight 1, never 0 (0 would mean drain)')
})

t.test('the agent line: drain, and down with the failing checks of the protocol asked', async (t) => {
  t.equal(agentLine(snapshot({ draining: true }), 'git', NOW), 'drain\n')
  const noHg = snapshot({ checks: { ...snapshot().checks, hg_children: { ok: false, lastRun: NOW, durationMs: 0, message: 'no ready child' } } })
  t.equal(agentLine(noHg, 'hg', NOW), 'down#hg_children\n')
  t.equal(agentLine(noHg, 'git', NOW), 'up ready 100% maxconn:80\n', 'git is not taken down for hg')
  t.equal(agentLine(noHg, '', NOW), 'down#hg_children\n', 'no protocol named: both')
  const stale = snapshot({ checks: { ...snapshot().checks, git_canary: { ...green, lastRun: NOW - 6000 } } })
  t.equal(agentLine(stale, 'git', NOW), 'down#git_canary\n', 'a stale result counts as failed (a wedged event loop)')
  const missing = snapshot({ checks: { repos_dir: green } })
  t.equal(agentLine(missing, 'git', NOW), 'down#disk,git_binary,git_canary\n', 'a check not run yet is failing')
  t.equal(agentLine(snapshot({ saturated: 'queue full' }), 'git', NOW), 'up ready 100% maxconn:80\n', 'saturation lowers the weight, it does not take the worker down')
})
