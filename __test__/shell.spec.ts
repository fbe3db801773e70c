// The `emudev>` shell (src/shell.ts) over real served devices and over a fake host, and
// ServeShellHost (src/shell-host.ts) over fake native servers.
import { existsSync, readFileSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { PassThrough } from 'node:stream'

import test, { type ExecutionContext } from 'ava'

import { parseVdevList } from '../src/config'
import { native } from '../src/native'
import { serve, type ServeHandle, type ServedDevice } from '../src/server'
import { parseAttachArg, planForwarding, runShell, Shell, PROMPT, type ShellOptions } from '../src/shell'
import {
  HostError,
  ServeShellHost,
  sumQueues,
  type PortStats,
  type QueueStats,
  type ShellDevice,
  type ShellHost,
  type TraceTarget,
} from '../src/shell-host'
import { tempSocket, waitFor } from './helpers'

const MAC = '02:00:00:00:00:2a'

/** Serves emu_edu0, emu_iavf0 (2 queue pairs) and, with `pair`, emu_iavf1, in a fresh directory. */
async function served(t: ExecutionContext, pair = false): Promise<ServeHandle> {
  const dir = dirname(tempSocket(t))
  const vdevs = [`emu_edu0,sock=${join(dir, 'edu.sock')}`, `emu_iavf0,sock=${join(dir, 'vf0.sock')},queues=2,mac=${MAC}`]
  if (pair) vdevs.push(`emu_iavf1,sock=${join(dir, 'vf1.sock')}`)
  const handle = await serve(parseVdevList(vdevs))
  t.teardown(() => handle.close())
  return handle
}

/** Runs `script` through a non-interactive shell; the output and the number of failed commands. */
async function run(host: ShellHost, script: string, opts: ShellOptions = {}): Promise<{ out: string; failed: number }> {
  const input = new PassThrough()
  const output = new PassThrough()
  let out = ''
  output.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
  })
  input.end(script)
  const failed = await runShell(host, input, output, opts)
  return { out, failed }
}

/** The lines of `text` starting with `Bad arguments:` or `error:`. */
function errorLines(text: string): string[] {
  return text.split('\n').filter((l) => l.startsWith('Bad arguments:') || l.startsWith('error:'))
}

test('help lists every command; help <words> shows the matching ones', async (t) => {
  const handle = await served(t)
  const { out, failed } = await run(new ServeShellHost(handle), 'help\nhelp show port\nhelp port attach\n')
  t.is(failed, 0, out)
  const [listed = '', ...more] = out.split('Commands:\n')[1]?.split('\nshow port info') ?? []
  const list = `\n${listed}`
  for (const usage of [
    'help [<command>]',
    'show device [<name>]',
    'show port info all|<port>',
    'show port stats all|<port>',
    'clear port stats all|<port>',
    'port attach net_iavfbe,emu=<dev>[,backend=<spec>]',
    'port detach <port>',
    'set fwd io|macswap|rxonly|txonly',
    'start',
    'stop',
    'capture start <port> <file.pcap> [<frames>]',
    'capture stop [<port>]',
    'trace on <file>',
    'trace off',
    'quit',
  ]) {
    t.true(list.includes(`\n  ${usage} `), `help lists '${usage}'`)
  }
  t.is(more.length, 1, out)
  t.regex(out, /^show port info all\|<port>\n {4}.+\nshow port stats all\|<port>\n {4}.+\nport attach /m)
  t.regex(out, /^ {4}<spec>: loopback \| macswap \| rxonly \| txonly\[:LEN\] \| pair:<peer> \| pcap:<file> \| pcap-replay:<file> \| channel$/m)
})

test('show device: name, driver, socket, clients, messages, errors; iavf queues, MAC, link, state', async (t) => {
  const handle = await served(t)
  const [edu, iavf] = handle.devices
  const { out, failed } = await run(new ServeShellHost(handle), 'show device\nshow device emu_iavf0\n')
  t.is(failed, 0, out)
  const blocks = out.split(/\n(?=Device )/)
  t.is(blocks.length, 3, out)
  t.true(blocks[0]?.startsWith(`Device emu_edu0\n  driver:    emu_edu\n  socket:    ${edu?.path}\n  clients:   0 (none connected)\n  messages:  0\n  errors:    0\n`), out)
  t.regex(blocks[0] ?? '', /^ {2}data path: none \(an emu_edu device has none\)$/m)
  const want = [
    'Device emu_iavf0',
    '  driver:    emu_iavf',
    `  socket:    ${iavf?.path}`,
    '  clients:   0 (none connected)',
    '  messages:  0',
    '  errors:    0',
    '  queues:    2 pairs (TX enabled 0, RX enabled 0)',
    `  MAC:       ${MAC}`,
    '  link:      up',
    '  state:     no driver yet',
  ].join('\n')
  t.true(blocks[1]?.startsWith(want), blocks[1])
  t.is(blocks[2]?.trimEnd(), blocks[1]?.trimEnd(), 'show device <name> shows that one device')
})

test('show device counts a client that came and went', async (t) => {
  const handle = await served(t)
  const edu = handle.devices[0]
  if (edu === undefined) return t.fail()
  const client = native.NativeClient.connect(edu.path)
  client.readU32(0, 0)
  await client.close()
  t.true(await waitFor(() => !edu.server.stats().connected, 5000))
  const { out } = await run(new ServeShellHost(handle), 'show device emu_edu0')
  t.regex(out, /^ {2}clients: {3}1 \(none connected\)$/m)
  t.regex(out, /^ {2}messages: {2}[1-9]\d*$/m)
})

test('an unknown command is one error line and the shell goes on', async (t) => {
  const handle = await served(t)
  const { out, failed } = await run(new ServeShellHost(handle), 'frobnicate now\nshow device emu_edu0\n')
  t.is(failed, 1)
  t.true(out.startsWith("error: unknown command 'frobnicate' (try 'help')\nDevice emu_edu0\n"), out)
})

test('bad arguments: one line each, counted, and the shell goes on', async (t) => {
  const handle = await served(t)
  const script = [
    'show',
    'show port stats',
    'show device emu_edu0 extra',
    'set fwd warp',
    'port detach x',
    'port attach',
    'port attach emu_iavf0',
    'port attach net_iavfbe,emu=emu_iavf0,backend=teleport',
    'capture start 0',
    'help nonsense',
    'monitor -3',
    'set txpkts 12',
    'show device nope',
    'show port info 7',
    'stop',
    'set fwd macswap',
  ].join('\n')
  const { out, failed } = await run(new ServeShellHost(handle), script)
  const errors = errorLines(out)
  t.is(failed, 15, out)
  t.is(errors.length, 15, out)
  t.deepEqual(
    errors.map((l) => l.split(':')[0]),
    [...Array<string>(12).fill('Bad arguments'), 'error', 'error', 'error'],
    out,
  )
  t.is(errors[0], 'Bad arguments: show: expected show device [<name>] or show port info all|<port> or show port stats all|<port> or show config fwd')
  t.is(errors[1], 'Bad arguments: missing argument (usage: show port stats all|<port>)')
  t.is(errors[2], "Bad arguments: unexpected 'extra' (usage: show device [<name>])")
  t.is(errors[3], "Bad arguments: unknown forwarding mode 'warp' (io, macswap, rxonly, txonly)")
  t.is(errors[7], "Bad arguments: unknown back-end 'teleport' (loopback | macswap | rxonly | txonly[:LEN] | pair:<peer> | pcap:<file> | pcap-replay:<file> | channel)")
  t.is(errors[12], "error: no device 'nope' (devices: emu_edu0, emu_iavf0)")
  t.is(errors[13], 'error: invalid port 7 (ports: none)')
  t.is(errors[14], 'error: packet forwarding not started')
  t.true(out.endsWith('Set macswap packet forwarding mode\n'), 'the last command still ran')
})

test('the datapath commands refuse an emu_edu device clearly', async (t) => {
  const handle = await served(t)
  const { out, failed } = await run(new ServeShellHost(handle), 'port attach net_iavfbe,emu=emu_edu0\nport attach net_iavfbe,emu=emu_nope0\n')
  t.is(failed, 2)
  t.deepEqual(errorLines(out), [
    'error: emu_edu0 is an emu_edu device: it has no data path (only emu_iavf devices do)',
    "error: no device 'emu_nope0' (devices: emu_edu0, emu_iavf0)",
  ])
})

test('comments and blank lines are ignored; nothing is echoed', async (t) => {
  const handle = await served(t)
  const plain = await run(new ServeShellHost(handle), 'show device emu_edu0\n')
  const commented = await run(new ServeShellHost(handle), '# a script\n\n   \n\t# indented comment\nshow device emu_edu0   # which one\n\n')
  t.is(commented.failed, 0)
  t.is(commented.out, plain.out)
  t.false(plain.out.includes(PROMPT))
  t.true(plain.out.startsWith('Device emu_edu0\n'))
})

test('quit and exit end the script; so does the end of the input', async (t) => {
  const handle = await served(t)
  const host = new ServeShellHost(handle)
  for (const word of ['quit', 'exit']) {
    const r = await run(host, `show device emu_edu0\n${word} now\n${word}\nfrobnicate\n`)
    t.deepEqual(errorLines(r.out), [`Bad arguments: unexpected 'now' (usage: ${word})`])
    t.is(r.failed, 1, `${word}: nothing after it runs`)
    t.false(r.out.includes('frobnicate'))
    t.true(r.out.startsWith('Device emu_edu0'))
  }
  const eof = await run(host, 'frobnicate') // no newline at the end, no quit
  t.is(eof.failed, 1)
  t.is(eof.out, "error: unknown command 'frobnicate' (try 'help')\n")
})

test('completion: commands, sub-commands, devices, ports, modes and back-end specs', async (t) => {
  const handle = await served(t, true)
  const shell = new Shell(new ServeShellHost(handle), () => {})
  t.deepEqual(shell.complete('sh'), [['show'], 'sh'])
  t.deepEqual(shell.complete('show p'), [['port'], 'p'])
  t.deepEqual(shell.complete('port a'), [['attach'], 'a'])
  t.deepEqual(shell.complete('show '), [['config', 'device', 'port'], ''])
  t.deepEqual(shell.complete('show port '), [['info', 'stats'], ''])
  t.deepEqual(shell.complete('show port stats '), [['all'], ''])
  t.deepEqual(shell.complete('show device emu_i'), [['emu_iavf0', 'emu_iavf1'], 'emu_i'])
  t.deepEqual(shell.complete('port attach '), [['net_iavfbe,emu=emu_iavf0', 'net_iavfbe,emu=emu_iavf1'], ''], 'only devices with a data path')
  t.deepEqual(shell.complete('port attach net_iavfbe,emu=emu_iavf0,backend=p'), [
    ['net_iavfbe,emu=emu_iavf0,backend=pair:emu_iavf1', 'net_iavfbe,emu=emu_iavf0,backend=pcap:'],
    'net_iavfbe,emu=emu_iavf0,backend=p',
  ])
  t.deepEqual(shell.complete('set fwd '), [['io', 'macswap', 'rxonly', 'txonly'], ''])
  t.deepEqual(shell.complete('help tr'), [['trace'], 'tr'])
  t.deepEqual(shell.complete('xyz '), [[], ''])
  t.deepEqual(shell.complete('start '), [[], ''], 'start takes nothing')
  const first = shell.complete('')[0]
  for (const w of ['help', 'show', 'clear', 'port', 'set', 'start', 'stop', 'monitor', 'capture', 'trace', 'quit', 'exit']) {
    t.true(first.includes(w), w)
  }
})

test('interactive: the prompt, tab completion through readline, and the history file', async (t) => {
  const handle = await served(t)
  const history = join(dirname(tempSocket(t)), 'history')
  const input = Object.assign(new PassThrough(), { isTTY: true })
  const output = Object.assign(new PassThrough(), { isTTY: true, columns: 120 })
  let out = ''
  output.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
  })
  const done = runShell(new ServeShellHost(handle), input, output, { historyFile: history })
  // The tab ends its chunk: readline inserts a tab that arrives amid pasted text literally.
  input.write('sh\t')
  input.write(' device emu_edu0\r')
  t.true(await waitFor(() => out.includes('Device emu_edu0'), 5000), out)
  input.write('quit\r')
  t.is(await done, 0)
  t.true(out.startsWith(`\x1b[1G\x1b[0J${PROMPT}`), JSON.stringify(out.slice(0, 40)))
  t.true(out.split(PROMPT).length >= 3, 'a prompt before each command')
  t.is(readFileSync(history, 'utf8'), 'show device emu_edu0\nquit\n')
  t.is(statSync(history).mode & 0o777, 0o600)
})

test('an abort signal ends a shell whose input stays open, and a monitor it runs', async (t) => {
  const host = new FakeHost()
  await host.attach('emu_iavf0', 'loopback')
  const input = new PassThrough()
  const output = new PassThrough()
  let out = ''
  output.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk
  })
  const abort = new AbortController()
  const done = runShell(host, input, output, { signal: abort.signal, liveIntervalMs: 20 })
  input.write('monitor 3600\n')
  t.true(await waitFor(() => out.includes('port 0: rx'), 5000), out)
  abort.abort()
  t.is(await done, 0)
  t.regex(out, /^Summary over /m)
  // Already aborted: ends at once.
  t.is(await runShell(host, new PassThrough(), new PassThrough(), { signal: AbortSignal.abort() }), 0)
})

// ---- The shell's port, forwarding, capture and trace logic over a fake host ----

/** A host that records its calls; counters are set by the test. */
class FakeHost implements ShellHost {
  readonly calls: string[] = []
  readonly backends = new Map<string, string>()
  readonly stats = new Map<string, PortStats>()
  failAttach: HostError | null = null

  constructor(readonly names: string[] = ['emu_iavf0', 'emu_iavf1', 'emu_edu0']) {}

  devices(): ShellDevice[] {
    return this.names.map((name) => ({
      name,
      driver: name.startsWith('emu_edu') ? 'emu_edu' : 'emu_iavf',
      path: `/tmp/${name}.sock`,
      clients: 0,
      connected: false,
      messages: 0,
      errors: 0,
      datapath: !name.startsWith('emu_edu'),
      backend: this.backends.get(name) ?? null,
    }))
  }
  async attach(dev: string, spec: string): Promise<void> {
    this.calls.push(`attach ${dev} ${spec}`)
    if (this.failAttach !== null) throw this.failAttach
    if (this.backends.has(dev)) throw new HostError(`${dev}: a back-end is attached`, 'busy')
    this.backends.set(dev, spec)
  }
  async detach(dev: string): Promise<void> {
    this.calls.push(`detach ${dev}`)
    this.backends.delete(dev)
  }
  backend(dev: string): string | null {
    return this.backends.get(dev) ?? null
  }
  portStats(dev: string): PortStats {
    return this.stats.get(dev) ?? sumQueues([queue(0, 0)])
  }
  clearStats(dev: string): void {
    this.calls.push(`clear ${dev}`)
    this.stats.delete(dev)
  }
  captureStart(dev: string, file: string): void {
    this.calls.push(`capture ${dev} ${file}`)
  }
  captureStop(dev: string): void {
    this.calls.push(`capture-stop ${dev}`)
  }
  traceStart(file: string): TraceTarget[] {
    this.calls.push(`trace ${file}`)
    return [
      { device: 'emu_iavf0', file },
      { device: 'emu_edu0', file },
    ]
  }
  traceStop(): string[] {
    this.calls.push('trace-stop')
    return ['emu_iavf0', 'emu_iavf1']
  }
}

/** One queue's counters with `rx` and `tx` 64-byte packets. */
function queue(rx: number, tx: number, drops = 0): QueueStats {
  return { rxPackets: rx, rxBytes: rx * 64, rxErrors: 0, rxDrops: drops, txPackets: tx, txBytes: tx * 64, txErrors: 0 }
}

/** A shell over `host` and what it printed. */
function shellOver(host: ShellHost, options: { liveIntervalMs?: number } = {}): { shell: Shell; out: () => string; clear: () => void } {
  let text = ''
  const shell = new Shell(host, (s) => {
    text += s
  }, options)
  return {
    shell,
    out: () => text,
    clear: () => {
      text = ''
    },
  }
}

test('port attach numbers ports from 0 in attach order and reuses a detached number', async (t) => {
  const host = new FakeHost()
  const { shell, out } = shellOver(host)
  t.is(await shell.execute('port attach net_iavfbe,emu=emu_iavf0'), 'ok')
  t.is(await shell.execute('port attach net_iavfbe,emu=emu_iavf1,backend=pcap:/tmp/a,b.pcap'), 'ok')
  t.is(await shell.execute('port attach net_iavfbe,emu=emu_iavf0,backend=macswap'), 'failed')
  t.is(await shell.execute('port detach 0'), 'ok')
  t.is(await shell.execute('port detach 0'), 'failed')
  t.is(await shell.execute('port attach net_iavfbe,emu=emu_iavf0,backend=rxonly'), 'ok')
  t.deepEqual(out().split('\n'), [
    'Port 0 attached to emu_iavf0 (back-end loopback)',
    'Port 1 attached to emu_iavf1 (back-end pcap:/tmp/a,b.pcap)',
    'error: emu_iavf0 is already port 0 (port detach 0 first)',
    'Port 0 detached from emu_iavf0',
    'error: invalid port 0 (ports: 1)',
    'Port 0 attached to emu_iavf0 (back-end rxonly)',
    '',
  ])
  t.deepEqual(host.calls, ['attach emu_iavf0 loopback', 'attach emu_iavf1 pcap:/tmp/a,b.pcap', 'detach emu_iavf0', 'attach emu_iavf0 rxonly'])
  t.is(shell.failures, 2)
})

test('a device with a back-end at start-up is already a port; a host refusal is an error line', async (t) => {
  const host = new FakeHost()
  host.backends.set('emu_iavf1', 'txonly:128')
  const { shell, out } = shellOver(host)
  t.deepEqual(shell.ports.map((p) => [p.id, p.device, p.attached]), [[0, 'emu_iavf1', 'txonly:128']])
  host.failAttach = new HostError('emu_iavf0: bad back-end spec txonly:7 (ERR_EMUDEV_INVALID_ARG)', 'invalid-arg')
  t.is(await shell.execute('port attach net_iavfbe,emu=emu_iavf0,backend=txonly:7'), 'failed')
  t.is(out(), 'error: emu_iavf0: bad back-end spec txonly:7 (ERR_EMUDEV_INVALID_ARG)\n')
  t.is(shell.ports.length, 1, 'no port for a failed attach')
})

test('set fwd io + start pairs two ports; stop detaches them and prints what each forwarded', async (t) => {
  const host = new FakeHost()
  const { shell, out, clear } = shellOver(host)
  await shell.execute('port attach net_iavfbe,emu=emu_iavf0')
  await shell.execute('port attach net_iavfbe,emu=emu_iavf1')
  host.stats.set('emu_iavf0', sumQueues([queue(10, 10)]))
  host.calls.length = 0
  clear()
  t.is(await shell.execute('start'), 'ok')
  t.deepEqual(host.calls, ['detach emu_iavf0', 'detach emu_iavf1', 'attach emu_iavf0 pair:emu_iavf1', 'attach emu_iavf1 pair:emu_iavf0'])
  t.is(out(), 'io packet forwarding started on 2 ports\n  port 0 (emu_iavf0): pair:emu_iavf1\n  port 1 (emu_iavf1): pair:emu_iavf0\n')
  t.is(await shell.execute('start'), 'failed')
  // Traffic: port 0 gets 1000 more packets each way (and 2 drops), port 1 500 on 2 queues.
  host.stats.set('emu_iavf0', sumQueues([queue(1010, 1010, 2)]))
  host.stats.set('emu_iavf1', sumQueues([queue(300, 200), queue(200, 300)]))
  clear()
  host.calls.length = 0
  t.is(await shell.execute('stop'), 'ok')
  t.deepEqual(host.calls, ['detach emu_iavf0', 'detach emu_iavf1'])
  const text = out()
  t.regex(text, /-+ Forward statistics for port 0 -+\n {2}RX-packets: 1000 +RX-dropped: 2 +RX-errors: 0 +RX-bytes: 64000\n {2}TX-packets: 1000 +TX-errors: 0 +TX-bytes: 64000\n/)
  t.regex(text, /-+ Forward statistics for port 1 -+\n {2}RX-packets: 500 +RX-dropped: 0 +RX-errors: 0 +RX-bytes: 32000\n {2}TX-packets: 500 /)
  t.regex(text, /\++ Accumulated forward statistics for all ports \++\n {2}RX-packets: 1500 +RX-dropped: 2 +RX-errors: 0 +RX-bytes: 96000\n {2}TX-packets: 1500 /)
  t.true(text.endsWith('Done.\n'))
  t.deepEqual(shell.ports.map((p) => p.attached), [null, null])
  t.is(await shell.execute('stop'), 'failed')
  // Started again in another mode: every port gets that back-end.
  await shell.execute('set fwd txonly')
  await shell.execute('set txpkts 128')
  host.calls.length = 0
  t.is(await shell.execute('start'), 'ok')
  t.deepEqual(host.calls, ['attach emu_iavf0 txonly:128', 'attach emu_iavf1 txonly:128'])
})

test('start fails cleanly when an attach is refused', async (t) => {
  const host = new FakeHost()
  const { shell, out, clear } = shellOver(host)
  t.is(await shell.execute('start'), 'failed')
  t.is(out(), 'error: no ports (port attach net_iavfbe,emu=<dev> first)\n')
  await shell.execute('port attach net_iavfbe,emu=emu_iavf0')
  await shell.execute('set fwd macswap')
  host.failAttach = new HostError('emu_iavf0: no iavf data path', 'no-datapath')
  clear()
  t.is(await shell.execute('start'), 'failed')
  t.is(out(), 'error: start: port 0 (emu_iavf0): emu_iavf0: no iavf data path; forwarding not started\n')
  t.is(await shell.execute('stop'), 'failed', 'not started')
})

test('forwarding plans: io pairs neighbours (an odd last port loops back); other modes are uniform', (t) => {
  const ports = [0, 1, 2].map((id) => ({ id, device: `emu_iavf${id}` }))
  t.deepEqual(planForwarding('io', ports.slice(0, 1)), [{ id: 0, spec: 'loopback' }])
  t.deepEqual(planForwarding('io', ports), [
    { id: 0, spec: 'pair:emu_iavf1' },
    { id: 1, spec: 'pair:emu_iavf0' },
    { id: 2, spec: 'loopback' },
  ])
  t.deepEqual(planForwarding('macswap', ports.slice(0, 2)), [
    { id: 0, spec: 'macswap' },
    { id: 1, spec: 'macswap' },
  ])
  t.deepEqual(planForwarding('rxonly', ports.slice(2)), [{ id: 2, spec: 'rxonly' }])
  t.deepEqual(planForwarding('txonly', ports.slice(0, 1)), [{ id: 0, spec: 'txonly' }])
  t.deepEqual(planForwarding('txonly', ports.slice(0, 1), 1514), [{ id: 0, spec: 'txonly:1514' }])
})

test('parseAttachArg: emu= and backend=, the spec keeping its commas', (t) => {
  t.deepEqual(parseAttachArg('net_iavfbe,emu=emu_iavf3'), { device: 'emu_iavf3', spec: 'loopback' })
  t.deepEqual(parseAttachArg('net_iavfbe,emu=emu_iavf3,backend=pcap:/tmp/x,y.pcap'), { device: 'emu_iavf3', spec: 'pcap:/tmp/x,y.pcap' })
  t.deepEqual(parseAttachArg('net_iavfbe,emu=a0,backend=txonly:64'), { device: 'a0', spec: 'txonly:64' })
  for (const bad of ['net_iavfbe', 'net_iavfbe,emu=', 'net_virtio,emu=a0', 'net_iavfbe,emu=a0,queues=2', 'net_iavfbe,emu=a0,backend=pair:', 'net_iavfbe,emu=a0,backend=pcap']) {
    t.throws(() => parseAttachArg(bad), undefined, bad)
  }
})

test('show port stats: the NIC statistics block, per-queue lines, throughput since the last show', async (t) => {
  const host = new FakeHost()
  const { shell, out, clear } = shellOver(host)
  await shell.execute('port attach net_iavfbe,emu=emu_iavf0,backend=macswap')
  host.stats.set('emu_iavf0', sumQueues([queue(7, 5, 1), queue(3, 4)]))
  clear()
  t.is(await shell.execute('show port stats 0'), 'ok')
  const lines = out().split('\n')
  t.regex(lines[0] ?? '', /^ {2}#+ NIC statistics for port 0 #+$/)
  t.is(lines[1], '  emu_iavf0, back-end macswap')
  t.regex(lines[2] ?? '', /^ {2}RX-packets: 10 +RX-dropped: 1 +RX-bytes: 640$/)
  t.regex(lines[3] ?? '', /^ {2}RX-errors: 0 *$/)
  t.regex(lines[4] ?? '', /^ {2}TX-packets: 9 +TX-errors: 0 +TX-bytes: 576$/)
  t.regex(lines[7] ?? '', /^ {2}Rx-pps: 0 pps +Rx-bps: 0 bit\/s$/)
  t.regex(out(), /^ {2}queue {2}0: RX-packets 7 RX-bytes 448 RX-dropped 1 RX-errors 0 \| TX-packets 5 TX-bytes 320 TX-errors 0$/m)
  t.regex(out(), /^ {2}queue {2}1: RX-packets 3 /m)
  t.regex(lines.at(-2) ?? '', /^ {2}#{76}$/)
  // A second show: rates from the first one.
  host.stats.set('emu_iavf0', sumQueues([queue(100_007, 5), queue(3, 4)]))
  clear()
  await shell.execute('show port stats all')
  t.regex(out(), /^ {2}Rx-pps: [\d.]+ [KM]pps +Rx-bps: [\d.]+ [kMG]bit\/s$/m)
  t.regex(out(), /^ {2}Tx-pps: 0 pps +Tx-bps: 0 bit\/s$/m)
  clear()
  t.is(await shell.execute('clear port stats 0'), 'ok')
  t.is(out(), '  NIC statistics for port 0 cleared\n')
  t.true(host.calls.includes('clear emu_iavf0'))
  t.notRegex(out(), /TX-offloaded/)
  // A data path that reports TX offloads: summed over the queues, on a line after TX.
  host.stats.set('emu_iavf0', sumQueues([{ ...queue(1, 12), txOffloaded: 10, txTso: 2 }, { ...queue(0, 3), txOffloaded: 3, txTso: 1 }]))
  clear()
  await shell.execute('show port stats 0')
  t.regex(out().split('\n')[5] ?? '', /^ {2}TX-offloaded: 13 +TX-TSO: 3$/)
})

test('show port info and show config fwd', async (t) => {
  const host = new FakeHost()
  const { shell, out, clear } = shellOver(host)
  await shell.execute('port attach net_iavfbe,emu=emu_iavf1,backend=channel')
  clear()
  await shell.execute('show port info all')
  t.regex(out(), /^ {2}\*+ Infos for port 0 \*+\n {2}Device: emu_iavf1 \(emu_iavf\) on \/tmp\/emu_iavf1\.sock\n {2}Back-end: channel\n {2}Capture: off\n$/)
  clear()
  await shell.execute('show config fwd')
  t.is(out(), 'io packet forwarding, stopped\n  port 0 (emu_iavf1): loopback\n')
})

test('capture start/stop per port; start keeps the captures of unchanged ports, stop ends them all', async (t) => {
  const host = new FakeHost()
  const { shell, out, clear } = shellOver(host)
  await shell.execute('port attach net_iavfbe,emu=emu_iavf0,backend=pair:emu_iavf1')
  await shell.execute('port attach net_iavfbe,emu=emu_iavf1')
  clear()
  t.is(await shell.execute('capture stop'), 'failed')
  t.is(await shell.execute('capture start 0 /tmp/p0.pcap'), 'ok')
  t.is(await shell.execute('capture start 0 /tmp/again.pcap'), 'failed')
  t.is(await shell.execute('capture start 1 /tmp/p1.pcap'), 'ok')
  t.is(await shell.execute('capture stop 1'), 'ok')
  t.is(await shell.execute('capture stop 1'), 'failed')
  t.is(await shell.execute('capture start 1 /tmp/p1b.pcap'), 'ok')
  t.deepEqual(errorLines(out()), [
    'error: no capture is running',
    'error: port 0 is already capturing to /tmp/p0.pcap (capture stop 0 first)',
    'error: port 1 is not capturing',
  ])
  host.calls.length = 0
  clear()
  // io: port 0 has its pair back-end already; port 1 changes from loopback.
  t.is(await shell.execute('start'), 'ok')
  t.true(out().startsWith('Capture of port 1 stopped: /tmp/p1b.pcap\nio packet forwarding started on 2 ports\n'), out())
  t.deepEqual(host.calls, ['capture-stop emu_iavf1', 'detach emu_iavf1', 'attach emu_iavf1 pair:emu_iavf0'])
  clear()
  t.is(await shell.execute('stop'), 'ok')
  t.true(out().startsWith('Capture of port 0 stopped: /tmp/p0.pcap\n'), out())
  t.is(await shell.execute('capture start 0 /tmp/p0.pcap'), 'failed', 'no back-end after stop')
  t.deepEqual(
    host.calls.filter((c) => c.startsWith('capture')),
    ['capture-stop emu_iavf1', 'capture-stop emu_iavf0'],
  )
})

test('trace on/off; the shell stops a running trace and capture when it ends', async (t) => {
  const host = new FakeHost()
  const { out, failed } = await run(
    host,
    'trace off\ntrace on /tmp/t.jsonl\ntrace on /tmp/u.jsonl\ntrace off\ntrace on /tmp/v.jsonl\nport attach net_iavfbe,emu=emu_iavf0\ncapture start 0 /tmp/c.pcap\n',
  )
  t.is(failed, 2)
  t.deepEqual(errorLines(out), ['error: no trace is running', 'error: already tracing to /tmp/t.jsonl (trace off first)'])
  t.regex(out, /^Tracing emu_iavf0 vfio-user messages to \/tmp\/t\.jsonl\nTracing emu_edu0 vfio-user messages to \/tmp\/t\.jsonl$/m)
  t.regex(out, /^Trace of emu_iavf0 stopped: \/tmp\/t\.jsonl\nTrace of emu_edu0 stopped: \/tmp\/t\.jsonl$/m)
  t.true(out.endsWith('Capture of port 0 stopped: /tmp/c.pcap\nTrace of emu_iavf0 stopped: /tmp/v.jsonl\nTrace of emu_edu0 stopped: /tmp/v.jsonl\n'), out)
  t.deepEqual(
    host.calls.filter((c) => c.startsWith('trace')),
    ['trace /tmp/t.jsonl', 'trace-stop', 'trace /tmp/v.jsonl', 'trace-stop'],
  )
})

test('monitor: live lines for the attached ports, then a summary; bounded by its seconds', async (t) => {
  const host = new FakeHost()
  await host.attach('emu_iavf0', 'loopback')
  let n = 0
  host.portStats = () => {
    n += 1
    return sumQueues([queue(n * 100, n * 100)])
  }
  const started = Date.now()
  const { out, failed } = await run(host, 'monitor 0.2\nmonitor 0\nmonitor 4000\n', { liveIntervalMs: 20 })
  t.true(Date.now() - started < 5000)
  t.is(failed, 2, out)
  const lines = out.split('\n')
  t.true(lines.filter((l) => /^\[ *\d+\.\ds\] port 0: rx \S+ \S+ \S+ \S+, tx .*, drops 0, errors 0$/.test(l)).length >= 2, out)
  t.regex(out, /^Summary over \d+\.\ds:\n {2}port 0: rx [1-9]\d* packets/m)
  t.deepEqual(
    errorLines(out).map((l) => l.split(':')[0]),
    ['Bad arguments', 'Bad arguments'],
  )
  const none = await run(new FakeHost(), 'monitor 1\n')
  t.deepEqual(errorLines(none.out), ['error: no port has a back-end attached (port attach, or start)'])
})

// ---- ServeShellHost over fake native servers ----

/** A fake iavf NativeServer with the data path methods, recording calls. */
function fakeIavfServer(calls: string[], queues: QueueStats[], traceFails = false) {
  let backend: string | null = null
  const fail = (code: string, message: string): never => {
    throw Object.assign(new Error(message), { code })
  }
  return {
    device: 'emu_iavf',
    closed: false,
    stats: () => ({ clients: 1, connected: true, messages: 42, errors: 1, dmaRequests: 0 }),
    iavfState: () => ({ linkUp: false, queuePairs: queues.length, txEnabled: 1, rxEnabled: 1, version: '1.1', caps: 0xa1, macs: [MAC] }),
    attachBackend: (spec: string) => {
      calls.push(`attach ${spec}`)
      if (spec === 'bogus') fail('ERR_EMUDEV_INVALID_ARG', 'backend=bogus: unknown back-end')
      if (backend !== null) fail('ERR_EMUDEV_BUSY', 'a back-end is attached')
      backend = spec
    },
    detachBackend: () => {
      calls.push('detach')
      backend = null
    },
    backend: () => backend,
    datapathStats: () => ({ queues }),
    clearDatapathStats: () => calls.push('clear'),
    captureStart: (path: string) => {
      calls.push(`capture ${path}`)
      if (path.length === 0) fail('ERR_VFU_ENOENT', 'No such file or directory')
    },
    captureStop: () => calls.push('capture-stop'),
    traceStart: (path: string, label?: string) => {
      calls.push(`trace ${path} ${label}`)
      if (traceFails) fail('ERR_VFU_EACCES', `trace file ${path}: Permission denied`)
    },
    traceStop: () => calls.push('trace-stop'),
  }
}

/** A ServeHandle of fake servers: emu_edu0 (whose class has the methods too, as napi classes do) and iavf devices. */
function fakeHandle(iavf: Array<{ name: string; server: unknown }>, eduCalls: string[]): ServeHandle {
  const edu = { ...fakeIavfServer(eduCalls, []), device: 'emu_edu' }
  const devices = [
    { name: 'emu_edu0', driver: 'emu_edu', path: '/tmp/e.sock', server: edu },
    ...iavf.map((d) => ({ name: d.name, driver: 'emu_iavf', path: `/tmp/${d.name}.sock`, server: d.server })),
  ] as unknown as ServedDevice[]
  return { devices, close: async () => {} }
}

test('ServeShellHost maps native errors and sums the queues', async (t) => {
  const calls: string[] = []
  const eduCalls: string[] = []
  const host = new ServeShellHost(
    fakeHandle([{ name: 'emu_iavf0', server: fakeIavfServer(calls, [queue(3, 4, 1), queue(5, 6)]) }], eduCalls),
  )
  const [edu, iavf] = host.devices()
  t.like(edu, { name: 'emu_edu0', driver: 'emu_edu', datapath: false, backend: null, messages: 42 })
  t.is(edu?.iavf, undefined)
  t.like(iavf, { name: 'emu_iavf0', datapath: true, backend: null, clients: 1, connected: true, errors: 1 })
  t.deepEqual(iavf?.iavf, { queues: 2, mac: MAC, linkUp: false, txEnabled: 1, rxEnabled: 1, version: '1.1', caps: 0xa1 })

  await host.attach('emu_iavf0', 'macswap')
  t.is(host.backend('emu_iavf0'), 'macswap')
  const busy = await t.throwsAsync(host.attach('emu_iavf0', 'loopback'), { instanceOf: HostError })
  t.is(busy?.code, 'busy')
  t.is(busy?.message, 'emu_iavf0: a back-end is attached')
  const bad = await t.throwsAsync(host.attach('emu_iavf0', 'bogus'), { instanceOf: HostError })
  t.is(bad?.code, 'invalid-arg')
  const other = t.throws(() => host.captureStart('emu_iavf0', ''), { instanceOf: HostError })
  t.is(other?.code, 'failed')
  t.is(other?.message, 'emu_iavf0: No such file or directory (ERR_VFU_ENOENT)')
  const stats = host.portStats('emu_iavf0')
  t.like(stats, { rxPackets: 8, rxBytes: 512, rxDrops: 1, txPackets: 10, txBytes: 640 })
  t.is(stats.queues.length, 2)
  await host.detach('emu_iavf0')
  await host.detach('emu_iavf0') // nothing attached: no native call
  t.deepEqual(calls.filter((c) => c === 'detach'), ['detach'])

  // The edu server has the methods (same native class) but the host never calls them.
  for (const op of [() => host.portStats('emu_edu0'), () => host.clearStats('emu_edu0'), () => host.captureStop('emu_edu0')]) {
    const err = t.throws(op, { instanceOf: HostError })
    t.is(err?.code, 'no-datapath')
    t.is(err?.message, 'emu_edu0 is an emu_edu device: it has no data path (only emu_iavf devices do)')
  }
  t.is((await t.throwsAsync(host.attach('emu_edu0', 'loopback')))?.message, 'emu_edu0 is an emu_edu device: it has no data path (only emu_iavf devices do)')
  t.deepEqual(eduCalls, [])
  t.is((await t.throwsAsync(host.attach('emu_x9', 'loopback'), { instanceOf: HostError }))?.code, 'unknown-device')
})

test('ServeShellHost traces every device that can into one file, labelled with its name', (t) => {
  const a: string[] = []
  const b: string[] = []
  const eduCalls: string[] = []
  const host = new ServeShellHost(
    fakeHandle(
      [
        { name: 'emu_iavf0', server: fakeIavfServer(a, []) },
        { name: 'emu_iavf1', server: fakeIavfServer(b, []) },
      ],
      eduCalls,
    ),
  )
  t.deepEqual(host.traceStart('/tmp/trace.jsonl'), [
    { device: 'emu_edu0', file: '/tmp/trace.jsonl' },
    { device: 'emu_iavf0', file: '/tmp/trace.jsonl' },
    { device: 'emu_iavf1', file: '/tmp/trace.jsonl' },
  ])
  t.is(t.throws(() => host.traceStart('/tmp/x'), { instanceOf: HostError })?.code, 'busy')
  t.deepEqual(host.traceStop(), ['emu_edu0', 'emu_iavf0', 'emu_iavf1'])
  t.deepEqual(host.traceStop(), [])
  t.deepEqual(eduCalls, ['trace /tmp/trace.jsonl emu_edu0', 'trace-stop'])
  t.deepEqual(a, ['trace /tmp/trace.jsonl emu_iavf0', 'trace-stop'])
  t.deepEqual(b, ['trace /tmp/trace.jsonl emu_iavf1', 'trace-stop'])

  // One device fails: an error naming it, and the ones already started are stopped again.
  const c: string[] = []
  const failing = new ServeShellHost(
    fakeHandle(
      [
        { name: 'emu_iavf0', server: fakeIavfServer(c, []) },
        { name: 'emu_iavf1', server: fakeIavfServer([], [], true) },
      ],
      [],
    ),
  )
  const err = t.throws(() => failing.traceStart('/tmp/t.jsonl'), { instanceOf: HostError })
  t.is(err?.code, 'failed')
  t.is(err?.message, 'emu_iavf1: trace file /tmp/t.jsonl: Permission denied (ERR_VFU_EACCES)')
  t.deepEqual(c, ['trace /tmp/t.jsonl emu_iavf0', 'trace-stop'])
  t.deepEqual(failing.traceStop(), [])

  // An addon without the data path and the trace: clear refusals.
  const old = { device: 'emu_iavf', closed: false, stats: () => ({}), iavfState: () => ({ macs: [] }) }
  const bare = new ServeShellHost({
    devices: [{ name: 'emu_iavf0', driver: 'emu_iavf', path: '/tmp/v.sock', server: old }] as unknown as ServedDevice[],
    close: async () => {},
  })
  const refused = t.throws(() => bare.traceStart('/tmp/t'), { instanceOf: HostError })
  t.is(refused?.code, 'no-datapath')
  t.is(refused?.message, 'this build of the native addon cannot trace vfio-user messages (rebuild it)')
  t.is(t.throws(() => bare.portStats('emu_iavf0'), { instanceOf: HostError })?.message, 'emu_iavf0: this build of the native addon has no iavf data path (rebuild it)')
  t.false(bare.devices()[0]?.datapath)
})

// ---- With the native data path (skipped until NativeServer has attachBackend) ----

test('native: port attach/detach, show port info/stats on a real emu_iavf device', async (t) => {
  const handle = await served(t)
  const host = new ServeShellHost(handle)
  const { out, failed } = await run(
    host,
    [
      'port attach net_iavfbe,emu=emu_iavf0',
      'port attach net_iavfbe,emu=emu_iavf0,backend=macswap',
      'show port info 0',
      'show port stats 0',
      'show device emu_iavf0',
      'port detach 0',
      'port attach net_iavfbe,emu=emu_iavf0,backend=txonly:notalength',
    ].join('\n'),
  )
  t.is(failed, 2, out)
  t.true(out.startsWith('Port 0 attached to emu_iavf0 (back-end loopback)\nerror: emu_iavf0 is already port 0'), out)
  t.regex(out, /^ {2}Back-end: loopback$/m)
  t.regex(out, /^ {2}RX-packets: 0 +RX-dropped: 0 +RX-bytes: 0$/m)
  t.regex(out, /^ {2}back-end: {2}loopback \(port 0\)$/m)
  t.regex(out, /^Port 0 detached from emu_iavf0$/m)
  t.regex(out, /^error: emu_iavf0: .*\(ERR_EMUDEV_INVALID_ARG\)$|^error: emu_iavf0: .*txonly/m)
  t.is(host.backend('emu_iavf0'), null)
})

test('native: set fwd io pairs two emu_iavf devices; start/stop; capture and trace files', async (t) => {
  const handle = await served(t, true)
  const host = new ServeShellHost(handle)
  const dir = dirname(handle.devices[0]?.path ?? '')
  const pcap = join(dir, 'port0.pcap')
  const trace = join(dir, 'trace.jsonl')
  const { out, failed } = await run(
    host,
    [
      'port attach net_iavfbe,emu=emu_iavf0',
      'port attach net_iavfbe,emu=emu_iavf1',
      'set fwd io',
      'start',
      `capture start 0 ${pcap}`,
      `trace on ${trace}`,
      'show port stats all',
      'capture stop 0',
      'trace off',
      'stop',
    ].join('\n'),
  )
  t.is(failed, 0, out)
  t.regex(out, /^ {2}port 0 \(emu_iavf0\): pair:emu_iavf1\n {2}port 1 \(emu_iavf1\): pair:emu_iavf0$/m)
  t.regex(out, /Accumulated forward statistics for all ports/)
  t.is(host.backend('emu_iavf0'), null)
  t.is(host.backend('emu_iavf1'), null)
  t.true(existsSync(pcap))
  t.true(statSync(pcap).size >= 24, 'at least the pcap file header')
  t.true(existsSync(trace))
})

test('native: trace on/off writes the decoded messages of a client as JSON lines labelled with the device', async (t) => {
  const handle = await served(t)
  const edu = handle.devices[0]
  if (edu === undefined) return t.fail()
  const trace = join(dirname(edu.path), 'trace.jsonl')
  const shell = new Shell(new ServeShellHost(handle), () => {})
  t.is(await shell.execute(`trace on ${trace}`), 'ok')
  const client = native.NativeClient.connect(edu.path)
  client.readU32(0, 0)
  await client.close()
  t.true(await waitFor(() => !edu.server.stats().connected, 5000))
  t.is(await shell.execute('trace off'), 'ok')
  const records = readFileSync(trace, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as { device?: unknown })
  const eduRecords = records.filter((r) => r.device === 'emu_edu0')
  t.true(eduRecords.length >= 2, 'at least the version negotiation and the region read')
  t.true(records.every((r) => r.device === 'emu_edu0' || r.device === 'emu_iavf0'), 'every line names its device')
  const size = statSync(trace).size
  t.is(await shell.execute('show device'), 'ok')
  t.is(statSync(trace).size, size, 'nothing more after trace off')
})
