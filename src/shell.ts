/**
 * The interactive `emudev>` shell of `emudev serve -i`, modelled on DPDK
 * testpmd's `testpmd>` prompt: show the served devices, attach software
 * back-ends to emulated iavf devices as numbered ports, forward traffic in a
 * testpmd mode (`set fwd io`, `start`, `stop`), read and clear the port
 * counters, capture frames to pcap files and trace vfio-user messages.
 *
 * ```ts
 * const failed = await runShell(new ServeShellHost(handle), process.stdin, process.stdout)
 * ```
 *
 * On a TTY, `node:readline` does the line editing, the history (kept in
 * `~/.emudev_history`) and the tab completion ({@link Shell.complete}).
 * Anywhere else (a script piped on stdin) the shell reads one command per line,
 * prints only what the commands print, and stops at the end of the input or
 * at `quit`. `#` starts a comment; blank lines are ignored. A command that
 * fails prints one line starting with `Bad arguments:` (the command was
 * misused) or `error:` (it could not be done), and the shell goes on;
 * {@link runShell} resolves with the number of commands that failed, for the
 * exit code of a script.
 *
 * Ports: `port attach net_iavfbe,emu=<dev>[,backend=<spec>]` attaches back-end
 * `<spec>` (default `loopback`) to emulated device `<dev>` and makes it port
 * `<n>`, the lowest number free (so 0, 1, ... in attach order). `start`
 * replaces every port's back-end with the one of the forwarding mode (a port
 * that has it already keeps it, and its capture), `stop` detaches them all
 * and prints what each port forwarded since `start`. Detaching a back-end
 * ends its capture. The shell talks to the devices only through a
 * {@link ShellHost}.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { createInterface, type Interface } from 'node:readline'

import { type PortStats, type ShellDevice, type ShellHost, type TraceTarget } from './shell-host'
import { formatBitRate, formatPps, ratesBetween, startLive, type LiveView, type PortCounters } from './live'

/** The prompt. */
export const PROMPT = 'emudev> '

/** The forwarding modes of `set fwd`, as in testpmd. */
export const FWD_MODES = ['io', 'macswap', 'rxonly', 'txonly'] as const

/** A forwarding mode. */
export type FwdMode = (typeof FWD_MODES)[number]

/** The back-end kinds a port can have (the part of a spec before any `:`). */
export const BACKEND_KINDS = ['loopback', 'macswap', 'rxonly', 'txonly', 'pair', 'pcap', 'pcap-replay', 'channel'] as const

/** How `help` and errors write the back-end specs. */
const BACKEND_USAGE = 'loopback | macswap | rxonly | txonly[:LEN] | pair:<peer> | pcap:<file> | pcap-replay:<file> | channel'

/** The device argument of `port attach` starts with this (testpmd's `net_<driver>` style). */
export const ATTACH_PREFIX = 'net_iavfbe,emu='

/** Longest `monitor` run, in seconds. */
export const MAX_MONITOR_SECONDS = 3600

/** `monitor` without an argument runs this many seconds. */
const DEFAULT_MONITOR_SECONDS = 10

/** Frame lengths `set txpkts` accepts (an Ethernet frame without FCS, jumbo included). */
const TXPKTS = { min: 60, max: 9728 } as const

/** A port: an emulated device with a software back-end. */
export interface ShellPort {
  /** The port number. */
  readonly id: number
  /** The device (`emu_iavf0`). */
  readonly device: string
  /** The back-end given at attach time (`start` uses the forwarding mode's instead). */
  readonly spec: string
  /** The back-end attached now, or null after `stop` detached it. */
  attached: string | null
  /** The pcap file being written, or null. */
  capture: string | null
}

/** Options of {@link runShell}. */
export interface ShellOptions {
  /** Prompt, history and completion (default: whether `input` is a TTY). */
  interactive?: boolean
  /** The history file of an interactive shell (default `~/.emudev_history`; null: no file). */
  historyFile?: string | null
  /** Lines of history kept (default 500). */
  historySize?: number
  /** Interval of the `monitor` view in milliseconds (default 1000). */
  liveIntervalMs?: number
  /** Ends the shell when aborted (e.g. on SIGTERM), as if the input had ended. */
  signal?: AbortSignal
}

/** What {@link Shell.execute} did with a line. */
export type ExecResult = 'ok' | 'failed' | 'empty' | 'quit'

/** The command was misused: printed as `Bad arguments: ...`. */
class BadArguments extends Error {}

/** The command could not be done: printed as `error: ...`. */
class CommandError extends Error {}

/** What can follow a command's fixed words, for completion. */
type ArgKind = 'command' | 'device' | 'port' | 'port-or-all' | 'attach' | 'mode' | 'file' | 'number'

/** One command of the shell. */
interface CommandDef {
  /** Its fixed words (`['show', 'port', 'stats']`). */
  readonly words: readonly string[]
  /** What may follow them, in order. */
  readonly args: readonly ArgKind[]
  /** The usage line. */
  readonly usage: string
  /** One line on what it does. */
  readonly summary: string
  /** More, for `help <command>`. */
  readonly details?: string
  /** Runs it with the words after the fixed ones. */
  readonly run: (shell: Shell, args: string[]) => Promise<void> | void
}

const COMMANDS: readonly CommandDef[] = [
  {
    words: ['help'],
    args: ['command'],
    usage: 'help [<command>]',
    summary: 'list the commands, or show how to use one',
    run: (s, a) => s.help(a),
  },
  {
    words: ['show', 'device'],
    args: ['device'],
    usage: 'show device [<name>]',
    summary: 'the served devices: driver, socket, clients, messages, errors (iavf: queues, MAC, link, state)',
    run: (s, a) => s.showDevice(a),
  },
  {
    words: ['show', 'port', 'info'],
    args: ['port-or-all'],
    usage: 'show port info all|<port>',
    summary: "a port's device, MAC, link, queues, back-end and capture",
    run: (s, a) => s.showPortInfo(a),
  },
  {
    words: ['show', 'port', 'stats'],
    args: ['port-or-all'],
    usage: 'show port stats all|<port>',
    summary: "a port's RX/TX packets and bytes, errors, drops and throughput since the last show",
    run: (s, a) => s.showPortStats(a),
  },
  {
    words: ['show', 'config', 'fwd'],
    args: [],
    usage: 'show config fwd',
    summary: 'the forwarding mode and what start would attach to each port',
    run: (s, a) => s.showConfigFwd(a),
  },
  {
    words: ['clear', 'port', 'stats'],
    args: ['port-or-all'],
    usage: 'clear port stats all|<port>',
    summary: "zero a port's counters",
    run: (s, a) => s.clearPortStats(a),
  },
  {
    words: ['port', 'attach'],
    args: ['attach'],
    usage: `port attach ${ATTACH_PREFIX}<dev>[,backend=<spec>]`,
    summary: 'attach a back-end (default loopback) to emulated device <dev> as a new port',
    details:
      `<spec>: ${BACKEND_USAGE}\n` +
      'pair:<peer> joins two devices (each takes the other as its peer); pcap:<file> writes what the driver sends',
    run: (s, a) => s.portAttach(a),
  },
  {
    words: ['port', 'detach'],
    args: ['port'],
    usage: 'port detach <port>',
    summary: "detach a port's back-end and remove the port",
    run: (s, a) => s.portDetach(a),
  },
  {
    words: ['set', 'fwd'],
    args: ['mode'],
    usage: `set fwd ${FWD_MODES.join('|')}`,
    summary: 'the forwarding mode of start: io (one port: loopback; two: paired), macswap, rxonly (sink), txonly (generator)',
    run: (s, a) => s.setFwd(a),
  },
  {
    words: ['set', 'txpkts'],
    args: ['number'],
    usage: `set txpkts <length>`,
    summary: `frame length of txonly forwarding (${TXPKTS.min}-${TXPKTS.max} bytes)`,
    run: (s, a) => s.setTxpkts(a),
  },
  {
    words: ['start'],
    args: [],
    usage: 'start',
    summary: "start forwarding: attach every port's back-end in the forwarding mode",
    run: (s, a) => s.start(a),
  },
  {
    words: ['stop'],
    args: [],
    usage: 'stop',
    summary: 'stop forwarding: detach the back-ends and print what each port forwarded',
    run: (s, a) => s.stop(a),
  },
  {
    words: ['monitor'],
    args: ['number'],
    usage: `monitor [<seconds>]`,
    summary: `live rates of the attached ports, every second, for <seconds> (default ${DEFAULT_MONITOR_SECONDS}; Ctrl-C ends it)`,
    run: (s, a) => s.monitor(a),
  },
  {
    words: ['capture', 'start'],
    args: ['port', 'file'],
    usage: 'capture start <port> <file.pcap> [<frames>]',
    summary: 'write every frame the port handles (or only the first <frames>) to a pcap file',
    run: (s, a) => s.captureStart(a),
  },
  {
    words: ['capture', 'stop'],
    args: ['port'],
    usage: 'capture stop [<port>]',
    summary: "stop a port's capture (every capture without <port>)",
    run: (s, a) => s.captureStop(a),
  },
  {
    words: ['trace', 'on'],
    args: ['file'],
    usage: 'trace on <file>',
    summary: "append every device's decoded vfio-user messages to <file> as JSON lines labelled with the device",
    run: (s, a) => s.traceOn(a),
  },
  {
    words: ['trace', 'off'],
    args: [],
    usage: 'trace off',
    summary: 'stop tracing',
    run: (s, a) => s.traceOff(a),
  },
  {
    words: ['quit'],
    args: [],
    usage: 'quit',
    summary: 'leave the shell (also exit, Ctrl-D)',
    run: () => {},
  },
  {
    words: ['exit'],
    args: [],
    usage: 'exit',
    summary: 'leave the shell',
    run: () => {},
  },
]

/** The words of `line` before any comment (`#` at the start of a word). */
export function tokenize(line: string): string[] {
  const words = line.trim().split(/\s+/).filter((w) => w.length > 0)
  const comment = words.findIndex((w) => w.startsWith('#'))
  return comment < 0 ? words : words.slice(0, comment)
}

/** The command `tokens` name, with its arguments; or the commands sharing their first words. */
function resolveCommand(tokens: readonly string[]): { cmd: CommandDef; args: string[] } | { near: CommandDef[] } {
  let best: CommandDef | undefined
  for (const c of COMMANDS) {
    const matches = c.words.every((w, i) => tokens[i] === w)
    if (matches && (best === undefined || c.words.length > best.words.length)) best = c
  }
  if (best !== undefined) return { cmd: best, args: tokens.slice(best.words.length) }
  // The commands that share the most leading words with `tokens`.
  const shared = (c: CommandDef): number => {
    let n = 0
    while (n < c.words.length && c.words[n] === tokens[n]) n += 1
    return n
  }
  const most = Math.max(0, ...COMMANDS.map(shared))
  return { near: most === 0 ? [] : COMMANDS.filter((c) => shared(c) === most) }
}

/** `label: value` padded into a column of `width`. */
function cell(label: string, value: string | number, width = 24): string {
  return `${label}: ${value}`.padEnd(width)
}

/** A `#`-framed header of `width` characters with `title` in the middle. */
function banner(char: string, title: string, width = 76): string {
  const inner = title.length === 0 ? '' : ` ${title} `
  const left = Math.max(2, Math.floor((width - inner.length) / 2))
  const right = Math.max(2, width - inner.length - left)
  return `  ${char.repeat(left)}${inner}${char.repeat(right)}`
}

/** A port's counters as the live view and the throughput lines take them. */
function countersOf(s: PortStats): PortCounters {
  return {
    rxPackets: s.rxPackets,
    rxBytes: s.rxBytes,
    txPackets: s.txPackets,
    txBytes: s.txBytes,
    drops: s.rxDrops,
    errors: s.rxErrors + s.txErrors,
  }
}

/** `after - before` per counter (a counter cleared in between counts from zero). */
function statsSince(before: PortStats | undefined, after: PortStats): PortStats {
  if (before === undefined) return after
  const d = (a: number, b: number): number => (a >= b ? a - b : a)
  const queues = after.queues.map((q, i) => {
    const b = before.queues[i]
    if (b === undefined) return { ...q }
    return {
      rxPackets: d(q.rxPackets, b.rxPackets),
      rxBytes: d(q.rxBytes, b.rxBytes),
      rxErrors: d(q.rxErrors, b.rxErrors),
      rxDrops: d(q.rxDrops, b.rxDrops),
      txPackets: d(q.txPackets, b.txPackets),
      txBytes: d(q.txBytes, b.txBytes),
      txErrors: d(q.txErrors, b.txErrors),
    }
  })
  return {
    rxPackets: d(after.rxPackets, before.rxPackets),
    rxBytes: d(after.rxBytes, before.rxBytes),
    rxErrors: d(after.rxErrors, before.rxErrors),
    rxDrops: d(after.rxDrops, before.rxDrops),
    txPackets: d(after.txPackets, before.txPackets),
    txBytes: d(after.txBytes, before.txBytes),
    txErrors: d(after.txErrors, before.txErrors),
    queues,
  }
}

/**
 * The back-end each port gets from `start` in `mode`: `io` pairs ports two by
 * two in port order (0 with 1, 2 with 3; an odd last one loops back),
 * `macswap`, `rxonly` and `txonly` give every port that back-end (`txonly`
 * with the `set txpkts` length, if any).
 */
export function planForwarding(
  mode: FwdMode,
  ports: ReadonlyArray<{ id: number; device: string }>,
  txLength: number | null = null,
): Array<{ id: number; spec: string }> {
  const sorted = [...ports].sort((a, b) => a.id - b.id)
  switch (mode) {
    case 'io':
      return sorted.map((p, i) => {
        const peer = sorted[i % 2 === 0 ? i + 1 : i - 1]
        return { id: p.id, spec: peer === undefined ? 'loopback' : `pair:${peer.device}` }
      })
    case 'txonly':
      return sorted.map((p) => ({ id: p.id, spec: txLength === null ? 'txonly' : `txonly:${txLength}` }))
    default:
      return sorted.map((p) => ({ id: p.id, spec: mode }))
  }
}

/**
 * Parses `net_iavfbe,emu=<dev>[,backend=<spec>]`. The back-end spec is the
 * rest of the string after `backend=`, so it may contain commas.
 */
export function parseAttachArg(arg: string): { device: string; spec: string } {
  const [driver, ...rest] = arg.split(',')
  if (driver !== 'net_iavfbe') {
    throw new BadArguments(`expected ${ATTACH_PREFIX}<dev>[,backend=<spec>] (got '${arg}')`)
  }
  let device: string | undefined
  let spec: string | undefined
  for (let i = 0; i < rest.length; i += 1) {
    const part = rest[i] ?? ''
    const eq = part.indexOf('=')
    const key = eq < 0 ? part : part.slice(0, eq)
    const value = eq < 0 ? '' : part.slice(eq + 1)
    if (key === 'emu' && device === undefined) {
      device = value
    } else if (key === 'backend' && spec === undefined) {
      spec = [value, ...rest.slice(i + 1)].join(',')
      break
    } else {
      throw new BadArguments(`unexpected '${part}' in '${arg}' (keys: emu=<dev>, backend=<spec>)`)
    }
  }
  if (device === undefined || device.length === 0) throw new BadArguments(`missing emu=<dev> in '${arg}'`)
  if (spec !== undefined) checkBackendSpec(spec)
  return { device, spec: spec ?? 'loopback' }
}

/** Rejects a spec whose kind is unknown; the details are for the data path to check. */
function checkBackendSpec(spec: string): void {
  const kind = spec.split(':')[0] ?? ''
  if (!(BACKEND_KINDS as readonly string[]).includes(kind)) {
    throw new BadArguments(`unknown back-end '${spec}' (${BACKEND_USAGE})`)
  }
  if ((kind === 'pair' || kind === 'pcap' || kind === 'pcap-replay') && spec.length <= kind.length + 1) {
    throw new BadArguments(`back-end '${spec}' needs a value (${kind === 'pair' ? 'pair:<peer device>' : `${kind}:<file>`})`)
  }
}

/** The one-line message of anything thrown. */
function messageOf(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, ' ')
}

/**
 * The shell's state and commands, without any terminal: {@link runShell} feeds
 * it lines and its completer. Usable on its own (tests, other front-ends).
 */
export class Shell {
  /** The ports, by number. */
  readonly ports: ShellPort[] = []
  /** The forwarding mode of `start`. */
  fwd: FwdMode = 'io'
  /** The `txonly` frame length set by `set txpkts`, or null for the back-end's default. */
  txLength: number | null = null
  /** Commands that failed so far. */
  failures = 0
  readonly #host: ShellHost
  readonly #write: (text: string) => void
  readonly #liveIntervalMs: number
  readonly #tty: boolean
  /** While forwarding: each port's counters at `start`. */
  #forwarding: Map<number, PortStats> | null = null
  /** What `show port stats` last saw, for the throughput lines. */
  readonly #lastShown = new Map<number, { counters: PortCounters; at: number }>()
  #tracing: TraceTarget[] = []
  #live: LiveView | null = null

  /**
   * A shell over `host` writing to `write`. Devices that already have a
   * back-end attached (`backend=` at serve time) become ports 0, 1, ... in
   * device order. `tty` makes `monitor` rewrite one line in place.
   */
  constructor(host: ShellHost, write: (text: string) => void, options: { liveIntervalMs?: number; tty?: boolean } = {}) {
    this.#host = host
    this.#write = write
    this.#liveIntervalMs = options.liveIntervalMs ?? 1000
    this.#tty = options.tty ?? false
    for (const d of host.devices()) {
      if (d.backend !== null) this.ports.push({ id: this.ports.length, device: d.name, spec: d.backend, attached: d.backend, capture: null })
    }
  }

  /** Runs one line; failures print one line and count in {@link failures}. */
  async execute(line: string): Promise<ExecResult> {
    const tokens = tokenize(line)
    if (tokens.length === 0) return 'empty'
    try {
      const found = resolveCommand(tokens)
      if ('near' in found) {
        if (found.near.length === 0) throw new CommandError(`unknown command '${tokens[0]}' (try 'help')`)
        throw new BadArguments(`${tokens.join(' ')}: expected ${found.near.map((c) => c.usage).join(' or ')}`)
      }
      if (found.cmd.words[0] === 'quit' || found.cmd.words[0] === 'exit') {
        this.#arity(found.args, 0, 0, found.cmd.usage)
        return 'quit'
      }
      await found.cmd.run(this, found.args)
      return 'ok'
    } catch (err) {
      this.failures += 1
      if (err instanceof BadArguments) this.#write(`Bad arguments: ${err.message}\n`)
      else this.#write(`error: ${messageOf(err)}\n`)
      return 'failed'
    }
  }

  /**
   * Completion of `line` for readline: the candidates for its last word and
   * that word. `'sh'` gives `[['show'], 'sh']`, `'show p'` `[['port'], 'p']`.
   */
  complete(line: string): [string[], string] {
    const words = line.trimStart().split(/\s+/)
    const partial = words.pop() ?? ''
    const done = words
    const candidates = new Set<string>()
    for (const c of COMMANDS) {
      if (done.length >= c.words.length + c.args.length) continue
      const fixedOk = done.every((w, i) => i >= c.words.length || c.words[i] === w)
      if (!fixedOk) continue
      const i = done.length
      if (i < c.words.length) candidates.add(c.words[i] ?? '')
      else for (const v of this.#argValues(c.args[i - c.words.length], partial)) candidates.add(v)
    }
    const hits = [...candidates].filter((v) => v.length > 0 && v.startsWith(partial)).sort()
    return [hits, partial]
  }

  /** Stops what outlives a command (monitor, captures, trace); for when the shell ends. */
  async close(): Promise<void> {
    this.stopMonitor()
    for (const p of this.ports) {
      if (p.capture !== null) await this.execute(`capture stop ${p.id}`)
    }
    if (this.#tracing.length > 0) await this.execute('trace off')
  }

  /** Ends a running `monitor` early; false if none runs. */
  stopMonitor(): boolean {
    if (this.#live === null || this.#live.stopped) return false
    this.#live.stop()
    return true
  }

  /** `help [<command>]`. */
  help(args: string[]): void {
    if (args.length === 0) {
      const width = Math.max(...COMMANDS.map((c) => c.usage.length)) + 2
      const lines = COMMANDS.filter((c) => c.words[0] !== 'exit').map((c) => `  ${c.usage.padEnd(width)}${c.summary}`)
      this.#write(`Commands:\n${lines.join('\n')}\n`)
      return
    }
    const matching = COMMANDS.filter((c) => args.every((w, i) => c.words[i] === w))
    if (matching.length === 0) throw new BadArguments(`no command '${args.join(' ')}' (try 'help')`)
    const text = (c: CommandDef): string => {
      const details = c.details === undefined ? '' : c.details.split('\n').map((l) => `    ${l}\n`).join('')
      return `${c.usage}\n    ${c.summary}\n${details}`
    }
    this.#write(matching.map(text).join(''))
  }

  /** `show device [<name>]`. */
  showDevice(args: string[]): void {
    this.#arity(args, 0, 1, 'show device [<name>]')
    const devices = this.#host.devices()
    const name = args[0]
    const shown = name === undefined ? devices : devices.filter((d) => d.name === name)
    if (shown.length === 0) {
      throw new CommandError(
        name === undefined ? 'no devices are served' : `no device '${name}' (devices: ${devices.map((d) => d.name).join(', ') || 'none'})`,
      )
    }
    this.#write(shown.map((d) => this.#formatDevice(d)).join('\n'))
  }

  /** `show port info all|<port>`. */
  showPortInfo(args: string[]): void {
    const ports = this.#selectPorts(args, 'show port info all|<port>')
    const devices = this.#host.devices()
    for (const p of ports) {
      const d = devices.find((x) => x.name === p.device)
      const lines = [
        banner('*', `Infos for port ${p.id}`, 60),
        `  Device: ${p.device}${d === undefined ? ' (gone)' : ` (${d.driver}) on ${d.path}`}`,
      ]
      if (d?.iavf !== undefined) {
        lines.push(`  MAC address: ${d.iavf.mac}`)
        lines.push(`  Link status: ${d.iavf.linkUp ? 'up' : 'down'}`)
        lines.push(`  Queue pairs: ${d.iavf.queues} (TX enabled ${d.iavf.txEnabled}, RX enabled ${d.iavf.rxEnabled})`)
        lines.push(`  Driver: ${d.connected ? 'connected' : 'not connected'}${d.iavf.version === null ? '' : `, virtchnl ${d.iavf.version}`}`)
      }
      lines.push(`  Back-end: ${p.attached ?? `none (detached; attach spec ${p.spec})`}`)
      lines.push(`  Capture: ${p.capture ?? 'off'}`)
      this.#write(`${lines.join('\n')}\n`)
    }
  }

  /** `show port stats all|<port>`. */
  showPortStats(args: string[]): void {
    const ports = this.#selectPorts(args, 'show port stats all|<port>')
    for (const p of ports) {
      const s = this.#host.portStats(p.device)
      const at = performance.now()
      const counters = countersOf(s)
      const last = this.#lastShown.get(p.id)
      const r = last === undefined ? ratesBetween(counters, counters, 0) : ratesBetween(last.counters, counters, (at - last.at) / 1000)
      this.#lastShown.set(p.id, { counters, at })
      const lines = [
        banner('#', `NIC statistics for port ${p.id}`),
        `  ${p.device}, back-end ${p.attached ?? 'none'}`,
        `  ${cell('RX-packets', s.rxPackets)}${cell('RX-dropped', s.rxDrops)}RX-bytes: ${s.rxBytes}`,
        `  RX-errors: ${s.rxErrors}`,
        `  ${cell('TX-packets', s.txPackets)}${cell('TX-errors', s.txErrors)}TX-bytes: ${s.txBytes}`,
        ...(s.txOffloaded === undefined ? [] : [`  ${cell('TX-offloaded', s.txOffloaded)}TX-TSO: ${s.txTso ?? 0}`]),
        '',
        '  Throughput (since last show)',
        `  ${cell('Rx-pps', formatPps(r.rxPps), 28)}Rx-bps: ${formatBitRate(r.rxBps)}`,
        `  ${cell('Tx-pps', formatPps(r.txPps), 28)}Tx-bps: ${formatBitRate(r.txBps)}`,
      ]
      if (s.queues.length > 1) {
        lines.push('')
        for (const [i, q] of s.queues.entries()) {
          lines.push(
            `  queue ${String(i).padStart(2)}: RX-packets ${q.rxPackets} RX-bytes ${q.rxBytes} RX-dropped ${q.rxDrops} RX-errors ${q.rxErrors}` +
              ` | TX-packets ${q.txPackets} TX-bytes ${q.txBytes} TX-errors ${q.txErrors}`,
          )
        }
      }
      lines.push(banner('#', ''))
      this.#write(`${lines.join('\n')}\n`)
    }
  }

  /** `show config fwd`. */
  showConfigFwd(args: string[]): void {
    this.#arity(args, 0, 0, 'show config fwd')
    const txonly = this.fwd === 'txonly' && this.txLength !== null ? ` (frames of ${this.txLength} bytes)` : ''
    const lines = [`${this.fwd} packet forwarding${txonly}, ${this.#forwarding === null ? 'stopped' : 'started'}`]
    if (this.ports.length === 0) lines.push('  no ports')
    for (const plan of planForwarding(this.fwd, this.ports, this.txLength)) {
      const p = this.#port(plan.id)
      lines.push(`  port ${p.id} (${p.device}): ${plan.spec}`)
    }
    this.#write(`${lines.join('\n')}\n`)
  }

  /** `clear port stats all|<port>`. */
  clearPortStats(args: string[]): void {
    const ports = this.#selectPorts(args, 'clear port stats all|<port>')
    for (const p of ports) {
      this.#host.clearStats(p.device)
      this.#lastShown.delete(p.id)
      this.#write(`  NIC statistics for port ${p.id} cleared\n`)
    }
  }

  /** `port attach net_iavfbe,emu=<dev>[,backend=<spec>]`. */
  async portAttach(args: string[]): Promise<void> {
    const usage = `port attach ${ATTACH_PREFIX}<dev>[,backend=<spec>]`
    this.#arity(args, 1, 1, usage)
    const { device, spec } = parseAttachArg(args[0] ?? '')
    const existing = this.ports.find((p) => p.device === device)
    if (existing !== undefined) throw new CommandError(`${device} is already port ${existing.id} (port detach ${existing.id} first)`)
    await this.#host.attach(device, spec)
    const id = this.#freePortId()
    this.ports.push({ id, device, spec, attached: spec, capture: null })
    this.ports.sort((a, b) => a.id - b.id)
    this.#write(`Port ${id} attached to ${device} (back-end ${spec})\n`)
  }

  /** `port detach <port>`. */
  async portDetach(args: string[]): Promise<void> {
    this.#arity(args, 1, 1, 'port detach <port>')
    const p = this.#port(this.#portNumber(args[0] ?? ''))
    this.#stopCapture(p)
    await this.#host.detach(p.device)
    p.attached = null
    this.ports.splice(this.ports.indexOf(p), 1)
    this.#lastShown.delete(p.id)
    this.#forwarding?.delete(p.id)
    this.#write(`Port ${p.id} detached from ${p.device}\n`)
  }

  /** `set fwd <mode>`. */
  setFwd(args: string[]): void {
    this.#arity(args, 1, 1, `set fwd ${FWD_MODES.join('|')}`)
    const mode = args[0] ?? ''
    if (!(FWD_MODES as readonly string[]).includes(mode)) {
      throw new BadArguments(`unknown forwarding mode '${mode}' (${FWD_MODES.join(', ')})`)
    }
    this.fwd = mode as FwdMode
    this.#write(`Set ${mode} packet forwarding mode${this.#forwarding === null ? '' : ' (applies at the next start)'}\n`)
  }

  /** `set txpkts <length>`. */
  setTxpkts(args: string[]): void {
    this.#arity(args, 1, 1, 'set txpkts <length>')
    const n = /^[0-9]+$/.test(args[0] ?? '') ? Number(args[0]) : NaN
    if (!Number.isSafeInteger(n) || n < TXPKTS.min || n > TXPKTS.max) {
      throw new BadArguments(`txpkts must be an integer ${TXPKTS.min}-${TXPKTS.max} (got '${args[0]}')`)
    }
    this.txLength = n
    this.#write(`txonly frames of ${n} bytes\n`)
  }

  /** `start`. */
  async start(args: string[]): Promise<void> {
    this.#arity(args, 0, 0, 'start')
    if (this.#forwarding !== null) throw new CommandError('packet forwarding already started (stop first)')
    if (this.ports.length === 0) throw new CommandError(`no ports (port attach ${ATTACH_PREFIX}<dev> first)`)
    // Ports that already have their mode's back-end keep it (and their capture); the others are
    // all detached before any is attached: a pair's two ends meet only once both are free.
    const changes = planForwarding(this.fwd, this.ports, this.txLength).filter((c) => this.#port(c.id).attached !== c.spec)
    for (const { id } of changes) await this.#detach(this.#port(id))
    for (const { id, spec } of changes) {
      const p = this.#port(id)
      try {
        await this.#host.attach(p.device, spec)
      } catch (err) {
        for (const c of changes) await this.#detach(this.#port(c.id)).catch(() => {})
        throw new CommandError(`start: port ${p.id} (${p.device}): ${messageOf(err)}; forwarding not started`)
      }
      p.attached = spec
    }
    const baseline = new Map<number, PortStats>()
    for (const p of this.ports) {
      try {
        baseline.set(p.id, this.#host.portStats(p.device))
      } catch {
        // No counters yet: stop counts from zero.
      }
    }
    this.#forwarding = baseline
    const lines = [`${this.fwd} packet forwarding started on ${this.ports.length} port${this.ports.length === 1 ? '' : 's'}`]
    for (const p of this.ports) lines.push(`  port ${p.id} (${p.device}): ${p.attached}`)
    this.#write(`${lines.join('\n')}\n`)
  }

  /** `stop`. */
  async stop(args: string[]): Promise<void> {
    this.#arity(args, 0, 0, 'stop')
    const baseline = this.#forwarding
    if (baseline === null) throw new CommandError('packet forwarding not started')
    this.stopMonitor()
    const rows: Array<{ port: ShellPort; stats: PortStats | null; error?: string }> = []
    for (const p of this.ports) {
      let stats: PortStats | null = null
      let error: string | undefined
      try {
        stats = statsSince(baseline.get(p.id), this.#host.portStats(p.device))
      } catch (err) {
        error = messageOf(err)
      }
      await this.#detach(p)
      rows.push(error === undefined ? { port: p, stats } : { port: p, stats, error })
    }
    this.#forwarding = null
    this.#write(formatForwardStats(rows))
  }

  /** `monitor [<seconds>]`: resolves when the view ends. */
  async monitor(args: string[]): Promise<void> {
    this.#arity(args, 0, 1, 'monitor [<seconds>]')
    let secs = DEFAULT_MONITOR_SECONDS
    if (args[0] !== undefined) {
      secs = /^[0-9]+(\.[0-9]+)?$/.test(args[0]) ? Number(args[0]) : NaN
      if (!(secs > 0 && secs <= MAX_MONITOR_SECONDS)) {
        throw new BadArguments(`seconds must be a number above 0, at most ${MAX_MONITOR_SECONDS} (got '${args[0]}')`)
      }
    }
    const ports = this.ports.filter((p) => p.attached !== null)
    if (ports.length === 0) throw new CommandError('no port has a back-end attached (port attach, or start)')
    const host = this.#host
    this.#live = startLive({
      sample: () => ports.map((p) => ({ port: String(p.id), counters: countersOf(host.portStats(p.device)) })),
      output: { write: (text: string) => this.#write(text) },
      durationMs: secs * 1000,
      intervalMs: this.#liveIntervalMs,
      tty: this.#tty,
    })
    const summary = await this.#live.done
    this.#live = null
    if (summary.error !== undefined) throw new CommandError(`monitor stopped: ${summary.error}`)
  }

  /** `capture start <port> <file> [<frames>]`: every frame, or only the first `frames`. */
  captureStart(args: string[]): void {
    this.#arity(args, 2, 3, 'capture start <port> <file.pcap> [<frames>]')
    const p = this.#port(this.#portNumber(args[0] ?? ''))
    const file = args[1] ?? ''
    let frames: number | undefined
    if (args[2] !== undefined) {
      frames = /^[0-9]+$/.test(args[2]) ? Number(args[2]) : NaN
      if (!Number.isSafeInteger(frames) || frames < 1 || frames > 0xffffffff) {
        throw new BadArguments(`frames must be a positive integer (got '${args[2]}')`)
      }
    }
    if (p.capture !== null) throw new CommandError(`port ${p.id} is already capturing to ${p.capture} (capture stop ${p.id} first)`)
    if (p.attached === null) throw new CommandError(`port ${p.id} has no back-end attached (start first)`)
    this.#host.captureStart(p.device, file, frames)
    p.capture = file
    this.#write(`Capturing port ${p.id} (${p.device}) to ${file}${frames === undefined ? '' : ` (first ${frames} frames)`}\n`)
  }

  /** `capture stop [<port>]`. */
  captureStop(args: string[]): void {
    this.#arity(args, 0, 1, 'capture stop [<port>]')
    if (args[0] !== undefined) {
      const p = this.#port(this.#portNumber(args[0]))
      if (p.capture === null) throw new CommandError(`port ${p.id} is not capturing`)
      this.#stopCapture(p)
      return
    }
    const capturing = this.ports.filter((p) => p.capture !== null)
    if (capturing.length === 0) throw new CommandError('no capture is running')
    for (const p of capturing) this.#stopCapture(p)
  }

  /** `trace on <file>`. */
  traceOn(args: string[]): void {
    this.#arity(args, 1, 1, 'trace on <file>')
    if (this.#tracing.length > 0) {
      throw new CommandError(`already tracing to ${[...new Set(this.#tracing.map((t) => t.file))].join(', ')} (trace off first)`)
    }
    this.#tracing = this.#host.traceStart(args[0] ?? '')
    for (const t of this.#tracing) this.#write(`Tracing ${t.device} vfio-user messages to ${t.file}\n`)
  }

  /** `trace off`. */
  traceOff(args: string[]): void {
    this.#arity(args, 0, 0, 'trace off')
    if (this.#tracing.length === 0) throw new CommandError('no trace is running')
    const targets = this.#tracing
    this.#tracing = []
    this.#host.traceStop()
    for (const t of targets) this.#write(`Trace of ${t.device} stopped: ${t.file}\n`)
  }

  /** Checks the number of arguments. */
  #arity(args: readonly string[], min: number, max: number, usage: string): void {
    if (args.length < min) throw new BadArguments(`missing argument (usage: ${usage})`)
    if (args.length > max) throw new BadArguments(`unexpected '${args[max]}' (usage: ${usage})`)
  }

  /** A port number, or Bad arguments. */
  #portNumber(arg: string): number {
    if (!/^[0-9]+$/.test(arg) || arg.length > 5) throw new BadArguments(`'${arg}' is not a port number`)
    return Number(arg)
  }

  /** Port `id`, or an error listing the ports there are. */
  #port(id: number): ShellPort {
    const p = this.ports.find((x) => x.id === id)
    if (p !== undefined) return p
    const list = this.ports.length === 0 ? 'none' : this.ports.map((x) => x.id).join(', ')
    throw new CommandError(`invalid port ${id} (ports: ${list})`)
  }

  /** The ports `all|<port>` selects; `all` with no ports is an error. */
  #selectPorts(args: readonly string[], usage: string): ShellPort[] {
    this.#arity(args, 1, 1, usage)
    const arg = args[0] ?? ''
    if (arg !== 'all') return [this.#port(this.#portNumber(arg))]
    if (this.ports.length === 0) throw new CommandError(`no ports (port attach ${ATTACH_PREFIX}<dev> first)`)
    return [...this.ports]
  }

  /** The lowest port number not in use. */
  #freePortId(): number {
    let id = 0
    while (this.ports.some((p) => p.id === id)) id += 1
    return id
  }

  /** Detaches `p`'s back-end if it has one, ending its capture first. */
  async #detach(p: ShellPort): Promise<void> {
    this.#stopCapture(p)
    if (p.attached === null) return
    await this.#host.detach(p.device)
    p.attached = null
  }

  /** Stops `p`'s capture if it runs, printing where it went. */
  #stopCapture(p: ShellPort): void {
    if (p.capture === null) return
    const file = p.capture
    p.capture = null
    this.#host.captureStop(p.device)
    this.#write(`Capture of port ${p.id} stopped: ${file}\n`)
  }

  /** What completes an argument of `kind` (given what is typed of it). */
  #argValues(kind: ArgKind | undefined, partial: string): string[] {
    const ports = this.ports.map((p) => String(p.id))
    switch (kind) {
      case 'command':
        return [...new Set(COMMANDS.map((c) => c.words[0] ?? ''))]
      case 'device':
        return this.#deviceNames(false)
      case 'port':
        return ports
      case 'port-or-all':
        return ['all', ...ports]
      case 'mode':
        return [...FWD_MODES]
      case 'attach':
        return this.#attachValues(partial)
      default:
        return []
    }
  }

  /** Completions of `net_iavfbe,emu=<dev>[,backend=<spec>]`. */
  #attachValues(partial: string): string[] {
    const iavf = this.#deviceNames(true)
    const m = /^(net_iavfbe,emu=([^,]*)),backend=/.exec(partial)
    if (m === null) return iavf.map((d) => `${ATTACH_PREFIX}${d}`)
    const head = m[1] ?? ''
    const self = m[2] ?? ''
    const specs = ['loopback', 'macswap', 'rxonly', 'txonly', 'txonly:', 'pcap:', 'channel', ...iavf.filter((d) => d !== self).map((d) => `pair:${d}`)]
    return specs.map((s) => `${head},backend=${s}`)
  }

  /** The device names (only those with a data path if `datapath`); none if the host fails. */
  #deviceNames(datapath: boolean): string[] {
    try {
      return this.#host
        .devices()
        .filter((d) => !datapath || d.driver === 'emu_iavf')
        .map((d) => d.name)
    } catch {
      return []
    }
  }

  /** `show device`'s block for one device. */
  #formatDevice(d: ShellDevice): string {
    const lines = [
      `Device ${d.name}`,
      `  driver:    ${d.driver}`,
      `  socket:    ${d.path}`,
      `  clients:   ${d.clients} (${d.connected ? 'one connected' : 'none connected'})`,
      `  messages:  ${d.messages}`,
      `  errors:    ${d.errors}`,
    ]
    if (d.iavf !== undefined) {
      const i = d.iavf
      lines.push(`  queues:    ${i.queues} pair${i.queues === 1 ? '' : 's'} (TX enabled ${i.txEnabled}, RX enabled ${i.rxEnabled})`)
      lines.push(`  MAC:       ${i.mac}`)
      lines.push(`  link:      ${i.linkUp ? 'up' : 'down'}`)
      lines.push(`  state:     ${i.version === null ? 'no driver yet' : `virtchnl ${i.version}, caps 0x${i.caps.toString(16).padStart(8, '0')}`}`)
    }
    if (!d.datapath) {
      const why = d.driver === 'emu_iavf' ? 'the native addon has no iavf data path' : `an ${d.driver} device has none`
      lines.push(`  data path: none (${why})`)
    } else {
      const port = this.ports.find((p) => p.device === d.name)
      lines.push(`  back-end:  ${d.backend ?? 'none'}${port === undefined ? '' : ` (port ${port.id})`}`)
    }
    return `${lines.join('\n')}\n`
  }
}

/** What `stop` prints: each port's forwarding counters since `start`, then their sum. */
function formatForwardStats(rows: ReadonlyArray<{ port: ShellPort; stats: PortStats | null; error?: string }>): string {
  const lines: string[] = []
  const total = { rxPackets: 0, rxBytes: 0, rxDrops: 0, rxErrors: 0, txPackets: 0, txBytes: 0, txErrors: 0 }
  for (const { port, stats, error } of rows) {
    lines.push(banner('-', `Forward statistics for port ${port.id}`))
    if (stats === null) {
      lines.push(`  no counters: ${error ?? 'unknown'}`)
    } else {
      lines.push(`  ${cell('RX-packets', stats.rxPackets)}${cell('RX-dropped', stats.rxDrops)}${cell('RX-errors', stats.rxErrors)}RX-bytes: ${stats.rxBytes}`)
      lines.push(`  ${cell('TX-packets', stats.txPackets)}${cell('TX-errors', stats.txErrors)}${''.padEnd(24)}TX-bytes: ${stats.txBytes}`)
      for (const key of Object.keys(total) as (keyof typeof total)[]) total[key] += stats[key]
    }
    lines.push(banner('-', ''))
  }
  lines.push('')
  lines.push(banner('+', 'Accumulated forward statistics for all ports'))
  lines.push(`  ${cell('RX-packets', total.rxPackets)}${cell('RX-dropped', total.rxDrops)}${cell('RX-errors', total.rxErrors)}RX-bytes: ${total.rxBytes}`)
  lines.push(`  ${cell('TX-packets', total.txPackets)}${cell('TX-errors', total.txErrors)}${''.padEnd(24)}TX-bytes: ${total.txBytes}`)
  lines.push(banner('+', ''))
  lines.push('Done.')
  return `${lines.join('\n')}\n`
}

/** Lines of history in `file`, most recent first, as readline wants them. */
function loadHistory(file: string, size: number): string[] {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.trim().length > 0)
      .slice(-size)
      .reverse()
  } catch {
    return [] // none yet, or unreadable: start empty
  }
}

/**
 * Runs the shell on `input` until its end, `quit`, `exit` or `opts.signal`, writing to
 * `output`, and resolves with the number of commands that failed (0: all
 * succeeded). When it ends, running captures, traces and `monitor` are
 * stopped; back-ends stay attached. It does not close `host`'s devices.
 */
export async function runShell(
  host: ShellHost,
  input: NodeJS.ReadableStream,
  output: NodeJS.WritableStream,
  opts: ShellOptions = {},
): Promise<number> {
  const interactive = opts.interactive ?? (input as { isTTY?: boolean }).isTTY === true
  const write = (text: string): void => {
    output.write(text)
  }
  const terminal = interactive && (output as { isTTY?: boolean }).isTTY === true
  const shellOptions: { liveIntervalMs?: number; tty?: boolean } = { tty: terminal }
  if (opts.liveIntervalMs !== undefined) shellOptions.liveIntervalMs = opts.liveIntervalMs
  const shell = new Shell(host, write, shellOptions)
  const rl = interactive ? interactiveInterface(shell, input, output, terminal, opts) : createInterface({ input, terminal: false })
  if (interactive) {
    rl.on('SIGINT', () => {
      if (shell.stopMonitor()) return
      write('^C\n')
      rl.write(null, { ctrl: true, name: 'u' })
      rl.prompt()
    })
    rl.prompt()
  }
  const onAbort = (): void => {
    shell.stopMonitor()
    rl.close()
  }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  try {
    // (An interface closed before iterating it would never end the loop.)
    for await (const line of opts.signal?.aborted === true ? [] : rl) {
      const result = await shell.execute(line)
      if (result === 'quit') break
      if (interactive) rl.prompt()
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    rl.close()
    await shell.close()
  }
  return shell.failures
}

/** readline with the prompt, the completer and, on a TTY, the history file. */
function interactiveInterface(
  shell: Shell,
  input: NodeJS.ReadableStream,
  output: NodeJS.WritableStream,
  terminal: boolean,
  opts: ShellOptions,
): Interface {
  const historySize = opts.historySize ?? 500
  const file = opts.historyFile === undefined ? join(homedir(), '.emudev_history') : opts.historyFile
  const history = file === null ? [] : loadHistory(file, historySize)
  const rl = createInterface({
    input,
    output,
    terminal,
    prompt: PROMPT,
    completer: (line: string) => shell.complete(line),
    history,
    historySize,
    removeHistoryDuplicates: true,
  })
  if (file !== null) {
    let warned = false
    rl.on('history', (lines: string[]) => {
      try {
        writeFileSync(file, `${[...lines].reverse().join('\n')}\n`, { mode: 0o600 })
      } catch (err) {
        if (!warned) output.write(`warning: cannot save the history to ${file}: ${messageOf(err)}\n`)
        warned = true
      }
    })
  }
  return rl
}
