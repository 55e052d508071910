/**
 * Prometheus metrics (prom-client), one registry per app so two apps in one process (tests)
 * never share counters. Request metrics are fed from the access record of each request, so a
 * request is counted exactly where it is logged. State owned elsewhere (admission queue, hg
 * children, health checks) is read when Prometheus scrapes. Labels are bounded: backend,
 * service (a fixed list; unknown hg commands count as `other`), protocol version, status code,
 * never a user; the repo only with `metricsRepoLabel`.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Admission, RefusedClass, RejectReason, WorkClass } from '../admission/admission.js'
import type { HealthChecker } from '../health/checks.js'
import type { PackObjectsCache } from '../git/pack-cache.js'
import type { HgServePool } from '../hg/serve-pool.js'
import { backendOf, type AccessRecord, type Backend } from '../log.js'
import { commandLabel } from '../hg/commands.js'

const GIT_SERVICES = new Set(['upload-pack', 'receive-pack', 'lfs-batch', 'lfs-download', 'lfs-upload', 'lfs-verify', 'lfs-locks'])
const DURATION_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800]

function serviceLabel(backend: Backend, service: string | undefined): string {
  if (service === undefined) return 'none'
  if (backend === 'git') return GIT_SERVICES.has(service) ? service : 'other'
  if (backend === 'hg') return commandLabel(service)
  return 'none'
}

export interface MetricSources {
  admission: Admission
  health: HealthChecker
  hgPool?: HgServePool
  packCache?: PackObjectsCache
}

export class WorkerMetrics {
  readonly registry = new Registry()
  private readonly requests: Counter
  private readonly sessions: Counter
  private readonly inFlight: Gauge
  private readonly duration: Histogram
  private readonly ttfb: Histogram
  private readonly bytesIn: Counter
  private readonly bytesOut: Counter
  private readonly rejected: Counter
  private readonly queueWait: Histogram
  private readonly gitSpawns: Counter
  private readonly gitExits: Counter
  private readonly authFailures: Counter
  private readonly throttled: Counter
  private readonly repoLabel: boolean

  constructor(opts: { repoLabel: boolean }, sources: MetricSources) {
    const registers = [this.registry]
    this.repoLabel = opts.repoLabel
    const requestLabels = ['backend', 'service', 'protocol', 'code', ...(opts.repoLabel ? ['repo'] : [])]
    this.requests = new Counter({ name: 'vcs_requests_total', help: 'HTTP requests answered, by backend, service, protocol version and status', labelNames: requestLabels, registers })
    this.sessions = new Counter({
      name: 'vcs_sessions_total',
      help: 'client operations started (git: one ref advertisement per clone, fetch or push; hg: one capabilities request per command)',
      labelNames: ['backend', 'service'],
      registers,
    })
    this.inFlight = new Gauge({ name: 'vcs_requests_in_flight', help: 'requests being answered, by backend', labelNames: ['backend'], registers })
    this.duration = new Histogram({ name: 'vcs_request_duration_seconds', help: 'time from request to the end of the answer', labelNames: ['backend', 'service'], buckets: DURATION_BUCKETS, registers })
    this.ttfb = new Histogram({ name: 'vcs_time_to_first_byte_seconds', help: 'time from request to the status line', labelNames: ['backend', 'service'], buckets: DURATION_BUCKETS, registers })
    this.bytesIn = new Counter({ name: 'vcs_bytes_in_total', help: 'request body bytes read', labelNames: ['backend'], registers })
    this.bytesOut = new Counter({ name: 'vcs_bytes_out_total', help: 'response body bytes sent', labelNames: ['backend'], registers })
    this.rejected = new Counter({ name: 'vcs_rejected_total', help: 'heavy requests refused with 503, by reason', labelNames: ['reason', 'class'], registers })
    this.queueWait = new Histogram({ name: 'vcs_queue_wait_seconds', help: 'time heavy requests waited for a slot', labelNames: ['class'], buckets: [0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60], registers })
    new Gauge({
      name: 'vcs_queue_length', help: 'heavy requests waiting for a slot', registers,
      collect() { this.set(sources.admission.queued) },
    })
    new Gauge({
      name: 'vcs_heavy_in_flight', help: 'heavy requests holding a slot, by class', labelNames: ['class'], registers,
      collect() {
        this.set({ class: 'full' }, sources.admission.activeFull)
        this.set({ class: 'incremental' }, sources.admission.active - sources.admission.activeFull)
      },
    })
    new Gauge({ name: 'vcs_transfers_in_flight', help: 'file downloads being sent (Git LFS objects, hg clone bundles)', registers, collect() { this.set(sources.admission.transfers) } })
    this.gitSpawns = new Counter({ name: 'vcs_git_spawns_total', help: 'git processes started for requests; failed = could not start', labelNames: ['result'], registers })
    this.gitExits = new Counter({ name: 'vcs_git_exits_total', help: 'git processes ended, by exit code or signal', labelNames: ['code'], registers })
    const pool = sources.hgPool
    new Gauge({
      name: 'vcs_hg_children', help: 'hg serve children, by state', labelNames: ['state'], registers,
      collect() {
        this.reset()
        for (const c of pool?.children ?? []) this.inc({ state: c.state })
      },
    })
    new Gauge({ name: 'vcs_hg_children_ready', help: 'hg serve children that pass their probe', registers, collect() { this.set(pool?.readyCount() ?? 0) } })
    new Counter({ name: 'vcs_hg_child_restarts_total', help: 'hg serve children restarted after an exit', registers, collect() { this.reset(); this.inc(pool?.restarts ?? 0) } })
    new Counter({ name: 'vcs_hg_child_spawns_total', help: 'hg serve children started', registers, collect() { this.reset(); this.inc(pool?.spawns ?? 0) } })
    new Counter({
      name: 'vcs_hg_child_exits_total', help: 'hg serve children ended, by exit code or signal', labelNames: ['code'], registers,
      collect() {
        this.reset()
        for (const [code, n] of pool?.exits ?? []) this.inc({ code }, n)
      },
    })
    const cache = sources.packCache
    const cacheCounter = (name: string, help: string, read: (c: PackObjectsCache) => number): void => {
      new Counter({ name, help, registers, collect() { this.reset(); this.inc(cache ? read(cache) : 0) } })
    }
    cacheCounter('vcs_pack_cache_hits_total', 'fetches whose pack came from a finished pack-objects cache entry', (c) => c.stats.hits)
    cacheCounter('vcs_pack_cache_misses_total', 'fetches that ran pack-objects (directly, or writing the entry)', (c) => c.stats.misses)
    cacheCounter('vcs_pack_cache_follows_total', 'fetches that followed a pack-objects run in progress', (c) => c.stats.follows)
    cacheCounter('vcs_pack_cache_served_bytes_total', 'pack bytes served from the cache (hits and follows)', (c) => c.stats.bytesServed)
    cacheCounter('vcs_pack_cache_evictions_total', 'entries removed for their age or the size cap', (c) => c.stats.evictions)
    cacheCounter('vcs_pack_cache_overflows_total', 'packs not kept because the cache was full: their readers were served from memory', (c) => c.stats.overflows)
    cacheCounter('vcs_pack_cache_failures_total', 'pack-objects runs for the cache that failed (their entry removed)', (c) => c.stats.failures)
    new Gauge({ name: 'vcs_pack_cache_entries', help: 'finished entries on disk', registers, collect() { this.set(cache?.entryCount().entries ?? 0) } })
    new Gauge({ name: 'vcs_pack_cache_bytes', help: 'bytes of finished entries on disk', registers, collect() { this.set(cache?.entryCount().bytes ?? 0) } })
    this.authFailures = new Counter({ name: 'vcs_auth_failures_total', help: 'requests with credentials that were refused (401)', registers })
    this.throttled = new Counter({ name: 'vcs_auth_throttled_total', help: 'requests refused for too many failed logins (429)', registers })
    const health = sources.health
    new Gauge({
      name: 'vcs_health_check_ok', help: 'last result of each background health check (1 ok, 0 failing)', labelNames: ['check'], registers,
      collect() {
        for (const [check, r] of Object.entries(health.report(health.names).checks)) this.set({ check }, r.status === 'ok' ? 1 : 0)
      },
    })
    new Gauge({
      name: 'vcs_health_check_duration_seconds', help: 'duration of the last run of each health check', labelNames: ['check'], registers,
      collect() {
        for (const [check, r] of Object.entries(health.report(health.names).checks)) this.set({ check }, r.duration_ms / 1000)
      },
    })
    // process and runtime metrics, event-loop lag among them
    collectDefaultMetrics({ register: this.registry })
  }

  /** Called as a request starts, with the backend its URL points at. */
  started(backend: Backend): () => void {
    this.inFlight.inc({ backend })
    return () => this.inFlight.dec({ backend })
  }

  /** Called once per request with its access record. */
  observe(r: AccessRecord): void {
    const backend = backendOf(r.route)
    const service = serviceLabel(backend, r.service)
    const labels: Record<string, string> = { backend, service, protocol: r.protocol ?? 'none', code: String(r.status) }
    if (this.repoLabel) labels.repo = r.repo ?? 'none'
    this.requests.inc(labels)
    if (r.route === 'git_info_refs' && r.status === 200) this.sessions.inc({ backend, service })
    if (backend === 'hg' && r.service === 'capabilities' && r.status === 200) this.sessions.inc({ backend, service: 'hg' })
    this.duration.observe({ backend, service }, r.durationMs / 1000)
    if (r.ttfbMs !== undefined) this.ttfb.observe({ backend, service }, r.ttfbMs / 1000)
    if (r.bytesIn) this.bytesIn.inc({ backend }, r.bytesIn)
    if (r.bytesOut) this.bytesOut.inc({ backend }, r.bytesOut)
    if (backend === 'git' && r.childSpawned) {
      this.gitSpawns.inc({ result: r.pid === undefined ? 'failed' : 'started' })
      if (r.exitCode !== undefined && r.exitCode !== null) this.gitExits.inc({ code: String(r.exitCode) })
    }
    if (r.status === 401 && r.hadCredentials) this.authFailures.inc()
    if (r.status === 429) this.throttled.inc()
  }

  admitted(waitSeconds: number, cls: WorkClass): void {
    this.queueWait.observe({ class: cls }, waitSeconds)
  }

  refused(reason: RejectReason | 'no_hg_child', cls: RefusedClass): void {
    this.rejected.inc({ reason, class: cls })
  }
}
