#!/usr/bin/env node
/**
 * The `emudev` command.
 *
 * Exit codes: 0 success, 1 a command failed (e.g. a socket in use), 2 bad
 * usage (unknown command or option, missing or malformed value, bad `--vdev`,
 * a driver that cannot be served yet). Errors are one line on stderr naming
 * the bad part; help goes to stdout.
 *
 * `emudev serve` runs in the foreground: it logs to stderr when each device
 * listens and when clients come and go (polled every 500 ms), and on SIGINT
 * or SIGTERM closes every server, which removes its socket, and exits 0.
 *
 * `emudev serve --script <file> --sock <path>` serves a device written in
 * TypeScript or JavaScript: the file's default export is a `PciDevice`, a
 * `PciDeviceSpec`, or a function (or class) returning one. `.ts` files are
 * loaded through tsx.
 *
 * `emudev serve --vdev 'emu_iavf0,sock=<path>,queues=N[,mac=..][,mtu=..]'`
 * serves an emulated iavf VF; besides clients coming and going it logs the
 * link events sent to the driver, and on stop one line of counters per device.
 *
 * `emudev client --vdev 'iavf_client,path=<path>[,queues=N]' [--json]` brings
 * an iavf VF up with the native client driver, prints one aligned line per
 * bring-up step with its duration, the link state and the VSI counters, shuts
 * the VF down and exits 0 (1 if the bring-up failed, with one line on stderr).
 *
 * `emudev inspect <path> [--json]` connects to any vfio-user server and prints
 * its device info, regions, IRQs and decoded PCI config space, like
 * `lspci -vv`; it only reads (see `src/inspect.ts`). A connection that fails
 * exits 1 with one line.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { parseVdevList, VdevError, DRIVERS, allowedKeys } from './config'
import type { ServeHandle, ServedDevice } from './server'

/** Where the CLI writes; `main` takes it so tests can capture output. */
export interface CliIo {
  stdout: (text: string) => void
  stderr: (text: string) => void
}

const EXIT_OK = 0
const EXIT_FAILURE = 1
const EXIT_USAGE = 2

/** Raised for bad usage; `main` turns it into one line on stderr and exit code 2. */
class UsageError extends Error {}

type OptionSpec = { type: 'boolean' | 'string'; short?: string; multiple?: boolean }

const GLOBAL_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
}

const SERVE_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  vdev: { type: 'string', multiple: true },
  script: { type: 'string' },
  sock: { type: 'string' },
  interactive: { type: 'boolean', short: 'i' },
  trace: { type: 'string' },
}

const CLIENT_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  vdev: { type: 'string', multiple: true },
  json: { type: 'boolean' },
  fwd: { type: 'string' },
  duration: { type: 'string' },
  'tx-first': { type: 'string' },
  'frame-len': { type: 'string' },
  trace: { type: 'string' },
}

/** The forwarding engines of `emudev client --fwd`. */
const FWD_MODES = ['io', 'macswap', 'rxonly', 'txonly'] as const

const INSPECT_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' },
}

const HELP = `Usage: emudev <command> [options]

Userspace PCI device emulation over vfio-user.

Commands:
  serve     serve emulated devices on vfio-user sockets
  client    bring up a device with a client driver (iavf_client)
  inspect   show a vfio-user device: info, regions, IRQs, PCI config space

Options:
  -h, --help       show this help (or a command's help: emudev serve --help)
  -V, --version    print the package and native addon versions
`

function serveHelp(): string {
  const drivers = DRIVERS.map((d) => `  ${d.padEnd(12)} keys: ${allowedKeys(d).join(', ')}`).join('\n')
  return `Usage: emudev serve --vdev <device> [--vdev <device> ...]
       emudev serve --script <file> --sock <path>

Serve each device on its own vfio-user UNIX socket.

Options:
  --vdev <device>  a device string <driver><instance>[,key=value]...,
                   e.g. 'emu_edu0,sock=/tmp/edu.sock'; repeatable
  --script <file>  a device written in TypeScript or JavaScript: the file's
                   default export is a PciDevice, a PciDeviceSpec, or a
                   function returning one (e.g. examples/edu.ts)
  --sock <path>    the socket to serve a --script device on
  -i, --interactive
                   an emudev> prompt on stdin, like testpmd's (help lists its
                   commands); a piped script runs and exits 1 if a command failed
  --trace <file>   write every vfio-user message, decoded, as JSON lines
  -h, --help       show this help

Drivers:
${drivers}
  backend= of emu_iavf attaches the software data path: loopback, macswap,
  rxonly, txonly[:LEN], pair:<peer>, pcap:<file>, pcap-replay:<file>, channel

Examples:
  emudev serve --vdev 'emu_iavf0,sock=/tmp/sock1,queues=1,backend=loopback'
  emudev serve --vdev 'emu_iavf0,sock=/tmp/s0,backend=pair:emu_iavf1' --vdev 'emu_iavf1,sock=/tmp/s1,backend=pair:emu_iavf0'
  emudev serve -i --vdev 'emu_iavf0,sock=/tmp/sock1'      (then: port attach net_iavfbe,emu=emu_iavf0)
`
}

function clientHelp(): string {
  return `Usage: emudev client --vdev 'iavf_client,path=<socket>[,queues=N]' [--fwd MODE] [--duration S] [--json]

Bring up the iavf VF served on <socket> with the iavf client driver: print each
bring-up step with its duration and the link state; with --fwd, run a testpmd
forwarding engine on every queue pair with a live rate line; then print the
VSI counters, shut the VF down and exit (0 on success, 1 if the bring-up
failed).

Options:
  --vdev <device>    the client device string: iavf_client[N],path=<socket>[,queues=N]
                     (queues: queue pairs to bring up, 1-16, default 1)
  --fwd <mode>       io (send back what arrives), macswap (the same, MACs swapped),
                     rxonly (count and drop), txonly (send generated frames)
  --duration <s>     stop forwarding after s seconds (default: at Ctrl-C)
  --tx-first <n>     bursts of 32 generated frames sent first (default 16 for io
                     and macswap, else 0), as testpmd's 'start tx_first'
  --frame-len <n>    bytes of the generated UDP frame, 60-9000 (default 64)
  --trace <file>     append every vfio-user message, decoded, as JSON lines
  --json             print one JSON object instead of text
  -h, --help         show this help

Examples:
  emudev client --vdev 'iavf_client,path=/tmp/sock1'
  emudev client --vdev 'iavf_client,path=/tmp/sock1' --fwd io --duration 5
`
}

const INSPECT_HELP = `Usage: emudev inspect <socket> [--json]

Connect to the vfio-user server on <socket> (emudev's or any other) and print,
like lspci -vv: the device info, the regions (size, flags, mmap areas), the
IRQ indexes, and PCI config space decoded: ids, class, command and status,
BARs (sizes from the region info), interrupt pin and the capabilities (PM,
MSI, MSI-X, PCI Express, extended capabilities). It only reads: nothing is
written to the device.

Options:
  --json      print one JSON object instead of text
  -h, --help  show this help

Examples:
  emudev inspect /tmp/edu.sock
  emudev inspect /tmp/sock1 --json
`

/**
 * Parses `args` against `options`, reporting unknown options and missing or
 * unexpected values as {@link UsageError}s with our own one-line wording.
 */
function parseOptions(
  args: string[],
  options: Record<string, OptionSpec>,
  context: string,
): { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] } {
  const { values, positionals, tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true })
  for (const token of tokens) {
    if (token.kind !== 'option') continue
    const spec = Object.prototype.hasOwnProperty.call(options, token.name) ? options[token.name] : undefined
    if (spec === undefined) throw new UsageError(`${context}: unknown option '${token.rawName}'`)
    if (spec.type === 'string' && token.value === undefined) {
      throw new UsageError(`${context}: option '${token.rawName}' needs a value`)
    }
    if (spec.type === 'boolean' && token.value !== undefined) {
      throw new UsageError(`${context}: option '${token.rawName}' takes no value`)
    }
  }
  return { values, positionals }
}

function packageVersion(): string {
  // `__dirname` is src/ under tsx and dist/ when built; package.json is one level up from both.
  const pkg: unknown = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8'))
  const version = (pkg as { version?: unknown }).version
  return typeof version === 'string' ? version : 'unknown'
}

function nativeVersion(): string {
  // Loaded lazily: --help and usage errors work even without a built addon.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { native } = require('./native') as typeof import('./native')
  return native.nativeVersion()
}

/** How often `serve` looks at the servers' counters to log client changes. */
const STATS_POLL_MS = 500

/** What `serve` last saw of one device, to log only changes. */
interface SeenStats {
  clients: number
  connected: boolean
  /** iavf: LINK_CHANGE events sent so far. */
  linkEvents: number
}

/** Logs client arrivals and departures of `devices` since `seen`, updating it. */
function logClientChanges(handle: ServeHandle, seen: SeenStats[], io: CliIo): void {
  for (const [i, dev] of handle.devices.entries()) {
    const before = seen[i]
    if (before === undefined) continue
    let now
    try {
      now = dev.server.stats()
    } catch {
      continue // closed meanwhile
    }
    const arrived = now.clients > before.clients
    if (arrived) io.stderr(`emudev: ${dev.name}: client connected\n`)
    // Link events before a departure: a client that came and went within one poll saw them first.
    let linkEvents = before.linkEvents
    if (dev.driver === 'emu_iavf') {
      try {
        linkEvents = dev.server.iavfStats().linkEvents
        if (linkEvents > before.linkEvents) {
          const up = dev.server.iavfState().linkUp
          const n = linkEvents - before.linkEvents
          io.stderr(`emudev: ${dev.name}: link ${up ? 'up' : 'down'} reported to the driver${n > 1 ? ` (${n} link events)` : ''}\n`)
        }
      } catch {
        // closed meanwhile
      }
    }
    if (!now.connected && (before.connected || arrived)) {
      io.stderr(`emudev: ${dev.name}: client disconnected (${now.messages} messages, ${now.errors} errors so far)\n`)
    }
    seen[i] = { clients: now.clients, connected: now.connected, linkEvents }
  }
}

/** How `serve` names a device when it starts listening. */
function describe(dev: ServedDevice): string {
  if (dev.iavf === undefined) return dev.server.device
  const { queues, mac, mtu } = dev.iavf
  return `${dev.server.device}, ${queues} queue pair${queues === 1 ? '' : 's'}, mac ${mac}, mtu ${mtu}`
}

/** Waits for the first SIGINT or SIGTERM from the moment it is created. */
interface StopSignal {
  /** Resolves with the signal's name. */
  readonly received: Promise<NodeJS.Signals>
  /** Stops listening (without resolving). */
  cancel(): void
}

/**
 * Starts listening for SIGINT and SIGTERM. Listening starts before any server
 * does, so a signal that arrives while they start is not lost (nor fatal):
 * the servers stop as soon as they have started.
 */
function stopSignal(): StopSignal {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM']
  let onSignal: (signal: NodeJS.Signals) => void = () => {}
  const cancel = (): void => {
    for (const s of signals) process.off(s, onSignal)
  }
  const received = new Promise<NodeJS.Signals>((resolve) => {
    onSignal = (signal) => {
      cancel()
      resolve(signal)
    }
  })
  for (const s of signals) process.on(s, onSignal)
  return { received, cancel }
}

async function serveCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseOptions(args, SERVE_OPTIONS, 'emudev serve')
  if (values.help === true) {
    io.stdout(serveHelp())
    return EXIT_OK
  }
  if (positionals.length > 0) throw new UsageError(`emudev serve: unexpected argument '${positionals[0]}'`)
  const strings = (values.vdev ?? []) as string[]
  if (typeof values.script === 'string') {
    if (strings.length > 0) throw new UsageError('emudev serve: --script and --vdev cannot be combined')
    if (typeof values.sock !== 'string') throw new UsageError("emudev serve: --script needs --sock (e.g. --sock /tmp/dev.sock)")
    return serveScript(values.script, values.sock, io)
  }
  if (values.sock !== undefined) throw new UsageError('emudev serve: --sock goes with --script (use sock= in --vdev)')
  const traceFile = typeof values.trace === 'string' ? values.trace : undefined
  if (strings.length === 0) throw new UsageError("emudev serve: at least one --vdev is required (e.g. --vdev 'emu_edu0,sock=/tmp/edu.sock')")
  let vdevs
  try {
    vdevs = parseVdevList(strings)
  } catch (err) {
    if (err instanceof VdevError) throw new UsageError(`emudev serve: --vdev '${err.vdev}': ${err.message}`)
    throw err
  }
  // Loaded here: --help and usage errors work even without a built addon.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { serve, statsSummary, ServeError, DRIVER_UNAVAILABLE_CODE } = require('./server') as typeof import('./server')
  const stop = stopSignal()
  let handle: ServeHandle
  try {
    handle = await serve(vdevs)
  } catch (err) {
    stop.cancel()
    if (err instanceof ServeError) {
      io.stderr(`emudev serve: ${err.message}\n`)
      return err.code === DRIVER_UNAVAILABLE_CODE ? EXIT_USAGE : EXIT_FAILURE
    }
    throw err
  }
  for (const dev of handle.devices) io.stderr(`emudev: ${dev.name} (${describe(dev)}) listening on ${dev.path}\n`)
  if (traceFile !== undefined) {
    try {
      writeFileSync(traceFile, '')
      for (const dev of handle.devices) dev.server.traceStart(traceFile, dev.name)
      io.stderr(`emudev: tracing vfio-user messages to ${traceFile}\n`)
    } catch (err) {
      stop.cancel()
      await handle.close()
      io.stderr(`emudev serve: --trace ${traceFile}: ${err instanceof Error ? err.message : String(err)}\n`)
      return EXIT_FAILURE
    }
  }
  const seen: SeenStats[] = handle.devices.map(() => ({ clients: 0, connected: false, linkEvents: 0 }))
  if (values.interactive === true) {
    // The shell owns the terminal: no client-change log lines under the prompt.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { runShell } = require('./shell') as typeof import('./shell')
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { ServeShellHost } = require('./shell-host') as typeof import('./shell-host')
    const abort = new AbortController()
    void stop.received.then(() => abort.abort())
    const failed = await runShell(new ServeShellHost(handle), process.stdin, process.stdout, { signal: abort.signal })
    stop.cancel()
    await handle.close()
    io.stderr('emudev: stopped\n')
    return failed === 0 ? EXIT_OK : EXIT_FAILURE
  }
  const timer = setInterval(() => logClientChanges(handle, seen, io), STATS_POLL_MS)
  const signal = await stop.received
  clearInterval(timer)
  logClientChanges(handle, seen, io)
  io.stderr(`emudev: ${signal}, stopping\n`)
  for (const dev of handle.devices) {
    try {
      io.stderr(`emudev: ${dev.name}: ${statsSummary(dev)}\n`)
    } catch {
      // No counters to show.
    }
  }
  await handle.close()
  io.stderr('emudev: stopped\n')
  return EXIT_OK
}

/** Milliseconds with three decimals, from microseconds. */
function ms(micros: number): string {
  return (micros / 1000).toFixed(3)
}

/** The widest step name (`VIRTCHNL_OP_CONFIG_VSI_QUEUES`), so step lines align. */
const STEP_WIDTH = 30

async function clientCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseOptions(args, CLIENT_OPTIONS, 'emudev client')
  if (values.help === true) {
    io.stdout(clientHelp())
    return EXIT_OK
  }
  if (positionals.length > 0) throw new UsageError(`emudev client: unexpected argument '${positionals[0]}'`)
  const strings = (values.vdev ?? []) as string[]
  if (strings.length !== 1) {
    throw new UsageError("emudev client: exactly one --vdev is required (e.g. --vdev 'iavf_client,path=/tmp/sock1')")
  }
  let vdevs
  try {
    vdevs = parseVdevList(strings)
  } catch (err) {
    if (err instanceof VdevError) throw new UsageError(`emudev client: --vdev '${err.vdev}': ${err.message}`)
    throw err
  }
  const dev = vdevs[0]
  if (dev === undefined || dev.driver !== 'iavf_client') {
    throw new UsageError(`emudev client: --vdev must be an iavf_client device (got '${strings[0]}')`)
  }
  const json = values.json === true
  const fwd = parseFwdOptions(values)
  // Loaded here: --help and usage errors work even without a built addon.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { IavfPort } = require('./iavf') as typeof import('./iavf')
  const queues = dev.args.queues ?? 1
  // With --fwd, rings of 1024 as testpmd's loopback runs use: the 512 frames of tx_first 16 then
  // never find an RX ring full.
  const options = { queues, ...(fwd === undefined ? {} : { ringLen: 1024 }), ...(typeof values.trace === 'string' ? { trace: values.trace } : {}) }
  const port = new IavfPort(dev.args.path, options)
  if (!json) {
    io.stdout(`${dev.name}: bringing up the iavf VF on ${dev.args.path} (${queues} queue pair${queues === 1 ? '' : 's'})\n`)
    let n = 0
    port.on('step', (s) => {
      n += 1
      io.stdout(`  ${String(n).padStart(2)}  ${s.step.padEnd(STEP_WIDTH)} ${ms(s.micros).padStart(9)} ms  ${s.detail}\n`)
    })
  }
  try {
    const up = await port.start()
    const total = up.steps.reduce((sum, s) => sum + s.micros, 0)
    const link = up.link.up ? `link up${up.link.speedMbps === null ? '' : `, ${up.link.speedMbps} Mbps`}` : 'link down'
    if (!json) io.stdout(`${dev.name}: ${link}, mac ${up.mac}, bring-up ${ms(total)} ms\n`)
    const forwarded = fwd === undefined ? undefined : await runForwarding(port, dev.name, fwd, json, io)
    const stats = await port.stats()
    if (json) {
      io.stdout(
        `${JSON.stringify({ device: dev.name, path: dev.args.path, queues, link: up.link, mac: up.mac, totalMicros: total, steps: up.steps, stats, ...(forwarded === undefined ? {} : { forward: forwarded }) })}\n`,
      )
    } else {
      io.stdout(
        `${dev.name}: stats: rx ${stats.rxBytes} bytes, ${stats.rxUnicast} unicast, ${stats.rxMulticast} multicast, ` +
          `${stats.rxBroadcast} broadcast, ${stats.rxDiscards} discards; tx ${stats.txBytes} bytes, ${stats.txUnicast} unicast, ` +
          `${stats.txMulticast} multicast, ${stats.txBroadcast} broadcast, ${stats.txDiscards} discards, ${stats.txErrors} errors\n`,
      )
    }
    return EXIT_OK
  } catch (err) {
    const code = (err as { code?: unknown }).code
    const message = err instanceof Error ? err.message : String(err)
    io.stderr(`emudev client: ${dev.name}: ${message}${typeof code === 'string' ? ` (${code})` : ''}\n`)
    return EXIT_FAILURE
  } finally {
    await port.close()
  }
}

/** What `--fwd`, `--duration`, `--tx-first` and `--frame-len` asked for. */
interface FwdRequest {
  mode: (typeof FWD_MODES)[number]
  /** Undefined: until SIGINT/SIGTERM. */
  durationMs: number | undefined
  txFirst: number
  frameLen: number
}

/** An integer option in `[lo, hi]`, or a usage error naming it. */
function intOption(name: string, value: unknown, lo: number, hi: number): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (typeof value !== 'string' || value.trim() === '' || !Number.isInteger(n) || n < lo || n > hi) {
    throw new UsageError(`emudev client: --${name} must be an integer from ${lo} to ${hi} (got '${String(value)}')`)
  }
  return n
}

function parseFwdOptions(values: Record<string, unknown>): FwdRequest | undefined {
  const mode = values.fwd
  if (mode === undefined) {
    for (const k of ['duration', 'tx-first', 'frame-len']) {
      if (values[k] !== undefined) throw new UsageError(`emudev client: --${k} goes with --fwd`)
    }
    return undefined
  }
  if (!FWD_MODES.includes(mode as (typeof FWD_MODES)[number])) {
    throw new UsageError(`emudev client: --fwd must be one of ${FWD_MODES.join(', ')} (got '${String(mode)}')`)
  }
  const m = mode as (typeof FWD_MODES)[number]
  const seconds = values.duration === undefined ? undefined : Number(values.duration)
  if (seconds !== undefined && (typeof values.duration !== 'string' || !Number.isFinite(seconds) || seconds <= 0 || seconds > 86_400)) {
    throw new UsageError(`emudev client: --duration must be seconds, more than 0 and at most 86400 (got '${String(values.duration)}')`)
  }
  return {
    mode: m,
    durationMs: seconds === undefined ? undefined : Math.round(seconds * 1000),
    // io and macswap have nothing to forward until something is sent (testpmd's start tx_first).
    txFirst: intOption('tx-first', values['tx-first'], 0, 1024) ?? (m === 'io' || m === 'macswap' ? 16 : 0),
    frameLen: intOption('frame-len', values['frame-len'], 60, 9000) ?? 64,
  }
}

/** The forward summary `--json` prints and the text mode describes. */
interface ForwardSummary {
  mode: string
  seconds: number
  rxPackets: number
  rxBytes: number
  txPackets: number
  txBytes: number
  txDropped: number
  rxMpps: number
  rxGbps: number
}

/** Runs the forwarding engine with a live view until its duration or a signal. */
async function runForwarding(
  port: import('./iavf').IavfPort,
  name: string,
  req: FwdRequest,
  json: boolean,
  io: CliIo,
): Promise<ForwardSummary> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { startLive, forwardSample, MAX_LIVE_MS } = require('./live') as typeof import('./live')
  const stop = stopSignal()
  const options = { mode: req.mode, txFirst: req.txFirst, frameLen: req.frameLen, ...(req.durationMs === undefined ? {} : { durationMs: req.durationMs }) }
  if (!json) {
    const until = req.durationMs === undefined ? 'until Ctrl-C' : `for ${req.durationMs / 1000} s`
    io.stdout(`${name}: forwarding (${req.mode}${req.txFirst > 0 ? `, tx_first ${req.txFirst}` : ''}, ${req.frameLen}-byte frames) ${until}\n`)
  }
  const running = port.forward(options)
  void stop.received.then(() => port.stopForward())
  const live = json
    ? undefined
    : startLive({
        sample: () => forwardSample(port.forwardStats()),
        output: { write: (t: string) => io.stdout(t), isTTY: process.stdout.isTTY === true },
        durationMs: (req.durationMs ?? MAX_LIVE_MS) + 5000,
        printSummary: false,
      })
  try {
    const r = await running
    live?.stop()
    const summary: ForwardSummary = {
      mode: req.mode,
      seconds: r.seconds,
      rxPackets: r.rxPackets,
      rxBytes: r.rxBytes,
      txPackets: r.txPackets,
      txBytes: r.txBytes,
      txDropped: r.txDropped,
      rxMpps: r.seconds > 0 ? r.rxPackets / r.seconds / 1e6 : 0,
      rxGbps: r.seconds > 0 ? (r.rxBytes * 8) / r.seconds / 1e9 : 0,
    }
    if (r.rxPackets === 0 && r.txPackets > 0) {
      io.stderr(
        `${name}: nothing came back: the device moves no packets without a data path ` +
          `(serve it with backend=..., or 'port attach net_iavfbe,emu=<dev>' in 'emudev serve -i')\n`,
      )
    }
    if (!json) {
      io.stdout(
        `${name}: forwarded for ${r.seconds.toFixed(2)} s: rx ${r.rxPackets} packets (${summary.rxMpps.toFixed(3)} Mpps, ` +
          `${summary.rxGbps.toFixed(2)} Gbit/s), tx ${r.txPackets} packets, ${r.txDropped} dropped (TX ring full)\n`,
      )
    }
    return summary
  } finally {
    live?.stop()
    stop.cancel()
  }
}

async function inspectCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseOptions(args, INSPECT_OPTIONS, 'emudev inspect')
  if (values.help === true) {
    io.stdout(INSPECT_HELP)
    return EXIT_OK
  }
  const [path, extra] = positionals
  if (path === undefined) throw new UsageError('emudev inspect: missing socket path (e.g. emudev inspect /tmp/edu.sock)')
  if (extra !== undefined) throw new UsageError(`emudev inspect: unexpected argument '${extra}'`)
  // Loaded here: --help and usage errors work even without a built addon.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { inspect, formatReport, reportToJson } = require('./inspect') as typeof import('./inspect')
  let report
  try {
    report = await inspect(path)
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code
    const message = (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, ' ')
    io.stderr(`emudev inspect: ${path}: ${typeof code === 'string' ? `${code} ` : ''}${message}\n`)
    return EXIT_FAILURE
  }
  io.stdout(values.json === true ? `${reportToJson(report)}\n` : formatReport(report))
  return EXIT_OK
}

/** A script could not be loaded or did not export a device; exit code 1. */
class ScriptError extends Error {}

/** What `serve --script` needs of a device (a `PciDevice`, possibly from another copy of this package). */
interface ScriptDevice {
  readonly name: string
  listen(path: string): Promise<unknown>
  close(): Promise<void>
  on(event: 'connected' | 'disconnected', listener: () => void): unknown
  stats(): { messages: number; errors: number }
}

function isScriptDevice(v: unknown): v is ScriptDevice {
  const d = v as Partial<Record<keyof ScriptDevice, unknown>> | null
  return (
    typeof d === 'object' &&
    d !== null &&
    typeof d.listen === 'function' &&
    typeof d.close === 'function' &&
    typeof d.on === 'function' &&
    typeof d.stats === 'function'
  )
}

let typeScriptLoader: 'unset' | 'registered' = 'unset'

/** Lets `require` load `.ts` files, through tsx's CommonJS loader. */
function registerTypeScript(file: string): void {
  if (typeScriptLoader === 'registered') return
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const api = require('tsx/cjs/api') as { register: () => unknown }
    api.register()
    typeScriptLoader = 'registered'
  } catch {
    throw new ScriptError(`${file}: loading TypeScript needs the tsx package (npm install --save-dev tsx), or pass compiled JavaScript`)
  }
}

/** Loads `file` and turns its default export into a device. */
async function loadScriptDevice(file: string): Promise<ScriptDevice> {
  const path = resolve(file)
  if (!existsSync(path)) throw new ScriptError(`${file}: no such file`)
  if (/\.[cm]?ts$/.test(path)) registerTypeScript(file)
  let mod: unknown
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(path)
  } catch (err) {
    throw new ScriptError(`${file}: ${err instanceof Error ? err.message : String(err)}`)
  }
  let exported = (mod as { default?: unknown } | null)?.default ?? mod
  if (typeof exported === 'function') {
    const fn = exported as (new () => unknown) & (() => unknown)
    exported = /^class\b/.test(Function.prototype.toString.call(fn)) ? new fn() : await fn()
  }
  if (isScriptDevice(exported)) return exported
  const spec = exported as { ids?: unknown; bars?: unknown; handlers?: unknown } | null
  if (typeof spec === 'object' && spec !== null && spec.ids !== undefined && spec.handlers !== undefined) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { PciDevice } = require('./device') as typeof import('./device')
    return new PciDevice(spec as import('./device').PciDeviceSpec)
  }
  throw new ScriptError(`${file}: the default export must be a PciDevice, a PciDeviceSpec, or a function returning one`)
}

async function serveScript(file: string, sock: string, io: CliIo): Promise<number> {
  const stop = stopSignal()
  let device: ScriptDevice
  try {
    device = await loadScriptDevice(file)
    await device.listen(sock)
  } catch (err) {
    stop.cancel()
    const code = (err as { code?: unknown }).code
    const message = err instanceof Error ? err.message : String(err)
    io.stderr(`emudev serve: ${err instanceof ScriptError ? message : `${file}: ${message}${typeof code === 'string' ? ` (${code})` : ''}`}\n`)
    return EXIT_FAILURE
  }
  const name = device.name
  device.on('connected', () => io.stderr(`emudev: ${name}: client connected\n`))
  device.on('disconnected', () => {
    let counts = ''
    try {
      const s = device.stats()
      counts = ` (${s.messages} messages, ${s.errors} errors so far)`
    } catch {
      // Closed meanwhile (the disconnect came from close()): no counters to show.
    }
    io.stderr(`emudev: ${name}: client disconnected${counts}\n`)
  })
  io.stderr(`emudev: ${name} (script ${file}) listening on ${sock}\n`)
  const signal = await stop.received
  io.stderr(`emudev: ${signal}, stopping\n`)
  await device.close()
  io.stderr('emudev: stopped\n')
  return EXIT_OK
}

/**
 * Runs the CLI on `argv` (without the node and script paths) and resolves with
 * the exit code. `serve` resolves only after SIGINT or SIGTERM stopped it.
 */
export async function main(argv: string[], io: CliIo): Promise<number> {
  try {
    const [first, ...rest] = argv
    if (first === undefined || first.startsWith('-')) {
      const { values, positionals } = parseOptions(argv, GLOBAL_OPTIONS, 'emudev')
      if (values.help === true) {
        io.stdout(HELP)
        return EXIT_OK
      }
      if (values.version === true) {
        io.stdout(`emudev ${packageVersion()} (native ${nativeVersion()})\n`)
        return EXIT_OK
      }
      if (positionals.length > 0) {
        throw new UsageError(`emudev: options must follow the command (got '${positionals[0]}' after them)`)
      }
      throw new UsageError("emudev: missing command (try 'emudev --help')")
    }
    switch (first) {
      case 'serve':
        return await serveCommand(rest, io)
      case 'client':
        return await clientCommand(rest, io)
      case 'inspect':
        return await inspectCommand(rest, io)
      default:
        throw new UsageError(`emudev: unknown command '${first}' (try 'emudev --help')`)
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`${err.message}\n`)
      return EXIT_USAGE
    }
    if (err instanceof ScriptError) {
      io.stderr(`emudev serve: ${err.message}\n`)
      return EXIT_FAILURE
    }
    throw err
  }
}

if (require.main === module) {
  main(process.argv.slice(2), {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
  }).then(
    (code) => {
      process.exitCode = code
    },
    (err: unknown) => {
      process.stderr.write(`emudev: ${err instanceof Error ? err.message : String(err)}\n`)
      process.exitCode = EXIT_FAILURE
    },
  )
}
