/**
 * Live traffic statistics: packets and bits per second, drops and errors per
 * port, printed every interval while traffic runs.
 *
 * ```ts
 * const view = startLive({
 *   sample: () => [{ port: '0', counters: { rxPackets, rxBytes, txPackets, txBytes, drops, errors } }],
 *   output: process.stdout,
 *   durationMs: 10_000,
 * })
 * const summary = await view.done // or view.stop() to end it early
 * ```
 *
 * The sampling function returns cumulative counters; rates are computed from
 * two consecutive samples. On a TTY the view is one line rewritten in place
 * (`\r` and the clear-line escape); anywhere else it prints one plain line per
 * port and interval, so logs and pipes stay readable. Either way a summary
 * (totals and average rates since the start) ends it.
 *
 * Every view is bounded: it stops by itself after `durationMs`, and `stop()`
 * clears both of its timers, so nothing it created keeps Node alive.
 *
 * Bit rates count the Ethernet frames' bytes as the device sees them (no
 * preamble, inter-frame gap or FCS), times 8.
 */

/** Cumulative counters of one port at one instant. */
export interface PortCounters {
  /** Packets received by the port (from the back-end to the driver). */
  rxPackets: number
  /** Bytes of those packets. */
  rxBytes: number
  /** Packets transmitted by the port (from the driver to the back-end). */
  txPackets: number
  /** Bytes of those packets. */
  txBytes: number
  /** Packets dropped. */
  drops: number
  /** Packets that failed (RX and TX errors together). */
  errors: number
}

/** One port's counters as the sampling function returns them. */
export interface PortSample {
  /** How the port is named on screen (`'0'` prints as `port 0`). */
  port: string
  /** Its cumulative counters now. */
  counters: PortCounters
}

/** What happened on one port between two samples, per second (drops and errors: counts). */
export interface PortRates {
  /** Packets received per second. */
  rxPps: number
  /** Bits received per second. */
  rxBps: number
  /** Packets transmitted per second. */
  txPps: number
  /** Bits transmitted per second. */
  txBps: number
  /** Packets dropped in the interval. */
  drops: number
  /** Errors in the interval. */
  errors: number
}

/** The counters named in {@link PortCounters}, in display order. */
const COUNTER_KEYS: readonly (keyof PortCounters)[] = ['rxPackets', 'rxBytes', 'txPackets', 'txBytes', 'drops', 'errors']

/** The counters a client's forwarding engine keeps (`IavfPort.forwardStats()`). */
export interface ForwardCounters {
  rxPackets: number
  rxBytes: number
  txPackets: number
  txBytes: number
  txDropped: number
}

/**
 * A sample of one port from a forwarding engine's counters (`null` before the
 * engine started: all zero); TX ring overflows count as drops.
 */
export function forwardSample(stats: ForwardCounters | null, port = '0'): PortSample[] {
  return [
    {
      port,
      counters: {
        rxPackets: stats?.rxPackets ?? 0,
        rxBytes: stats?.rxBytes ?? 0,
        txPackets: stats?.txPackets ?? 0,
        txBytes: stats?.txBytes ?? 0,
        drops: stats?.txDropped ?? 0,
        errors: 0,
      },
    },
  ]
}

/** All-zero counters. */
export function zeroCounters(): PortCounters {
  return { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, drops: 0, errors: 0 }
}

/**
 * `next - prev`, counter by counter. A counter that went backwards was
 * cleared in between: its increase is then its new value.
 */
export function counterDelta(prev: PortCounters, next: PortCounters): PortCounters {
  const out = zeroCounters()
  for (const key of COUNTER_KEYS) {
    out[key] = next[key] >= prev[key] ? next[key] - prev[key] : next[key]
  }
  return out
}

/** `a + b`, counter by counter. */
export function addCounters(a: PortCounters, b: PortCounters): PortCounters {
  const out = zeroCounters()
  for (const key of COUNTER_KEYS) out[key] = a[key] + b[key]
  return out
}

/** The rates between two samples `seconds` apart (zero rates for a non-positive interval). */
export function ratesBetween(prev: PortCounters, next: PortCounters, seconds: number): PortRates {
  const d = counterDelta(prev, next)
  const per = (n: number): number => (seconds > 0 && Number.isFinite(seconds) ? n / seconds : 0)
  return {
    rxPps: per(d.rxPackets),
    rxBps: per(d.rxBytes * 8),
    txPps: per(d.txPackets),
    txBps: per(d.txBytes * 8),
    drops: d.drops,
    errors: d.errors,
  }
}

/**
 * `value` scaled by powers of 1000 into `units` (the first is the base unit):
 * integers in the base unit, three significant digits above it
 * (`'950 pps'`, `'12.3 Mpps'`, `'1.23 Gbit/s'`). Negative, NaN and infinite
 * values print as zero.
 */
function scaled(value: number, units: readonly string[]): string {
  const v = Number.isFinite(value) && value > 0 ? value : 0
  let i = 0
  let x = v
  // Step up while the value, rounded as it would be printed, reaches 1000.
  while (i < units.length - 1 && (i === 0 ? Math.round(x) : Number(x.toPrecision(3))) >= 1000) {
    x /= 1000
    i += 1
  }
  // The base unit, and the largest one past 999, print whole numbers.
  const text = i === 0 || Number(x.toPrecision(3)) >= 1000 ? String(Math.round(x)) : x.toPrecision(3)
  return `${text} ${units[i] ?? ''}`
}

const PPS_UNITS = ['pps', 'Kpps', 'Mpps', 'Gpps', 'Tpps'] as const
const BIT_UNITS = ['bit/s', 'kbit/s', 'Mbit/s', 'Gbit/s', 'Tbit/s'] as const

/** A packet rate: `formatPps(12_345_678) === '12.3 Mpps'`. */
export function formatPps(pps: number): string {
  return scaled(pps, PPS_UNITS)
}

/** A bit rate: `formatBitRate(1_234_000_000) === '1.23 Gbit/s'`. */
export function formatBitRate(bps: number): string {
  return scaled(bps, BIT_UNITS)
}

/** One port's rates on one line: `port 0: rx 12.3 Mpps 6.30 Gbit/s, tx ..., drops 0, errors 0`. */
export function formatRates(port: string, r: PortRates): string {
  return (
    `port ${port}: rx ${formatPps(r.rxPps)} ${formatBitRate(r.rxBps)}, ` +
    `tx ${formatPps(r.txPps)} ${formatBitRate(r.txBps)}, drops ${r.drops}, errors ${r.errors}`
  )
}

/** Elapsed time as `12.0s`. */
function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`
}

/** The escape that returns to column 0 and clears the line (`\r` + CSI 2K). */
export const CLEAR_LINE = '\r\x1b[2K'

/** One port over a whole run. */
export interface PortTotals {
  /** The port's name. */
  port: string
  /** Counter increases from the first sample to the last (a counter cleared in between still adds up). */
  totals: PortCounters
  /** Average rates over the run. */
  average: PortRates
}

/** What a live view saw, from its start to its stop. */
export interface LiveSummary {
  /** From the first sample to the last, in milliseconds. */
  elapsedMs: number
  /** Samples taken (the first one included). */
  samples: number
  /** Per port, in the order the sampling function first returned them. */
  ports: PortTotals[]
  /** Why the view stopped early, if the sampling function threw. */
  error?: string
}

/** The summary as text, one line per port (and a line for an early stop). */
export function formatSummary(s: LiveSummary): string {
  const lines = [`Summary over ${seconds(s.elapsedMs)}:`]
  if (s.ports.length === 0) lines.push('  no ports')
  for (const p of s.ports) {
    const t = p.totals
    lines.push(
      `  port ${p.port}: rx ${t.rxPackets} packets ${t.rxBytes} bytes, tx ${t.txPackets} packets ${t.txBytes} bytes, ` +
        `drops ${t.drops}, errors ${t.errors}; average rx ${formatPps(p.average.rxPps)} ${formatBitRate(p.average.rxBps)}, ` +
        `tx ${formatPps(p.average.txPps)} ${formatBitRate(p.average.txBps)}`,
    )
  }
  if (s.error !== undefined) lines.push(`  stopped early: ${s.error}`)
  return `${lines.join('\n')}\n`
}

/** Where a live view writes; `isTTY` picks the in-place rendering. */
export interface LiveOutput {
  write(text: string): unknown
  isTTY?: boolean
}

/** Options of {@link startLive}. */
export interface LiveOptions {
  /** Returns every port's cumulative counters now. If it throws, the view stops. */
  sample: () => PortSample[]
  /** Where to print. */
  output: LiveOutput
  /** The view stops by itself after this many milliseconds (at most {@link MAX_LIVE_MS}). */
  durationMs: number
  /** Time between two lines (default 1000 ms, at least {@link MIN_INTERVAL_MS}). */
  intervalMs?: number
  /** Rewrite one line in place (default: `output.isTTY`). */
  tty?: boolean
  /** The clock, in milliseconds (default `performance.now`); tests pass their own. */
  now?: () => number
  /** Print the summary when the view stops (default true). */
  printSummary?: boolean
}

/** A running live view. */
export interface LiveView {
  /** Resolves with the summary once the view stopped (by `stop()`, its duration, or a failed sample). */
  readonly done: Promise<LiveSummary>
  /** Whether it stopped. */
  readonly stopped: boolean
  /** Stops now: takes a last sample, clears the timers, prints the summary. Idempotent. */
  stop(): LiveSummary
}

/** The longest a live view may run: one day. */
export const MAX_LIVE_MS = 24 * 60 * 60 * 1000

/** The shortest interval between two lines. */
export const MIN_INTERVAL_MS = 10

/** What a view knows of one port: its latest sample and what it added up since the first. */
interface PortTrack {
  port: string
  firstAt: number
  last: PortCounters
  lastAt: number
  /** Sum of the increases between consecutive samples (so a clear in between loses nothing). */
  total: PortCounters
}

/** Starts a live view; see the module documentation. */
export function startLive(opts: LiveOptions): LiveView {
  const now = opts.now ?? (() => performance.now())
  const tty = opts.tty ?? opts.output.isTTY === true
  const intervalMs = Math.max(MIN_INTERVAL_MS, opts.intervalMs ?? 1000)
  const durationMs = Math.min(MAX_LIVE_MS, Math.max(0, opts.durationMs))
  const tracks: PortTrack[] = []
  const startedAt = now()
  let samples = 0
  let rendered = false
  let error: string | undefined
  let summary: LiveSummary | undefined
  let resolveDone: (s: LiveSummary) => void = () => {}
  const done = new Promise<LiveSummary>((resolve) => {
    resolveDone = resolve
  })

  /** Samples every port; returns the rates since the previous sample, or undefined if the sample failed. */
  const take = (): Array<{ port: string; rates: PortRates }> | undefined => {
    let current: PortSample[]
    try {
      current = opts.sample()
    } catch (err) {
      error = err instanceof Error ? err.message : String(err)
      return undefined
    }
    const at = now()
    samples += 1
    return current.map(({ port, counters }) => {
      const track = tracks.find((t) => t.port === port)
      if (track === undefined) {
        tracks.push({ port, firstAt: at, last: { ...counters }, lastAt: at, total: zeroCounters() })
        return { port, rates: ratesBetween(counters, counters, 0) }
      }
      const rates = ratesBetween(track.last, counters, (at - track.lastAt) / 1000)
      track.total = addCounters(track.total, counterDelta(track.last, counters))
      track.last = { ...counters }
      track.lastAt = at
      return { port, rates }
    })
  }

  const render = (rows: Array<{ port: string; rates: PortRates }>): void => {
    const stamp = `[${seconds(now() - startedAt).padStart(7)}]`
    if (tty) {
      opts.output.write(`${CLEAR_LINE}${stamp} ${rows.map((r) => formatRates(r.port, r.rates)).join(' | ')}`)
    } else {
      for (const r of rows) opts.output.write(`${stamp} ${formatRates(r.port, r.rates)}\n`)
    }
    rendered = true
  }

  const tick = (): void => {
    const rows = take()
    if (rows === undefined) {
      stop()
      return
    }
    render(rows)
  }

  const stop = (): LiveSummary => {
    if (summary !== undefined) return summary
    clearInterval(interval)
    clearTimeout(deadline)
    if (error === undefined) take()
    summary = summarize(tracks, samples, error)
    if (tty && rendered) opts.output.write('\n')
    if (opts.printSummary !== false) opts.output.write(formatSummary(summary))
    resolveDone(summary)
    return summary
  }

  take() // the baseline
  const interval = setInterval(tick, intervalMs)
  const deadline = setTimeout(stop, durationMs)
  if (error !== undefined) stop()
  return {
    done,
    get stopped() {
      return summary !== undefined
    },
    stop,
  }
}

/** Totals and average rates of every tracked port. */
function summarize(tracks: readonly PortTrack[], samples: number, error: string | undefined): LiveSummary {
  const ports = tracks.map((t) => ({
    port: t.port,
    totals: t.total,
    average: ratesBetween(zeroCounters(), t.total, (t.lastAt - t.firstAt) / 1000),
  }))
  const elapsedMs = tracks.reduce((max, t) => Math.max(max, t.lastAt - t.firstAt), 0)
  const summary: LiveSummary = { elapsedMs, samples, ports }
  if (error !== undefined) summary.error = error
  return summary
}
