/**
 * The iavf part of `npm run demo`: a composed device with traffic, the way
 * DPDK's emudev is used by hand.
 *
 * 1. `emudev serve -i --vdev emu_iavf0,sock=...,queues=1,doorbells=mmap` runs
 *    as a child process with its `emudev>` shell on a pipe (the tail
 *    registers on mmapped doorbell pages, polled by the data path);
 * 2. the shell attaches the software data path (`port attach
 *    net_iavfbe,emu=emu_iavf0`, loopback back-end) and starts a capture of the
 *    first frames (`capture start 0 <file> 64`);
 * 3. the iavf client driver (`IavfPort`, in this process) connects over
 *    vfio-user, brings the VF up to link-up, and forwards in io mode for a few
 *    seconds after injecting 16 bursts of 32 UDP frames (testpmd's `start
 *    tx_first 16`), with a live rate line;
 * 4. the shell stops the capture, prints the port's statistics and quits;
 *    the demo prints a summary table and the pcap's path and reads the pcap
 *    back to check it holds the frames.
 *
 * Each stage prints what it does; a failure prints the stage and exits 1.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

import { IavfPort } from './iavf'
import { forwardSample, startLive } from './live'

/** Seconds of forwarding. */
export const DEMO_SECONDS = 3
/** Frames the capture keeps. */
export const CAPTURE_FRAMES = 64

const STARTUP_MS = 10_000
const EXIT_MS = 10_000

/** A stage failed. */
export class DemoError extends Error {}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** The records of a classic little-endian pcap file (throws on anything else). */
export function pcapRecords(path: string): Buffer[] {
  const b = readFileSync(path)
  if (b.length < 24 || b.readUInt32LE(0) !== 0xa1b2c3d4 || b.readUInt32LE(20) !== 1) {
    throw new DemoError(`${path} is not an Ethernet pcap file`)
  }
  const out: Buffer[] = []
  let off = 24
  while (off + 16 <= b.length) {
    const len = b.readUInt32LE(off + 8)
    if (off + 16 + len > b.length) throw new DemoError(`${path}: truncated record at byte ${off}`)
    out.push(b.subarray(off + 16, off + 16 + len))
    off += 16 + len
  }
  return out
}

/** The `emudev>` shell of a child `emudev serve -i`, driven line by line. */
class ShellChild {
  readonly child: ChildProcess
  out = ''
  err = ''

  constructor(cli: string, args: string[]) {
    this.child = spawn(process.execPath, [cli, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    this.child.stdout?.setEncoding('utf8').on('data', (c: string) => (this.out += c))
    this.child.stderr?.setEncoding('utf8').on('data', (c: string) => (this.err += c))
  }

  /** Waits (bounded) until `what` appears in the output after `from`. */
  async waitFor(what: string | RegExp, from: number, ms: number, stage: string): Promise<string> {
    const deadline = Date.now() + ms
    for (;;) {
      const text = this.out.slice(from) + this.err
      const hit = typeof what === 'string' ? text.includes(what) : what.test(text)
      if (hit) return this.out.slice(from)
      if (this.child.exitCode !== null) throw new DemoError(`${stage}: emudev serve exited with ${this.child.exitCode}: ${this.err.trim()}`)
      if (Date.now() > deadline) throw new DemoError(`${stage}: no '${String(what)}' within ${ms} ms; output: ${this.out.slice(from).trim()}`)
      await sleep(20)
    }
  }

  /** Sends one command and returns what it printed up to `until`. */
  async run(command: string, until: string | RegExp, stage: string): Promise<string> {
    const from = this.out.length
    this.child.stdin?.write(`${command}\n`)
    const text = await this.waitFor(until, from, STARTUP_MS, stage)
    if (/^(Bad arguments|error):/m.test(text)) throw new DemoError(`${stage}: ${command}: ${text.trim()}`)
    return text
  }

  exited(ms: number): Promise<number | string | null> {
    const c = this.child
    if (c.exitCode !== null) return Promise.resolve(c.exitCode)
    if (c.signalCode !== null) return Promise.resolve(c.signalCode)
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), ms)
      c.once('exit', (code, signal) => {
        clearTimeout(timer)
        resolve(code ?? signal)
      })
    })
  }
}

function print(stage: string, text: string): void {
  console.log(`  ${stage.padEnd(9)} ${text}`)
}

/**
 * Runs the iavf demo with its socket in `dir` and the capture in `pcap`, with
 * the CLI at `cli`; resolves once everything is closed.
 */
export async function iavfDemo(cli: string, dir: string, pcap: string): Promise<void> {
  const sock = join(dir, 'sock1')
  console.log('emudev demo: an emulated Intel AVF NIC with the software data path, driven by the iavf client driver')
  const vdev = `emu_iavf0,sock=${sock},queues=1,doorbells=mmap`
  const shell = new ShellChild(cli, ['serve', '-i', '--vdev', vdev])
  let port: IavfPort | undefined
  try {
    await shell.waitFor(`listening on ${sock}`, 0, STARTUP_MS, 'server')
    print('server', `emudev serve -i --vdev '${vdev}' (pid ${shell.child.pid})`)
    const attached = await shell.run('port attach net_iavfbe,emu=emu_iavf0', /Port 0 attached/, 'attach')
    print('attach', `emudev> port attach net_iavfbe,emu=emu_iavf0  ->  ${attached.trim().split('\n').pop() ?? ''}`)
    await shell.run(`capture start 0 ${pcap} ${CAPTURE_FRAMES}`, 'Capturing port 0', 'capture')
    print('capture', `emudev> capture start 0 ${pcap} ${CAPTURE_FRAMES}`)

    // Rings of 1024, so the 512 frames in flight never find the RX ring full (as in testpmd).
    port = await IavfPort.connect(sock, { queues: 1, ringLen: 1024 })
    const up = await port.start()
    const bringUpMs = up.steps.reduce((n, s) => n + s.micros, 0) / 1000
    print('bring-up', `${up.steps.length} steps in ${bringUpMs.toFixed(2)} ms: ${up.steps.map((s) => s.step).join(', ')}`)
    if (!up.link.up) throw new DemoError('bring-up: the link did not come up')
    print('link', `up, ${up.link.speedMbps ?? '?'} Mbps, mac ${up.mac}`)

    print('forward', `io, tx_first 16 (512 UDP frames 198.18.0.1 -> 198.19.0.1, 64 B) for ${DEMO_SECONDS} s`)
    const p = port
    const live = startLive({
      sample: () => forwardSample(p.forwardStats()),
      output: { write: (t: string) => process.stdout.write(t), isTTY: process.stdout.isTTY === true },
      durationMs: DEMO_SECONDS * 1000 + 5000,
      printSummary: false,
    })
    const fwd = await port.forward({ mode: 'io', txFirst: 16, durationMs: DEMO_SECONDS * 1000 })
    live.stop()
    const vsi = await port.stats()

    const stats = await shell.run('capture stop 0\nshow port stats 0', /NIC statistics for port 0[^\n]*\n[\s\S]*\n\s*#{20,}\n/, 'stats')
    const dev = /RX-packets:\s*(\d+)[\s\S]*?RX-dropped:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)/.exec(stats)
    await shell.run('quit', '', 'quit')
    const exit = await shell.exited(EXIT_MS)
    if (exit !== 0) throw new DemoError(`stop: emudev serve exited with ${String(exit)}`)
    if (existsSync(sock)) throw new DemoError(`stop: the socket ${sock} is still there`)
    await port.close()
    port = undefined

    const frames = pcapRecords(pcap)
    if (frames.length === 0) throw new DemoError(`capture: ${pcap} holds no frames`)
    const udp = frames.filter((f) => f.length >= 34 && f.readUInt16BE(12) === 0x0800 && f[23] === 17).length

    const rows: [string, string][] = [
      ['bring-up (connect -> link up)', `${bringUpMs.toFixed(2)} ms`],
      ['forwarding time', `${fwd.seconds.toFixed(2)} s`],
      ['packets received (client)', String(fwd.rxPackets)],
      ['packets sent (client)', String(fwd.txPackets)],
      ['rate', `${(fwd.rxPackets / fwd.seconds / 1e6).toFixed(3)} Mpps, ${((fwd.rxBytes * 8) / fwd.seconds / 1e9).toFixed(3)} Gbit/s`],
      ['dropped (client TX ring full)', String(fwd.txDropped)],
      ['device RX / dropped / TX', dev === null ? '?' : `${dev[1]} / ${dev[2]} / ${dev[3]}`],
      ['VSI counters (GET_STATS)', `rx ${vsi.rxBytes} B, tx ${vsi.txBytes} B, rx discards ${vsi.rxDiscards}`],
      ['pcap of the first frames', `${pcap} (${frames.length} frames, ${udp} UDP/IPv4)`],
    ]
    const w = Math.max(...rows.map((r) => r[0].length))
    console.log('  summary')
    for (const [k, v] of rows) console.log(`    ${k.padEnd(w)}  ${v}`)
    print('stop', 'shell quit -> servers closed, socket removed')
  } finally {
    await port?.close()
    if (shell.child.exitCode === null && shell.child.signalCode === null) {
      shell.child.kill('SIGKILL')
      await shell.exited(EXIT_MS)
    }
  }
}
