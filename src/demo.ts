/**
 * `npm run demo`: the emulated iavf NIC with traffic (see `demo-iavf.ts`):
 * `emudev serve -i`, `port attach net_iavfbe,emu=emu_iavf0`, the iavf client
 * driver's bring-up and a few seconds of io forwarding, a summary table and a
 * pcap of the first frames.
 *
 * `npm run demo -- --edu`: the `edu` device end to end, over a real
 * vfio-user socket. `npm run demo -- --script examples/edu.ts` does the same
 * against the edu device written in TypeScript (`emudev serve --script`):
 * the client steps are the same, and so must be the results.
 *
 * The edu demo:
 * Starts `emudev serve` as a child process, connects to it with the native
 * client and drives the device the way a guest driver would: identification,
 * liveness, factorial, a DMA round trip through the device's buffer, and an
 * MSI interrupt. Then it closes the client, stops the server with SIGTERM and
 * checks that the socket is gone. Each step prints one line; a failed step
 * prints what went wrong and the demo exits 1.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'

import { iavfDemo } from './demo-iavf'
import { native } from './native'

type NativeClient = InstanceType<typeof native.NativeClient>

/** How long the server may take to create its socket, and to exit. */
const STARTUP_MS = 5000
const EXIT_MS = 5000

const L = native.eduLayout()
const BAR0 = 0
const CONFIG = 7
const MSI = 1
const IOVA = 0x10_0000n
const DMA_BYTES = 2048

/** The step running now, named in the message if it fails. */
let step = 'start'

/** A step failed; the message says what was expected and what happened. */
class StepError extends Error {}

function check(ok: boolean, message: string): void {
  if (!ok) throw new StepError(message)
}

function hex(n: number | bigint, width = 0): string {
  return `0x${n.toString(16).padStart(width, '0')}`
}

function print(step: string, text: string): void {
  console.log(`  ${step.padEnd(10)} ${text}`)
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Resolves with the child's exit code (or signal name), or null after `ms`. */
function waitForExit(child: ChildProcess, ms: number): Promise<number | string | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode)
  if (child.signalCode !== null) return Promise.resolve(child.signalCode)
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), ms)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve(code ?? signal)
    })
  })
}

/**
 * Waits until the server says it listens: the socket file alone is not
 * enough, it exists a moment before the server accepts connections.
 */
async function waitForServer(path: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + STARTUP_MS
  while (!log().includes(`listening on ${path}`) || !existsSync(path)) {
    if (child.exitCode !== null) throw new StepError(`the server exited with ${child.exitCode}: ${log().trim()}`)
    if (Date.now() > deadline) throw new StepError(`the server did not listen on ${path} within ${STARTUP_MS} ms`)
    await sleep(20)
  }
}

/** Starts an edu DMA (`toRam`: EDU buffer to RAM) and checks that it ended. */
function dma(client: NativeClient, src: bigint, dst: bigint, count: number, toRam: boolean): void {
  client.writeU64(BAR0, L.regDmaSrc, src)
  client.writeU64(BAR0, L.regDmaDst, dst)
  client.writeU64(BAR0, L.regDmaCount, BigInt(count))
  client.writeU64(BAR0, L.regDmaCmd, BigInt(L.dmaCmdStart | (toRam ? L.dmaCmdToRam : 0)))
  const cmd = client.readU64(BAR0, L.regDmaCmd)
  check((cmd & BigInt(L.dmaCmdStart)) === 0n, `DMA still running (cmd ${hex(cmd)})`)
}

async function drive(client: NativeClient): Promise<void> {
  step = 'device'
  const info = client.deviceInfo()
  const regions = client.regions()
  const bar0 = regions[BAR0]
  const config = regions[CONFIG]
  check(bar0 !== undefined && config !== undefined, `expected BAR0 and config regions, got ${regions.length}`)
  print('device', `${info.numRegions} regions, ${info.numIrqs} IRQ indexes, flags ${hex(info.flags)}`)
  const present = regions.filter((r) => r.size > 0n)
  const size = (n: bigint): string =>
    n % (1n << 20n) === 0n ? `${n >> 20n} MiB` : n % 1024n === 0n ? `${n >> 10n} KiB` : `${n} B`
  const describe = (r: (typeof regions)[number]): string =>
    `#${r.index} ${size(r.size)} ${r.readable ? 'r' : '-'}${r.writable ? 'w' : '-'}${r.mappable ? 'm' : '-'}`
  print('regions', present.map(describe).join(', '))

  step = 'id'
  const id = client.readU32(BAR0, L.regId)
  check(id === L.idValue, `id register ${hex(id, 8)}, expected ${hex(L.idValue, 8)}`)
  print('id', `${hex(id, 8)} -> edu v${id >>> 24}.${(id >>> 16) & 0xff}`)

  step = 'liveness'
  const probe = 0x12345678
  client.writeU32(BAR0, L.regLiveness, probe)
  const inverted = client.readU32(BAR0, L.regLiveness)
  check(inverted === (~probe >>> 0), `liveness read ${hex(inverted, 8)}, expected ${hex(~probe >>> 0, 8)}`)
  print('liveness', `wrote ${hex(probe, 8)}, read ${hex(inverted, 8)}`)

  step = 'factorial'
  client.writeU32(BAR0, L.regFactorial, 10)
  const fact = client.readU32(BAR0, L.regFactorial)
  check(fact === 3628800, `10! read as ${fact}`)
  print('factorial', `10! = ${fact}`)

  step = 'dma'
  const buf = client.allocDma(IOVA, 4096)
  const pattern = Buffer.alloc(DMA_BYTES)
  for (let i = 0; i < DMA_BYTES; i++) pattern[i] = (i * 31 + 7) & 0xff
  buf.write(0, pattern)
  const edu = BigInt(L.dmaBufAddr)
  const back = IOVA + BigInt(DMA_BYTES)
  dma(client, IOVA, edu, DMA_BYTES, false)
  dma(client, edu, back, DMA_BYTES, true)
  const copy = buf.read(DMA_BYTES, DMA_BYTES)
  check(copy.equals(pattern), 'the bytes DMAed back differ from the pattern')
  print('dma', `${DMA_BYTES} B RAM ${hex(IOVA)} -> EDU ${hex(edu)} -> RAM ${hex(back)}: identical`)

  step = 'msi'
  client.enableIrqs(MSI, 1)
  const flagsAt = L.msiCapOffset + 2
  const flags = client.regionRead(CONFIG, flagsAt, 2)
  flags.writeUInt16LE(flags.readUInt16LE(0) | 1, 0)
  client.regionWrite(CONFIG, flagsAt, flags)
  const pending = client.waitIrq(MSI, 0, 2000)
  client.writeU32(BAR0, L.regIrqRaise, 0x1)
  const count = await pending
  const status = client.readU32(BAR0, L.regIrqStatus)
  check(status === 0x1, `interrupt status ${hex(status)}, expected 0x1`)
  client.writeU32(BAR0, L.regIrqAck, status)
  const after = client.readU32(BAR0, L.regIrqStatus)
  check(after === 0, `interrupt status ${hex(after)} after the ack`)
  print('msi', `raise 0x1 -> eventfd count ${count}, status ${hex(status)}, ack -> ${hex(after)}`)
}

/** The `emudev serve` arguments: the native edu, or a device script. */
function serveArgs(values: { script?: string | undefined }, sock: string): { args: string[]; what: string } {
  if (values.script !== undefined) {
    const script = resolve(values.script)
    return { args: ['serve', '--script', script, '--sock', sock], what: `emudev serve --script ${values.script} --sock ${sock}` }
  }
  const vdev = `emu_edu0,sock=${sock}`
  return { args: ['serve', '--vdev', vdev], what: `emudev serve --vdev ${vdev}` }
}

/** Where the iavf demo leaves its pcap (it outlives the demo, to be opened with tshark). */
export const DEMO_PCAP = join(tmpdir(), 'emudev-demo-first-packets.pcap')

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { script: { type: 'string' }, edu: { type: 'boolean' } }, strict: true })
  const dir = mkdtempSync(join(tmpdir(), 'emudev-demo-'))
  const sock = join(dir, 'edu.sock')
  const cli = join(__dirname, 'cli.js')
  if (values.edu !== true && values.script === undefined) {
    try {
      await iavfDemo(cli, dir, DEMO_PCAP)
      console.log('ok')
      return 0
    } catch (err) {
      const code = (err as { code?: unknown }).code
      console.error(`demo: ${err instanceof Error ? err.message : String(err)}${typeof code === 'string' ? ` (${code})` : ''}`)
      return 1
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }
  let serverLog = ''
  let child: ChildProcess | undefined
  let client: NativeClient | undefined
  step = 'server'
  try {
    const { args, what } = serveArgs(values, sock)
    console.log(`emudev demo (native ${native.nativeVersion()})`)
    child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      serverLog += chunk
    })
    await waitForServer(sock, child, () => serverLog)
    print('server', `${what} (pid ${child.pid})`)

    step = 'connect'
    client = native.NativeClient.connect(sock)
    await drive(client)

    step = 'stop'
    await client.close()
    client = undefined
    child.kill('SIGTERM')
    const exit = await waitForExit(child, EXIT_MS)
    check(exit === 0, `the server exited with ${exit === null ? 'nothing (still running)' : exit}`)
    check(!existsSync(sock), `the socket ${sock} is still there`)
    print('stop', 'client closed; server SIGTERM -> exit 0, socket removed')
    for (const line of serverLog.trim().split('\n')) print('', `server | ${line.replace(/^emudev: /, '')}`)
    console.log('ok')
    return 0
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    const code = (err as { code?: unknown }).code
    console.error(`demo: ${step} failed: ${message}${typeof code === 'string' ? ` (${code})` : ''}`)
    if (serverLog.trim() !== '') console.error(`server log:\n${serverLog.trimEnd()}`)
    return 1
  } finally {
    await client?.close()
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await waitForExit(child, EXIT_MS)
    }
    rmSync(dir, { recursive: true, force: true })
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    console.error(`demo: ${err instanceof Error ? err.message : String(err)}`)
    process.exitCode = 1
  },
)
