// The iavf software data path from JavaScript, over real UNIX sockets: back-ends attached to a
// NativeServer (loopback, pair, channel, pcap), the client port's send/receive/packets/forward,
// the capture tap, the trace files, and the CLI's `client --fwd` and `serve -i` with traffic.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join, dirname } from 'node:path'

import test from 'ava'

import { BackendChannel, IavfPort, NativeServer } from '../src/index'
import { cli, ensureDistBuilt, killOnTeardown, runCliAsync, tempSocket, waitFor, waitForExit } from './helpers'

test.before(ensureDistBuilt)

/** A unicast frame of `len` bytes whose content depends on `seed`. */
function frame(len: number, seed: number): Buffer {
  const f = Buffer.alloc(len)
  for (let i = 0; i < len; i++) f[i] = (i * 7 + seed) & 0xff
  f[0] = 0x02
  return f
}

/** Receives until `n` frames came or `ms` passed. */
async function receiveN(port: IavfPort, n: number, ms = 5000): Promise<Buffer[]> {
  const out: Buffer[] = []
  const end = Date.now() + ms
  while (out.length < n && Date.now() < end) out.push(...(await port.receive({ max: 64, timeoutMs: 50 })))
  return out
}

/** The records of a classic pcap file (checks the global header). */
function readPcap(path: string): Buffer[] {
  const b = readFileSync(path)
  if (b.length < 24 || b.readUInt32LE(0) !== 0xa1b2c3d4) throw new Error(`${path}: not a little-endian pcap`)
  if (b.readUInt32LE(20) !== 1) throw new Error(`${path}: link type ${b.readUInt32LE(20)}, want 1 (Ethernet)`)
  const out: Buffer[] = []
  let off = 24
  while (off + 16 <= b.length) {
    const incl = b.readUInt32LE(off + 8)
    const orig = b.readUInt32LE(off + 12)
    if (incl !== orig || off + 16 + incl > b.length) throw new Error(`${path}: bad record at ${off}`)
    out.push(b.subarray(off + 16, off + 16 + incl))
    off += 16 + incl
  }
  if (off !== b.length) throw new Error(`${path}: ${b.length - off} trailing bytes`)
  return out
}

async function upPort(t: import('ava').ExecutionContext, sock: string, queues = 1): Promise<IavfPort> {
  const port = await IavfPort.connect(sock, { queues })
  t.teardown(() => port.close())
  await port.start()
  return port
}

test('loopback: frames sent by the port come back byte-identical and the counters agree', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback' })
  t.teardown(() => server.close())
  t.is(server.backend(), 'loopback')
  const port = await upPort(t, sock)
  const frames = [frame(64, 1), frame(1500, 2), frame(60, 3), frame(1514, 4)]
  t.is(await port.send(frames), 4)
  const got = await receiveN(port, 4)
  t.deepEqual(got, frames)
  // The worker adds a burst's counters just after writing its descriptors back.
  await waitFor(() => server.datapathStats().queues[0]!.rxPackets >= 4, 5000)
  const dp = server.datapathStats()
  t.is(dp.backend, 'loopback')
  t.is(dp.queues.length, 1)
  const q = dp.queues[0]!
  const bytes = frames.reduce((n, f) => n + f.length, 0)
  t.deepEqual(q, { txPackets: 4, txBytes: bytes, txErrors: 0, rxPackets: 4, rxBytes: bytes, rxErrors: 0, rxDrops: 0, txOffloaded: 0, txTso: 0 })
  const vsi = await port.stats()
  t.is(vsi.txBytes, bytes)
  t.is(vsi.rxBytes, bytes)
  server.clearDatapathStats()
  t.is(server.datapathStats().queues[0]!.txPackets, 0)
  await t.throwsAsync(port.send([Buffer.alloc(0)]), { code: 'ERR_EMUDEV_INVALID_ARG' })
})

test('packets() yields what arrives and ends when aborted', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'macswap' })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  const ac = new AbortController()
  const sent = [frame(100, 9), frame(200, 10)]
  await port.send(sent)
  const seen: Buffer[] = []
  for await (const f of port.packets({ signal: ac.signal })) {
    seen.push(f)
    if (seen.length === 2) ac.abort()
  }
  // macswap: destination and source MAC exchanged.
  const want = sent.map((f) => Buffer.concat([f.subarray(6, 12), f.subarray(0, 6), f.subarray(12)]))
  t.deepEqual(seen, want)
})

test('send() while packets() is waiting: the frames reach the running loop', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback' })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  const ac = new AbortController()
  const seen: Buffer[] = []
  const loop = (async () => {
    for await (const f of port.packets({ signal: ac.signal })) {
      seen.push(f)
      if (seen.length === 3) ac.abort()
    }
  })()
  // The loop is already polling an empty ring when these go out.
  await new Promise((resolve) => setTimeout(resolve, 50))
  const frames = [frame(64, 21), frame(65, 22), frame(66, 23)]
  t.is(await port.send(frames), 3)
  const guard = setTimeout(() => ac.abort(), 10_000)
  await loop
  clearTimeout(guard)
  t.deepEqual(seen, frames)
})

test('attachBackend / detachBackend: codes for busy, bad spec, nothing attached and the wrong device', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf7' })
  t.teardown(() => server.close())
  t.is(server.backend(), null)
  t.throws(() => server.datapathStats(), { code: 'ERR_EMUDEV_NOT_READY' })
  t.throws(() => server.detachBackend(), { code: 'ERR_EMUDEV_NOT_READY' })
  t.throws(() => server.attachBackend('tap'), { code: 'ERR_EMUDEV_INVALID_ARG', message: /tap/ })
  t.throws(() => server.attachBackend('pair:emu_iavf7'), { code: 'ERR_EMUDEV_INVALID_ARG', message: /itself/ })
  server.attachBackend('rxonly')
  t.throws(() => server.attachBackend('loopback'), { code: 'ERR_EMUDEV_BUSY' })
  t.throws(() => server.channelSend([frame(64, 1)]), { code: 'ERR_EMUDEV_NOT_READY', message: /channel/ })
  server.detachBackend()
  t.is(server.backend(), null)
  server.attachBackend('loopback')
  const port = await upPort(t, sock)
  t.is(await port.send([frame(64, 5)]), 1)
  t.is((await receiveN(port, 1)).length, 1)
  const edu = NativeServer.listenEdu(tempSocket(t, 'edu.sock'))
  t.teardown(() => edu.close())
  t.throws(() => edu.attachBackend('loopback'), { code: 'ERR_EMUDEV_INVALID_ARG', message: /emu_iavf/ })
})

test('pair: two servers wired together carry frames both ways, identical', async (t) => {
  const sa = tempSocket(t, 'a.sock')
  const sb = join(dirname(sa), 'b.sock')
  const a = NativeServer.listenIavf(sa, { name: 'emu_iavf20', backend: 'pair:emu_iavf21' })
  t.teardown(() => a.close())
  const b = NativeServer.listenIavf(sb, { name: 'emu_iavf21', backend: 'pair:emu_iavf20' })
  t.teardown(() => b.close())
  const pa = await upPort(t, sa)
  const pb = await upPort(t, sb)
  const ab = Array.from({ length: 100 }, (_, i) => frame(60 + i * 9, i))
  let sent = 0
  while (sent < ab.length) sent += await pa.send(ab.slice(sent, sent + 32))
  t.deepEqual(await receiveN(pb, ab.length), ab)
  const ba = [frame(1514, 1), frame(64, 2)]
  t.is(await pb.send(ba), 2)
  t.deepEqual(await receiveN(pa, 2), ba)
  await waitFor(() => a.datapathStats().queues[0]!.rxPackets >= 2 && b.datapathStats().queues[0]!.rxPackets >= 100, 5000)
  const qa = a.datapathStats().queues[0]!
  const qb = b.datapathStats().queues[0]!
  t.is(qa.txPackets, 100)
  t.is(qb.rxPackets, 100)
  t.is(qb.txPackets, 2)
  t.is(qa.rxPackets, 2)
  t.is(qa.txBytes, qb.rxBytes)
  // A third device cannot take a peer that is already paired.
  const c = NativeServer.listenIavf(join(dirname(sa), 'c.sock'), { name: 'emu_iavf22' })
  t.teardown(() => c.close())
  t.throws(() => c.attachBackend('pair:emu_iavf20'), { code: 'ERR_EMUDEV_BUSY' })
})

test('channel back-end: JavaScript gets what the client sends and feeds its RX', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'channel' })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  const out = [frame(64, 1), frame(300, 2), frame(1500, 3)]
  t.is(await port.send(out), 3)
  const got: Buffer[] = []
  t.true(
    await waitFor(() => {
      got.push(...server.channelReceive(undefined, 16))
      return got.length >= 3
    }, 5000),
  )
  t.deepEqual(got, out)
  const inbound = [frame(99, 7), frame(1000, 8)]
  t.is(server.channelSend(inbound), 2)
  t.deepEqual(await receiveN(port, 2), inbound)
  t.throws(() => server.channelSend([Buffer.alloc(0)]), { code: 'ERR_EMUDEV_INVALID_ARG' })
})

test('capture and pcap back-end files parse and hold the frames', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const dir = dirname(sock)
  const out = join(dir, 'out.pcap')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback' })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  t.throws(() => server.captureStop(), { code: 'ERR_EMUDEV_NOT_READY' })
  server.captureStart(join(dir, 'cap.pcap'))
  t.throws(() => server.captureStart(join(dir, 'cap2.pcap')), { code: 'ERR_EMUDEV_BUSY' })
  const frames = [frame(64, 1), frame(128, 2)]
  await port.send(frames)
  t.deepEqual(await receiveN(port, 2), frames)
  t.is(server.captureStop(), 4)
  // Loopback: each frame as sent (TX), then as delivered (RX).
  t.deepEqual(readPcap(join(dir, 'cap.pcap')), [frames[0], frames[0], frames[1], frames[1]])

  server.detachBackend()
  server.attachBackend(`pcap:${out}`)
  const more = [frame(70, 3), frame(1400, 4), frame(90, 5)]
  t.is(await port.send(more), 3)
  t.true(await waitFor(() => server.datapathStats().queues[0]!.txPackets === 3, 5000))
  server.detachBackend()
  t.deepEqual(readPcap(out), more)
  t.throws(() => server.attachBackend(`pcap:${join(dir, 'missing', 'x.pcap')}`), { code: 'ERR_EMUDEV_INVALID_ARG' })
})

test('forward: rxonly counts what arrives, io keeps the injected packets going', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback' })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  t.is(port.forwardStats(), null)
  await port.send(Array.from({ length: 20 }, (_, i) => frame(64 + i, i)))
  const rx = await port.forward({ mode: 'rxonly', durationMs: 200 })
  t.is(rx.rxPackets, 20)
  t.is(rx.txPackets, 0)
  const io = await port.forward({ mode: 'io', txFirst: 1, durationMs: 300 })
  t.true(io.rxPackets > 32, `${io.rxPackets} packets went round`)
  t.is(io.txPackets, io.rxPackets + 32)
  t.is(io.rxBytes, io.rxPackets * 64)
  t.true(io.seconds >= 0.3 && io.seconds < 5)
  t.deepEqual(port.forwardStats(), { ...io, seconds: 0 })
  // stopForward ends a forward that has no duration.
  const running = port.forward({ mode: 'txonly', frameLen: 128 })
  t.true(await waitFor(() => (port.forwardStats()?.txPackets ?? 0) > 100, 5000))
  port.stopForward()
  const tx = await running
  t.true(tx.txPackets > 100)
  t.is(tx.txBytes, tx.txPackets * 128)
  await t.throwsAsync(port.forward({ mode: 'bounce' as 'io' }), { code: 'ERR_EMUDEV_INVALID_ARG' })
  await t.throwsAsync(port.forward({ burst: 65 }), { code: 'ERR_EMUDEV_INVALID_ARG' })
})

test('close() ends a running forward', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback' })
  t.teardown(() => server.close())
  const port = await IavfPort.connect(sock)
  await port.start()
  const running = port.forward({ mode: 'io', txFirst: 4 })
  t.true(await waitFor(() => (port.forwardStats()?.rxPackets ?? 0) > 0, 5000))
  await port.close()
  const r = await running
  t.true(r.rxPackets > 0)
})

test('traces: the server and the client write decoded messages as JSON lines', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const dir = dirname(sock)
  const serverTrace = join(dir, 'server.jsonl')
  const clientTrace = join(dir, 'client.jsonl')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback' })
  t.teardown(() => server.close())
  server.traceStart(serverTrace)
  const port = await IavfPort.connect(sock, { trace: clientTrace })
  await port.start()
  await port.close()
  server.traceStop()
  const parse = (p: string) => readFileSync(p, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
  const s = parse(serverTrace)
  const c = parse(clientTrace)
  t.true(s.length > 20)
  t.true(s.every((r) => r.side === 'server' && r.device === 'emu_iavf'))
  t.true(c.every((r) => r.side === 'client' && r.device === 'iavf_client'))
  t.deepEqual(
    c.filter((r) => r.direction === 'send').map((r) => [r.id, r.cmd]).slice(0, 3),
    s.filter((r) => r.direction === 'recv').map((r) => [r.id, r.cmd]).slice(0, 3),
  )
  t.is(c[0]?.cmd, 'VERSION')
  t.true(s.some((r) => r.cmd === 'DMA_MAP' && typeof (r.payload as Record<string, unknown>).size === 'number'))
  t.true(s.some((r) => r.cmd === 'REGION_WRITE'))
})

test('emudev client --fwd io --duration against emudev serve with backend=loopback', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const trace = join(dirname(sock), 't.jsonl')
  const server = spawn(process.execPath, [cli, 'serve', '--vdev', `emu_iavf0,sock=${sock},backend=loopback`, '--trace', trace], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  killOnTeardown(t, server)
  let serr = ''
  server.stderr.setEncoding('utf8').on('data', (c: string) => (serr += c))
  t.true(await waitFor(() => serr.includes('listening'), 10_000), serr)
  const out = await runCliAsync('client', '--vdev', `iavf_client,path=${sock}`, '--fwd', 'io', '--duration', '1', '--json')
  t.is(out.code, 0, out.stderr)
  const r = JSON.parse(out.stdout) as { forward: { mode: string; rxPackets: number; txPackets: number; seconds: number; rxMpps: number } }
  t.is(r.forward.mode, 'io')
  t.true(r.forward.rxPackets > 512, `${r.forward.rxPackets}`)
  t.true(r.forward.seconds >= 1)
  t.true(r.forward.rxMpps > 0)
  server.kill('SIGTERM')
  t.is(await waitForExit(server, 10_000), 0)
  const lines = readFileSync(trace, 'utf8').trim().split('\n')
  t.true(lines.length > 20)
  t.is((JSON.parse(lines[0]!) as { device: string }).device, 'emu_iavf0')
})

test('emudev serve -i runs a piped shell session with traffic between two paired ports', async (t) => {
  const s0 = tempSocket(t, 's0.sock')
  const s1 = join(dirname(s0), 's1.sock')
  const cap = join(dirname(s0), 'cap.pcap')
  const shell = spawn(process.execPath, [cli, 'serve', '-i', '--vdev', `emu_iavf0,sock=${s0}`, '--vdev', `emu_iavf1,sock=${s1}`], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  killOnTeardown(t, shell)
  let stdout = ''
  let stderr = ''
  shell.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c))
  shell.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c))
  t.true(await waitFor(() => stderr.includes('emu_iavf1') && stderr.includes('listening'), 10_000), stderr)
  shell.stdin.write(`port attach net_iavfbe,emu=emu_iavf0\nport attach net_iavfbe,emu=emu_iavf1\nset fwd io\nstart\ncapture start 1 ${cap}\n`)
  t.true(await waitFor(() => stdout.includes('Port 1 attached'), 10_000), stdout + stderr)
  // Two clients: what port 0's client sends reaches port 1's client (io on two ports = paired).
  t.true(await waitFor(() => /capture/i.test(stdout) || stdout.split('\n').length > 6, 5000))
  const p0 = await upPort(t, s0)
  const p1 = await upPort(t, s1)
  const frames = Array.from({ length: 10 }, (_, i) => frame(80 + i, i))
  t.is(await p0.send(frames), 10)
  t.deepEqual(await receiveN(p1, 10), frames)
  shell.stdin.write('capture stop 1\nshow port stats all\nstop\nquit\n')
  t.is(await waitForExit(shell, 15_000), 0, stdout + stderr)
  t.regex(stdout, /NIC statistics for port 0/)
  t.deepEqual(readPcap(cap), frames)
})

test('emudev client --fwd against a device without a data path says why nothing came back', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0' })
  t.teardown(() => server.close())
  const out = await runCliAsync('client', '--vdev', `iavf_client,path=${sock}`, '--fwd', 'io', '--duration', '0.3')
  t.is(out.code, 0, out.stderr)
  t.regex(out.stdout, /forwarded for [0-9.]+ s: rx 0 packets/)
  t.regex(out.stderr, /nothing came back: the device moves no packets without a data path/)
})

test('BackendChannel: a TypeScript back-end answers the client through the channel', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'channel' })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  const channel = new BackendChannel(server)
  const ac = new AbortController()
  // The back-end: every frame comes back with its bytes reversed after the first 12.
  const served = (async () => {
    let n = 0
    for await (const f of channel.frames({ signal: ac.signal })) {
      const reply = Buffer.concat([f.subarray(0, 12), Buffer.from(f.subarray(12)).reverse()])
      t.is(channel.send([reply]), 1)
      if (++n === 3) ac.abort()
    }
    return n
  })()
  const frames = [frame(64, 1), frame(100, 2), frame(1500, 3)]
  t.is(await port.send(frames), 3)
  const back = await receiveN(port, 3)
  t.is(await served, 3)
  t.deepEqual(
    back,
    frames.map((f) => Buffer.concat([f.subarray(0, 12), Buffer.from(f.subarray(12)).reverse()])),
  )
  const plain = NativeServer.listenIavf(join(dirname(sock), 'plain.sock'), { name: 'emu_iavf9', backend: 'loopback' })
  t.teardown(() => plain.close())
  t.throws(() => new BackendChannel(plain).receive(), { code: 'ERR_EMUDEV_NOT_READY' })
})

test('doorbells=kick: the port kicks, the idle worker sleeps until kicked, frames come back', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  t.throws(() => NativeServer.listenIavf(sock, { doorbellPages: false, doorbellKicks: true }), {
    code: 'ERR_EMUDEV_INVALID_ARG',
    message: /doorbellKicks needs the doorbell pages/,
  })
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback', doorbellKicks: true })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  const worker = () => server.datapathStats().worker
  for (let i = 0; i < 5; i++) {
    // Idle between rounds: the worker goes to sleep and a kick wakes it.
    const slept = worker().sleeps
    t.true(await waitFor(() => worker().sleeps > slept, 5000), 'the idle worker sleeps')
    const frames = [frame(64, i), frame(1000, i + 1)]
    t.is(await port.send(frames), 2)
    t.deepEqual(await receiveN(port, 2), frames)
  }
  // A kick stays signalled until a sleep takes it, so every round's kicks are counted.
  t.true(await waitFor(() => worker().kicks >= 1, 5000), `kicks ${worker().kicks}`)
  t.true(worker().kicks <= worker().sleeps)
})

test('doorbells=mmap: the worker polls and is never kicked', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { name: 'emu_iavf0', backend: 'loopback', doorbellPages: true })
  t.teardown(() => server.close())
  const port = await upPort(t, sock)
  const worker = () => server.datapathStats().worker
  t.true(await waitFor(() => worker().sleeps > 0, 5000), 'the idle worker sleeps')
  const frames = [frame(64, 9)]
  t.is(await port.send(frames), 1)
  t.deepEqual(await receiveN(port, 1), frames)
  // Asleep again after the traffic: a kick, had there been one, would have been counted.
  const slept = worker().sleeps
  t.true(await waitFor(() => worker().sleeps > slept, 5000))
  t.is(worker().kicks, 0)
})
