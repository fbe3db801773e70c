// The live statistics view (src/live.ts): rates and units from fixed samples, TTY and plain output.
import { PassThrough } from 'node:stream'

import test from 'ava'

import {
  forwardSample,
  CLEAR_LINE,
  counterDelta,
  formatBitRate,
  formatPps,
  formatRates,
  formatSummary,
  ratesBetween,
  startLive,
  zeroCounters,
  type PortCounters,
  type PortSample,
} from '../src/live'
import { sleep, waitFor } from './helpers'

/** A writable that remembers what was written, with `isTTY` as given. */
function sink(isTTY: boolean): { stream: PassThrough & { isTTY: boolean }; text: () => string } {
  const stream = Object.assign(new PassThrough(), { isTTY })
  let text = ''
  stream.setEncoding('utf8').on('data', (chunk: string) => {
    text += chunk
  })
  return { stream, text: () => text }
}

/** Counters with the given packet counts and 64-byte frames. */
function frames(rx: number, tx: number, drops = 0, errors = 0): PortCounters {
  return { rxPackets: rx, rxBytes: rx * 64, txPackets: tx, txBytes: tx * 64, drops, errors }
}

test('units: three significant digits above the base unit, integers in it', (t) => {
  t.is(formatPps(12_345_678), '12.3 Mpps')
  t.is(formatPps(1_234_567), '1.23 Mpps')
  t.is(formatPps(123_456_789), '123 Mpps')
  t.is(formatPps(999), '999 pps')
  t.is(formatPps(999.6), '1.00 Kpps')
  t.is(formatPps(1000), '1.00 Kpps')
  t.is(formatPps(999_999), '1.00 Mpps')
  t.is(formatPps(0), '0 pps')
  t.is(formatPps(0.4), '0 pps')
  t.is(formatBitRate(1_234_000_000), '1.23 Gbit/s')
  t.is(formatBitRate(10_000_000_000), '10.0 Gbit/s')
  t.is(formatBitRate(512_000), '512 kbit/s')
  t.is(formatBitRate(100), '100 bit/s')
  t.is(formatBitRate(2e15), '2000 Tbit/s', 'the largest unit keeps growing')
  for (const bad of [Number.NaN, -5, Number.POSITIVE_INFINITY]) t.is(formatPps(bad), '0 pps')
})

test('rates from two samples: per second over the interval; drops and errors as counts', (t) => {
  const r = ratesBetween(frames(1000, 500, 1, 0), frames(3000, 4500, 4, 2), 2)
  t.deepEqual(r, { rxPps: 1000, rxBps: 1000 * 64 * 8, txPps: 2000, txBps: 2000 * 64 * 8, drops: 3, errors: 2 })
  t.is(formatRates('0', r), 'port 0: rx 1.00 Kpps 512 kbit/s, tx 2.00 Kpps 1.02 Mbit/s, drops 3, errors 2')
  // No time passed: no rates, but the counts still show.
  t.deepEqual(ratesBetween(frames(0, 0), frames(10, 0, 1), 0), { rxPps: 0, rxBps: 0, txPps: 0, txBps: 0, drops: 1, errors: 0 })
})

test('a counter that went backwards was cleared: its increase is its new value', (t) => {
  t.deepEqual(counterDelta(frames(100, 100, 5), frames(30, 150, 1)), frames(30, 50, 1))
  t.deepEqual(counterDelta(frames(7, 7), frames(7, 7)), zeroCounters())
})

test('on a TTY: one line rewritten in place, then a newline and the summary', async (t) => {
  const out = sink(true)
  let n = 0
  const view = startLive({
    sample: () => {
      n += 1
      return [
        { port: '0', counters: frames(n * 1000, n * 1000) },
        { port: '1', counters: frames(n * 10, 0) },
      ]
    },
    output: out.stream,
    intervalMs: 15,
    durationMs: 150,
  })
  const summary = await view.done
  t.true(view.stopped)
  const text = out.text()
  const [live = '', ...rest] = text.split('\n')
  t.true(live.startsWith(CLEAR_LINE), JSON.stringify(text))
  const frames_ = live.split(CLEAR_LINE).slice(1)
  t.true(frames_.length >= 2, JSON.stringify(text))
  for (const f of frames_) t.regex(f, /^\[ *\d+\.\ds\] port 0: rx .* \| port 1: rx .*, errors 0$/)
  t.is(rest.join('\n'), formatSummary(summary), 'the summary follows the live line')
  t.is(summary.ports.length, 2)
  t.is(summary.samples, n)
  t.is(summary.ports[0]?.totals.rxPackets, (n - 1) * 1000)
})

test('not on a TTY: plain lines, one per port and interval, no escapes', async (t) => {
  const out = sink(false)
  let n = 0
  const view = startLive({
    sample: (): PortSample[] => {
      n += 1
      return [
        { port: '0', counters: frames(n * 5, n * 5) },
        { port: '3', counters: frames(0, n) },
      ]
    },
    output: out.stream,
    intervalMs: 15,
    durationMs: 150,
  })
  const summary = await view.done
  const text = out.text()
  t.false(text.includes('\r'))
  t.false(text.includes('\x1b'))
  const live = text.slice(0, text.length - formatSummary(summary).length)
  t.true(text.endsWith(formatSummary(summary)))
  const lines = live.split('\n').filter((l) => l.length > 0)
  t.true(lines.length >= 4, text)
  t.is(lines.length % 2, 0, 'each interval prints both ports')
  for (const [i, line] of lines.entries()) {
    const rate = '[\\d.]+ [KMGT]?pps [\\d.]+ [kMGT]?bit/s'
    t.regex(line, new RegExp(`^\\[ *\\d+\\.\\ds\\] port ${i % 2 === 0 ? 0 : 3}: rx ${rate}, tx ${rate}, drops 0, errors 0$`))
  }
})

test('stop() ends it early, clears its timers and is idempotent', async (t) => {
  const out = sink(false)
  let calls = 0
  const view = startLive({
    sample: () => {
      calls += 1
      return [{ port: '0', counters: frames(calls, calls) }]
    },
    output: out.stream,
    intervalMs: 10,
    durationMs: 60_000,
  })
  t.true(await waitFor(() => calls >= 3, 5000))
  const first = view.stop()
  const written = out.text().length
  const callsAtStop = calls
  await sleep(80)
  t.is(calls, callsAtStop, 'no sample after stop')
  t.is(out.text().length, written, 'nothing written after stop')
  t.is(view.stop(), first)
  t.is(await view.done, first)
  t.true(out.text().endsWith(formatSummary(first)))
})

test('the summary adds up increases across a clear, and averages over the elapsed time', async (t) => {
  const values = [0, 100, 200, 50, 150] // cleared after 200
  let calls = 0
  const out = sink(false)
  const view = startLive({
    sample: () => {
      const v = values[Math.min(calls, values.length - 1)] ?? 0
      calls += 1
      return [{ port: '0', counters: frames(v, 0) }]
    },
    output: out.stream,
    intervalMs: 10,
    durationMs: 60_000,
  })
  t.true(await waitFor(() => calls >= values.length, 5000))
  const s = view.stop()
  t.is(s.ports[0]?.totals.rxPackets, 100 + 100 + 50 + 100)
  t.is(s.ports[0]?.totals.rxBytes, 350 * 64)

  // A clock of our own: 2000 packets in 2 s.
  let now = 0
  let rx = 0
  const timed = startLive({
    sample: () => [{ port: 'a', counters: frames(rx, 0) }],
    output: sink(false).stream,
    durationMs: 60_000,
    now: () => now,
  })
  now = 2000
  rx = 2000
  const avg = timed.stop()
  t.is(avg.elapsedMs, 2000)
  t.is(avg.ports[0]?.average.rxPps, 1000)
  t.is(avg.ports[0]?.average.rxBps, 1000 * 64 * 8)
  t.regex(formatSummary(avg), /^Summary over 2\.0s:\n {2}port a: rx 2000 packets 128000 bytes, tx 0 packets 0 bytes, drops 0, errors 0; average rx 1\.00 Kpps 512 kbit\/s, tx 0 pps 0 bit\/s\n$/)
})

test('a sampling function that throws stops the view with the reason', async (t) => {
  const out = sink(false)
  let calls = 0
  const view = startLive({
    sample: () => {
      calls += 1
      if (calls > 2) throw new Error('server closed')
      return [{ port: '0', counters: frames(calls, 0) }]
    },
    output: out.stream,
    intervalMs: 10,
    durationMs: 60_000,
  })
  const s = await view.done
  t.is(s.error, 'server closed')
  t.is(calls, 3)
  t.is(s.ports[0]?.totals.rxPackets, 1)
  t.true(out.text().endsWith('  stopped early: server closed\n'))
})

test('a sampling function that fails at once stops before any timer fires', async (t) => {
  const view = startLive({
    sample: () => {
      throw new Error('no ports')
    },
    output: sink(false).stream,
    intervalMs: 10,
    durationMs: 60_000,
  })
  t.true(view.stopped)
  const s = await view.done
  t.is(s.error, 'no ports')
  t.is(s.samples, 0)
})

test('forwardSample: a forwarding engine as one port, TX ring overflows as drops, zeros before it started', (t) => {
  t.deepEqual(forwardSample({ rxPackets: 5, rxBytes: 320, txPackets: 6, txBytes: 384, txDropped: 1 }, '3'), [
    { port: '3', counters: { rxPackets: 5, rxBytes: 320, txPackets: 6, txBytes: 384, drops: 1, errors: 0 } },
  ])
  t.deepEqual(forwardSample(null), [{ port: '0', counters: { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, drops: 0, errors: 0 } }])
})
