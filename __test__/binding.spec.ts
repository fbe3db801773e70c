// NativeServer and NativeClient in one process, over real UNIX sockets.
import { existsSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'

import test, { type ExecutionContext } from 'ava'

import { NativeServer, NativeClient, eduLayout, isNativeError } from '../src/index'
import { tempSocket, waitFor } from './helpers'

const L = eduLayout()
const BAR0 = 0
const CONFIG = 7
const MSI = 1

/** A server and a connected client, both closed when the test ends. */
function pair(t: ExecutionContext, options?: { twinSocket?: boolean }) {
  const sock = tempSocket(t)
  const server = NativeServer.listenEdu(sock)
  t.teardown(() => server.close())
  const client = NativeClient.connect(sock, options)
  t.teardown(() => client.close())
  return { sock, server, client }
}

function codeOf(err: unknown): unknown {
  return (err as { code?: unknown } | undefined)?.code
}

function enableMsi(client: NativeClient): void {
  client.enableIrqs(MSI, 1)
  const at = L.msiCapOffset + 2
  const flags = client.regionRead(CONFIG, at, 2)
  flags.writeUInt16LE(flags.readUInt16LE(0) | 1, 0)
  client.regionWrite(CONFIG, at, flags)
}

function dma(client: NativeClient, src: bigint, dst: bigint, count: number, toRam: boolean): void {
  client.writeU64(BAR0, L.regDmaSrc, src)
  client.writeU64(BAR0, L.regDmaDst, dst)
  client.writeU64(BAR0, L.regDmaCount, BigInt(count))
  client.writeU64(BAR0, L.regDmaCmd, BigInt(L.dmaCmdStart | (toRam ? L.dmaCmdToRam : 0)))
}

test('a client reads the id register and sees the edu device', (t) => {
  const { sock, server, client } = pair(t)
  t.is(server.path, sock)
  t.is(server.device, 'emu_edu')
  t.is(client.path, sock)
  t.is(client.readU32(BAR0, L.regId), 0x010000ed)
  t.deepEqual(client.deviceInfo(), { flags: 3, numRegions: 9, numIrqs: 5 })
  const regions = client.regions()
  t.is(regions.length, 9)
  t.like(regions[0], { index: 0, size: 0x100000n, readable: true, writable: true })
  t.like(regions[7], { index: 7, size: 256n, readable: true, writable: true })
  t.is(regions[1]?.size, 0n)
  t.is(client.irqInfo(MSI).count, 1)
  t.true(server.stats().connected)
  t.is(server.stats().clients, 1)
  t.true(server.eduStats().mmioReads >= 1)
})

test('liveness and factorial registers work through the client', (t) => {
  const { client } = pair(t)
  client.writeU32(BAR0, L.regLiveness, 0x12345678)
  t.is(client.readU32(BAR0, L.regLiveness), 0xedcba987)
  client.writeU32(BAR0, L.regFactorial, 10)
  t.is(client.readU32(BAR0, L.regFactorial), 3628800)
  client.writeU64(BAR0, L.regDmaSrc, 0xfedcba9876543210n)
  t.is(client.readU64(BAR0, L.regDmaSrc), 0xfedcba9876543210n)
})

for (const shareFd of [true, false]) {
  test(`a DMA round trip through the edu buffer matches (shareFd ${shareFd})`, (t) => {
    const { server, client } = pair(t)
    const iova = 0x100000n
    const buf = client.allocDma(iova, 8192, shareFd)
    t.is(buf.iova, iova)
    t.is(buf.size, 8192)
    t.is(buf.fdShared, shareFd)
    const pattern = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 13 + 5) & 0xff))
    buf.write(0, pattern)
    dma(client, iova, BigInt(L.dmaBufAddr), 4096, false)
    dma(client, BigInt(L.dmaBufAddr), iova + 4096n, 4096, true)
    t.deepEqual(buf.read(4096, 4096), pattern)
    const edu = server.eduStats()
    t.is(edu.dmaTransfers, 2)
    t.is(edu.dmaErrors, 0)
    if (!shareFd) t.true(server.stats().dmaRequests >= 2)
  })
}

test('an MSI raised by the device resolves waitIrq', async (t) => {
  const { client } = pair(t)
  enableMsi(client)
  const pending = client.waitIrq(MSI, 0, 2000)
  client.writeU32(BAR0, L.regIrqRaise, 0x1)
  t.is(await pending, 1)
  t.is(client.readU32(BAR0, L.regIrqStatus), 1)
  client.writeU32(BAR0, L.regIrqAck, 1)
  t.is(client.readU32(BAR0, L.regIrqStatus), 0)
})

test('waitIrq rejects with ERR_EMUDEV_TIMEOUT, and for a vector without an eventfd', async (t) => {
  const { client } = pair(t)
  enableMsi(client)
  const started = Date.now()
  const timeout = await t.throwsAsync(client.waitIrq(MSI, 0, 50))
  t.is(codeOf(timeout), 'ERR_EMUDEV_TIMEOUT')
  t.true(Date.now() - started >= 45)
  const unbound = await t.throwsAsync(client.waitIrq(0, 0, 50))
  t.is(codeOf(unbound), 'ERR_EMUDEV_INVALID_ARG')
})

test('close() twice is fine and methods afterwards throw ERR_EMUDEV_CLOSED', async (t) => {
  const { sock, server, client } = pair(t)
  const buf = client.allocDma(0x100000n, 4096)
  enableMsi(client)
  const waiting = client.waitIrq(MSI, 0, 60_000)
  await Promise.all([client.close(), client.close()])
  await client.close()
  t.true(client.closed)
  t.is(codeOf(await t.throwsAsync(waiting)), 'ERR_EMUDEV_CLOSED')
  for (const call of [
    () => client.readU32(BAR0, 0),
    () => client.regions(),
    () => client.deviceInfo(),
    () => client.reset(),
    () => client.allocDma(0x200000n, 4096),
    () => buf.read(0, 4),
    () => buf.write(0, Buffer.from([1])),
  ]) {
    t.is(codeOf(t.throws(call)), 'ERR_EMUDEV_CLOSED')
  }
  t.is(codeOf(await t.throwsAsync(client.waitIrq(MSI, 0, 10))), 'ERR_EMUDEV_CLOSED')

  t.true(await waitFor(() => !server.stats().connected, 2000), 'the server saw the client go')
  await server.close()
  await server.close()
  t.true(server.closed)
  t.false(existsSync(sock), 'closing the server removes its socket')
  t.is(codeOf(t.throws(() => server.stats())), 'ERR_EMUDEV_CLOSED')
  t.is(codeOf(t.throws(() => server.eduStats())), 'ERR_EMUDEV_CLOSED')
})

test('connecting to a missing socket throws ERR_VFU_ENOENT', (t) => {
  const err = t.throws(() => NativeClient.connect('/nonexistent-emudev-dir/edu.sock'))
  t.is(codeOf(err), 'ERR_VFU_ENOENT')
  t.true(isNativeError(err, 'ERR_VFU_ENOENT'))
  t.regex(err?.message ?? '', /nonexistent-emudev-dir/)
})

test('connecting to a socket nobody serves throws ERR_VFU_ECONNREFUSED or ERR_VFU_ENOENT', async (t) => {
  const sock = tempSocket(t)
  const server = NativeServer.listenEdu(sock)
  // Leave a stale socket file behind: close the listener but recreate the file.
  await server.close()
  const net = createServer()
  await new Promise<void>((resolve) => net.listen(sock, resolve))
  await new Promise<void>((resolve) => net.close(() => resolve()))
  const err = t.throws(() => NativeClient.connect(sock))
  t.true(['ERR_VFU_ECONNREFUSED', 'ERR_VFU_ENOENT'].includes(String(codeOf(err))), String(codeOf(err)))
})

test('listenEdu on a live socket throws ERR_EMUDEV_SOCKET_IN_USE and leaves it alone', async (t) => {
  const sock = tempSocket(t)
  const first = NativeServer.listenEdu(sock)
  t.teardown(() => first.close())
  const err = t.throws(() => NativeServer.listenEdu(sock))
  t.is(codeOf(err), 'ERR_EMUDEV_SOCKET_IN_USE')
  t.regex(err?.message ?? '', /in use/)
  // The first server still serves.
  const client = NativeClient.connect(sock)
  t.is(client.readU32(BAR0, L.regId), 0x010000ed)
  await client.close()
})

test('listenEdu on a regular file throws ERR_EMUDEV_NOT_A_SOCKET', (t) => {
  const path = tempSocket(t, 'file')
  writeFileSync(path, 'not a socket')
  t.is(codeOf(t.throws(() => NativeServer.listenEdu(path))), 'ERR_EMUDEV_NOT_A_SOCKET')
  t.true(existsSync(path))
})

test('listenEdu in a missing directory throws ERR_VFU_ENOENT', (t) => {
  t.is(codeOf(t.throws(() => NativeServer.listenEdu('/nonexistent-emudev-dir/edu.sock'))), 'ERR_VFU_ENOENT')
})

test('bad arguments throw ERR_EMUDEV_INVALID_ARG before anything is sent', (t) => {
  const { client } = pair(t)
  const bad: Array<() => unknown> = [
    () => client.readU32(BAR0, -4),
    () => client.readU32(BAR0, 1.5),
    () => client.readU32(BAR0, 2 ** 53),
    () => client.writeU32(BAR0, L.regLiveness, 2 ** 32),
    () => client.writeU32(BAR0, L.regLiveness, -1),
    () => client.writeU64(BAR0, L.regDmaSrc, -1n),
    () => client.writeU64(BAR0, L.regDmaSrc, 1n << 64n),
    () => client.allocDma(-1n, 4096),
    () => client.allocDma(0x100000n, 0),
    () => client.regionRead(BAR0, 0, 2 ** 40),
    () => client.enableIrqs(MSI, 0),
    () => NativeClient.connect('/tmp/x.sock', { timeoutMs: 0 }),
  ]
  for (const call of bad) t.is(codeOf(t.throws(call)), 'ERR_EMUDEV_INVALID_ARG', call.toString())
})

test('requests the client or server refuses carry ERR_VFU_ codes', (t) => {
  const { client } = pair(t)
  t.is(codeOf(t.throws(() => client.readU32(BAR0, 0x100000))), 'ERR_VFU_EINVAL')
  t.is(codeOf(t.throws(() => client.readU32(42, 0))), 'ERR_VFU_EINVAL')
  t.is(codeOf(t.throws(() => client.irqInfo(9))), 'ERR_VFU_EINVAL')
  client.allocDma(0x100000n, 4096)
  t.is(codeOf(t.throws(() => client.allocDma(0x100000n, 4096))), 'ERR_VFU_EINVAL')
  // The connection survives the errors.
  t.is(client.readU32(BAR0, L.regId), 0x010000ed)
})

test('a DmaBuffer checks its ranges', (t) => {
  const { client } = pair(t)
  const buf = client.allocDma(0x100000n, 4096)
  t.is(buf.read(4092, 4).length, 4)
  t.is(codeOf(t.throws(() => buf.read(4093, 4))), 'ERR_EMUDEV_INVALID_ARG')
  t.is(codeOf(t.throws(() => buf.write(4095, Buffer.from([1, 2])))), 'ERR_EMUDEV_INVALID_ARG')
})

test('reset keeps the connection and a twin socket can be negotiated', (t) => {
  const { client } = pair(t, { twinSocket: true })
  t.true(client.twinSocket)
  client.writeU32(BAR0, L.regFactorial, 5)
  client.reset()
  t.is(client.readU32(BAR0, L.regId), 0x010000ed)
})

test('a second client can connect after the first one closed', async (t) => {
  const { sock, server, client } = pair(t)
  client.writeU32(BAR0, L.regFactorial, 6)
  await client.close()
  t.true(await waitFor(() => !server.stats().connected, 2000))
  const second = NativeClient.connect(sock)
  t.teardown(() => second.close())
  t.is(second.readU32(BAR0, L.regId), 0x010000ed)
  t.is(server.stats().clients, 2)
})
