// Devices written in TypeScript (PciDevice) and the asynchronous client
// (VfioUserClient), in one process, over real vfio-user sockets.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

import test, { type ExecutionContext } from 'ava'

import { EduDevice } from '../examples/edu'
import {
  GpioDevice,
  GPIO_BAR,
  IRQ_STATUS_PENDING,
  REG_FILTER_CTL,
  REG_IN0_7,
  REG_IRQ_CTL,
  REG_IRQ_STATUS,
  REG_OUT0_7,
  REG_OUT8_15,
} from '../examples/gpio'
import {
  CONFIG_REGION,
  IRQ_INTX,
  IRQ_MSI,
  IRQ_MSIX,
  NativeServer,
  PciDevice,
  VfioUserClient,
  type HandlerErrorEvent,
  type PciDeviceSpec,
} from '../src/index'
import { eduScenario } from './edu-scenario'
import { collectStderr, killOnTeardown, root, sleep, tempSocket, waitFor, waitForExit } from './helpers'

function codeOf(err: unknown): unknown {
  return (err as { code?: unknown } | undefined)?.code
}

/** Listens on a fresh socket; closed when the test ends. */
async function serve<T extends PciDevice>(t: ExecutionContext, device: T): Promise<{ device: T; sock: string }> {
  const sock = tempSocket(t, 'dev.sock')
  t.teardown(() => device.close())
  await device.listen(sock)
  return { device, sock }
}

async function connect(t: ExecutionContext, sock: string): Promise<VfioUserClient> {
  const client = await VfioUserClient.connect(sock)
  t.teardown(() => client.close())
  return client
}

/** A 4 KiB trapped BAR0 over `regs` (u32 registers), with overridable handlers. */
function regsSpec(regs: Uint32Array, overrides: Partial<PciDeviceSpec> = {}): PciDeviceSpec {
  return {
    name: 'regs',
    ids: { vendorId: 0x1b36, deviceId: 0x0005 },
    bars: [{ index: 0, size: 4096 }],
    irqs: { msi: { vectors: 1 } },
    handlers: {
      read: (_bar, offset) => regs[offset >> 2] ?? 0,
      write: (_bar, offset, _size, value) => {
        regs[offset >> 2] = Number(value)
      },
    },
    ...overrides,
  }
}

test('the TypeScript edu passes the same scenario as the native edu, with identical results', async (t) => {
  const nativeSock = tempSocket(t, 'native.sock')
  const server = NativeServer.listenEdu(nativeSock)
  t.teardown(() => server.close())
  const nativeRecord = await eduScenario(t, nativeSock, () => server.eduStats())

  const { device, sock } = await serve(t, new EduDevice())
  const tsRecord = await eduScenario(t, sock, () => device.model.stats)

  t.deepEqual(tsRecord, nativeRecord)
  t.true((tsRecord.stats as { dmaTransfers: number }).dmaTransfers > 0)
  t.is(device.stats().handlerErrors, 0)
  t.true(device.stats().routedJobs > 0, 'the handlers used the device while the server thread waited')
})

test('a handler that throws becomes an EIO reply and the device keeps serving', async (t) => {
  const regs = new Uint32Array(1024)
  regs[0] = 0xc0ffee
  const boom = new Error('boom')
  const { device, sock } = await serve(
    t,
    new PciDevice(
      regsSpec(regs, {
        handlerTimeoutMs: 200,
        handlers: {
          read: (_bar, offset, size) => {
            if (offset === 0x10) throw boom
            if (offset === 0x14) return undefined as unknown as number
            if (offset === 0x18) return Buffer.alloc(size + 1)
            if (offset === 0x1c) return 2 ** 32
            if (offset === 0x24) return Promise.resolve(1) as unknown as number
            if (offset === 0x20) {
              const until = Date.now() + 400
              while (Date.now() < until) {
                // Hold the JS thread past the handler timeout.
              }
            }
            return regs[offset >> 2] ?? 0
          },
          write: (_bar, offset) => {
            if (offset === 0x10) throw new TypeError('read-only')
          },
        },
      }),
    ),
  )
  const errors: HandlerErrorEvent[] = []
  device.on('handlerError', (e) => errors.push(e))
  const client = await connect(t, sock)
  for (const offset of [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24]) {
    const err = await t.throwsAsync(client.readU32(0, offset))
    t.is(codeOf(err), 'ERR_VFU_EIO', `read at ${offset}`)
    t.is(await client.readU32(0, 0), 0xc0ffee, 'still serving')
  }
  const werr = await t.throwsAsync(client.writeU32(0, 0x10, 1))
  t.is(codeOf(werr), 'ERR_VFU_EIO')
  t.is(await client.readU32(0, 0), 0xc0ffee)
  t.true(await waitFor(() => errors.length === 7, 2000), JSON.stringify(errors.map((e) => [e.op, e.offset])))
  t.is(errors[0]?.error, boom, 'the thrown error itself')
  t.deepEqual(
    errors.map((e) => [e.op, e.offset, e.size]).sort(),
    [
      ['read', 0x10, 4],
      ['read', 0x14, 4],
      ['read', 0x18, 4],
      ['read', 0x1c, 4],
      ['read', 0x20, 4],
      ['read', 0x24, 4],
      ['write', 0x10, 4],
    ].sort(),
  )
  t.true(errors.find((e) => e.offset === 0x24)?.error instanceof TypeError, 'a promise is refused')
  t.regex(String((errors.find((e) => e.offset === 0x20)?.error as Error).message), /within 200 ms/)
  const s = device.stats()
  t.is(s.handlerErrors, 7)
  t.is(s.handlerTimeouts, 1)
  t.true(s.errors >= 7, 'the server answered each with an error reply')
})

test('closing the device while a client is connected disconnects it and removes the socket', async (t) => {
  const regs = new Uint32Array(1024)
  regs[1] = 42
  const { device, sock } = await serve(t, new PciDevice(regsSpec(regs)))
  const disconnected = new Promise<void>((resolve) => device.once('disconnected', resolve))
  const client = await connect(t, sock)
  t.is(await client.readU32(0, 4), 42)
  t.true(device.stats().connected)
  t.is(device.path, sock)
  await device.close()
  t.true(device.closed)
  t.false(device.listening)
  t.false(existsSync(sock), 'the socket is gone')
  const err = await t.throwsAsync(client.readU32(0, 4))
  t.regex(String(codeOf(err)), /^ERR_VFU_E/)
  t.is(codeOf(t.throws(() => device.irq(IRQ_MSI))), 'ERR_EMUDEV_CLOSED')
  await device.close()
  await Promise.race([disconnected, sleep(1000)])
})

test('close() from inside a handler does not deadlock', async (t) => {
  const regs = new Uint32Array(1024)
  let closing: Promise<void> | undefined
  const device = new PciDevice(
    regsSpec(regs, {
      handlers: {
        read: () => {
          closing = device.close()
          return 7
        },
        write: () => {},
      },
    }),
  )
  const { sock } = await serve(t, device)
  const client = await connect(t, sock)
  const err = await t.throwsAsync(client.readU32(0, 0))
  t.regex(String(codeOf(err)), /^ERR_VFU_E/)
  t.truthy(closing)
  await closing
  t.false(existsSync(sock))
})

test('events: connected, DMA maps, IRQ changes, reset, disconnected', async (t) => {
  const regs = new Uint32Array(1024)
  let resets = 0
  const { device, sock } = await serve(
    t,
    new PciDevice(
      regsSpec(regs, {
        handlers: {
          read: (_b, o) => regs[o >> 2] ?? 0,
          write: (_b, o, _s, v) => {
            regs[o >> 2] = Number(v)
          },
          reset: () => {
            resets++
            regs.fill(0)
          },
        },
      }),
    ),
  )
  const events: string[] = []
  device.on('connected', () => events.push('connected'))
  device.on('disconnected', () => events.push('disconnected'))
  device.on('dmaMapped', (m) => events.push(`mapped ${m.iova.toString(16)}+${m.size.toString(16)} prot ${m.prot}`))
  device.on('dmaUnmapped', (m) => events.push(`unmapped ${m.iova.toString(16)}`))
  device.on('irqsChanged', ({ index }) => events.push(`irqs ${index}`))
  device.on('reset', () => events.push('reset'))
  const client = await VfioUserClient.connect(sock)
  await client.allocDma(4096, { iova: 0x20_0000n })
  await client.enableIrqs(IRQ_MSI, 1)
  await client.writeU32(0, 8, 5)
  await client.reset()
  t.is(await client.readU32(0, 8), 0, 'the reset handler ran')
  await client.close()
  t.true(await waitFor(() => events.includes('disconnected'), 2000), events.join(', '))
  t.deepEqual(events, ['connected', 'mapped 200000+1000 prot 3', 'irqs 1', 'reset', 'unmapped 200000', 'disconnected'])
  t.is(resets, 1)
})

test('MSI-X through the PCI model: table in a BAR, delivery to the client', async (t) => {
  const page = 4096
  const regs = new Uint32Array(1024)
  const { device, sock } = await serve(
    t,
    new PciDevice(
      regsSpec(regs, {
        config: 'express',
        bars: [
          { index: 0, size: 4096 },
          { index: 2, size: 4 * page, kind: 'mem64', mmap: true },
        ],
        irqs: { msix: { vectors: 4, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: page } },
      }),
    ),
  )
  const client = await connect(t, sock)
  t.is((await client.irqInfo(IRQ_MSIX)).count, 4)
  t.deepEqual(client.region(2)?.sparseAreas, [{ offset: BigInt(2 * page), size: BigInt(2 * page) }])
  t.is(device.fireMsix(1), 'disabled')
  await client.enableIrqs(IRQ_MSIX, 4)
  // Find the MSI-X capability and set its enable bit (message control bit 15).
  const config = await client.regionRead(CONFIG_REGION, 0, 256)
  let cap = config.readUInt8(0x34)
  while (cap !== 0 && config.readUInt8(cap) !== 0x11) cap = config.readUInt8(cap + 1)
  t.not(cap, 0, 'an MSI-X capability is listed')
  await client.regionWrite(CONFIG_REGION, cap + 3, Buffer.from([0x80]))
  t.true(device.config.state().msixEnabled)
  t.is(device.fireMsix(1), 'delivered')
  t.is(await client.waitIrq(IRQ_MSIX, 1, 2000), 1)
  // The table lives in BAR2: a client write masks vector 2, a fire then pends.
  await client.writeU32(2, 2 * 16 + 12, 1)
  t.is(device.fireMsix(2), 'pending')
  t.is((await client.regionRead(2, page, 8)).readBigUInt64LE(0), 1n << 2n, 'PBA bit')
  await client.writeU32(2, 2 * 16 + 12, 0)
  t.is(await client.waitIrq(IRQ_MSIX, 2, 2000), 1, 'delivered on unmask')
  t.throws(() => device.fireMsix(9), { code: 'ERR_EMUDEV_INVALID_ARG' })
})

test('a mmapped BAR is a zero-copy Buffer on both sides of the socket', async (t) => {
  const regs = new Uint32Array(1024)
  const { device, sock } = await serve(
    t,
    new PciDevice(regsSpec(regs, { bars: [{ index: 0, size: 4096 }, { index: 2, size: 8192, mmap: true }] })),
  )
  const client = await connect(t, sock)
  const areas = await client.mapRegion(2)
  t.is(areas.length, 1)
  const area = areas[0]!
  t.is(area.offset, 0)
  t.is(area.size, 8192)
  device.bar(2).write(0x100, Buffer.from('from the device'))
  t.is(area.buffer.subarray(0x100, 0x10f).toString(), 'from the device')
  area.buffer.write('from the client', 0x1800)
  t.is(device.bar(2).read(0x1800, 15).toString(), 'from the client')
  t.is((await client.regionRead(2, 0x1800, 15)).toString(), 'from the client', 'REGION_READ sees the same memory')
  t.is(codeOf(await t.throwsAsync(client.mapRegion(0))), 'ERR_VFU_EINVAL')
  t.is(codeOf(t.throws(() => device.bar(0).read(0, 4))), 'ERR_EMUDEV_INVALID_ARG')
  // The mapping outlives the client.
  await client.close()
  area.buffer[0] = 0x77
  t.is(device.bar(2).read(0, 1)[0], 0x77)
})

test('device-side DMA and interrupts outside handlers', async (t) => {
  const regs = new Uint32Array(1024)
  const { device, sock } = await serve(t, new PciDevice(regsSpec(regs)))
  t.is(device.irq(IRQ_MSI), 'unbound')
  // A twin socket: the client then serves the device's DMA requests while it has no request of
  // its own in flight (without one, a DMA_READ from outside a handler waits for the server's
  // 5 s DMA timeout, blocking this thread).
  const client = await VfioUserClient.connect(sock, { twinSocket: true })
  t.teardown(() => client.close())
  t.true(client.twinSocket)
  const shared = await client.allocDma(4096)
  const remote = await client.allocDma(4096, { shareFd: false })
  t.deepEqual(
    device.dma.mappings().map((m) => [m.iova, m.fdBacked]),
    [
      [shared.iova, true],
      [remote.iova, false],
    ],
  )
  device.dma.write(shared.iova + 16n, Buffer.from('shared'))
  t.is(shared.read(16, 6).toString(), 'shared')
  // Message-only memory from the JS thread, outside any handler, through the twin socket.
  remote.write(0, Buffer.from('remote'))
  t.is(device.dma.read(remote.iova, 6).toString(), 'remote')
  t.is(codeOf(t.throws(() => device.dma.read(0x7000_0000n, 4))), 'ERR_VFU_EFAULT')
  await client.enableIrqs(IRQ_MSI, 1)
  const seen: number[] = []
  client.on('irq', ({ index, vector, count }) => seen.push(index, vector, count))
  t.is(device.irq(IRQ_MSI), 'delivered')
  t.is(await client.waitIrq(IRQ_MSI, 0, 2000), 1)
  t.deepEqual(seen, [IRQ_MSI, 0, 1])
  t.is(device.fireMsi(), 'disabled', 'the guest has not enabled MSI')
  t.is(device.setIntx(true), 'unbound')
  t.true(device.config.state().interruptStatus)
  t.is(device.setIntx(false), 'lowered')
  t.is(device.config.readU16(0), 0x1b36)
})

test('client requests run in the order they were made', async (t) => {
  const regs = new Uint32Array(1024)
  const { sock } = await serve(t, new PciDevice(regsSpec(regs)))
  const client = await connect(t, sock)
  const ops: Promise<unknown>[] = []
  for (let i = 0; i < 20; i++) {
    ops.push(client.writeU32(0, 4, i))
    ops.push(client.readU32(0, 4))
  }
  const results = await Promise.all(ops)
  t.deepEqual(
    results.filter((_, i) => i % 2 === 1),
    Array.from({ length: 20 }, (_, i) => i),
  )
  await client.close()
  t.is(codeOf(await t.throwsAsync(client.readU32(0, 4))), 'ERR_EMUDEV_CLOSED')
  t.is(codeOf(await t.throwsAsync(client.waitIrq(IRQ_MSI, 0, 10))), 'ERR_EMUDEV_CLOSED')
})

test('the GPIO example: the PCI-IDIO-16 register model, inputs over time, change-of-state interrupt', async (t) => {
  const { device, sock } = await serve(t, new GpioDevice({ periodMs: 0 }))
  const client = await connect(t, sock)
  t.deepEqual(client.region(GPIO_BAR), {
    index: GPIO_BAR,
    flags: 3,
    size: 256n,
    readable: true,
    writable: true,
    mappable: false,
    sparseAreas: [],
  })
  const config = await client.regionRead(CONFIG_REGION, 0, 4)
  t.is(config.readUInt32LE(0), 0x0dc8494f)
  t.is((await client.regionRead(CONFIG_REGION, 0x18, 4)).readUInt32LE(0) & 1, 1, 'BAR2 is an I/O BAR')

  // Outputs 0-7 at 0x0 and 8-15 at 0x4 (Linux's register stride is 4), each read back.
  await client.writeU8(GPIO_BAR, REG_OUT0_7, 0x5a)
  await client.writeU8(GPIO_BAR, REG_OUT8_15, 0xa5)
  t.is(device.outputs, 0xa55a)
  t.is(await client.readU8(GPIO_BAR, REG_OUT0_7), 0x5a)
  t.is(await client.readU8(GPIO_BAR, REG_OUT8_15), 0xa5)
  t.deepEqual(device.outputHistory, [0x5a, 0xa55a])
  // Inputs 0-7 at 0x1 and 8-15 at 0x5.
  device.setInputs(0xbeef)
  t.is(await client.readU8(GPIO_BAR, REG_IN0_7), 0xef)
  t.is(await client.readU8(GPIO_BAR, 0x5), 0xbe)
  t.is(device.outputs, 0xa55a, 'the inputs are not the outputs')
  // Filters: a write deactivates them, a read activates them.
  await client.readU8(GPIO_BAR, REG_FILTER_CTL)
  t.true(device.filtersActive)
  await client.writeU8(GPIO_BAR, REG_FILTER_CTL, 0)
  t.false(device.filtersActive)

  // A change while the interrupt is disabled latches nothing.
  await client.enableIrqs(IRQ_INTX, 1)
  t.is(await client.readU8(GPIO_BAR, REG_IRQ_STATUS), 0, 'nothing pending while disabled')
  // Reading IRQ_CTL enables it; a change then raises INTx and sets status bit 2.
  await client.readU8(GPIO_BAR, REG_IRQ_CTL)
  t.true(device.irqEnabled)
  device.setInputs(0x1234)
  t.is(await client.waitIrq(IRQ_INTX, 0, 2000), 1)
  t.is(await client.readU8(GPIO_BAR, REG_IRQ_STATUS), IRQ_STATUS_PENDING)
  t.is(await client.readU8(GPIO_BAR, REG_IRQ_STATUS), IRQ_STATUS_PENDING, 'reading the status does not clear it')
  // Writing IN0_7 clears it (the value does not matter) and lowers the line.
  await client.writeU8(GPIO_BAR, REG_IN0_7, 0)
  t.is(await client.readU8(GPIO_BAR, REG_IRQ_STATUS), 0)
  t.is(device.counters.irqClears, 1)
  t.is(device.counters.irqsRaised, 1)
  // Writing IRQ_CTL disables it: a change neither latches nor interrupts.
  await client.writeU8(GPIO_BAR, REG_IRQ_CTL, 0xff)
  t.false(device.irqEnabled)
  device.setInputs(0x4321)
  t.is(await client.readU8(GPIO_BAR, REG_IRQ_STATUS), 0)
  t.is(device.counters.irqsRaised, 1)
  t.is(await client.readU8(GPIO_BAR, 0x80), 0xff, 'holes read 0xff')
  t.is(device.counters.holeAccesses, 1)
  t.is(device.stats().handlerErrors, 0)

  // Loopback: OUT15 drives IIN15 (XOR onto the pin's own level), and the change interrupts.
  const looped = new GpioDevice({ periodMs: 0, inputs: 0xa5c3, loopback: 0x8000 })
  const { sock: loopSock } = await serve(t, looped)
  const c3 = await connect(t, loopSock)
  await c3.enableIrqs(IRQ_INTX, 1)
  await c3.readU8(GPIO_BAR, REG_IRQ_CTL)
  await c3.writeU8(GPIO_BAR, REG_OUT0_7, 0xff)
  t.is(await c3.readU8(GPIO_BAR, 0x5), 0xa5, 'outputs outside the loopback mask drive nothing')
  t.is(await c3.readU8(GPIO_BAR, REG_IRQ_STATUS), 0)
  await c3.writeU8(GPIO_BAR, REG_OUT8_15, 0x80)
  t.is(await c3.readU8(GPIO_BAR, 0x5), 0x25, 'OUT15 high flips IIN15')
  t.is(await c3.waitIrq(IRQ_INTX, 0, 2000), 1)
  t.is(await c3.readU8(GPIO_BAR, REG_IRQ_STATUS), IRQ_STATUS_PENDING)
  t.is(looped.counters.irqsRaised, 1)

  // Running free, the inputs move on their own.
  const free = new GpioDevice({ periodMs: 10 })
  const { sock: freeSock } = await serve(t, free)
  const c2 = await connect(t, freeSock)
  const first = await c2.readU8(GPIO_BAR, REG_IN0_7)
  t.true(await waitFor(() => (free.inputs & 0xff) !== first, 2000))
  t.not(await c2.readU8(GPIO_BAR, REG_IN0_7), first)
})

test('bad specs and arguments are rejected with stable codes', async (t) => {
  const regs = new Uint32Array(4)
  const bad = (spec: Partial<PciDeviceSpec>): unknown => codeOf(t.throws(() => new PciDevice(regsSpec(regs, spec))))
  t.is(bad({ bars: [{ index: 0, size: 3000 }] }), 'ERR_EMUDEV_INVALID_ARG')
  t.is(bad({ ids: { vendorId: 0x10000, deviceId: 1 } }), 'ERR_EMUDEV_INVALID_ARG')
  t.is(bad({ irqs: { msi: { vectors: 3 } } }), 'ERR_EMUDEV_INVALID_ARG')
  t.is(bad({ handlerTimeoutMs: 0 }), 'ERR_EMUDEV_INVALID_ARG')
  const err = t.throws(() => new PciDevice(regsSpec(regs, { bars: [{ index: 6, size: 4096 }] })))
  t.regex(err?.message ?? '', /bars\[0\]/)
  const device = new PciDevice(regsSpec(regs))
  t.teardown(() => device.close())
  const sock = tempSocket(t)
  await device.listen(sock)
  const other = new PciDevice(regsSpec(regs))
  t.teardown(() => other.close())
  t.is(codeOf(await t.throwsAsync(other.listen(sock))), 'ERR_EMUDEV_SOCKET_IN_USE')
  t.is(codeOf(await t.throwsAsync(device.listen(sock + '2'))), 'ERR_EMUDEV_INVALID_ARG')
  t.is(codeOf(await t.throwsAsync(VfioUserClient.connect(join(sock, 'missing')))), 'ERR_VFU_ENOTDIR')
})

const probe = join(root, 'target', 'debug', 'examples', 'rustvmm_probe')

test('the rust-vmm vfio_user client reads the TypeScript edu', async (t) => {
  if (!existsSync(probe)) {
    const r = spawnSync('cargo', ['build', '-p', 'emudev-edu', '--example', 'rustvmm_probe'], {
      cwd: root,
      encoding: 'utf8',
      timeout: 600_000,
    })
    t.is(r.status, 0, r.stderr)
  }
  const { sock } = await serve(t, new EduDevice())
  // Asynchronously: the device's handlers need this (JS) thread while the probe runs.
  const child = spawn(probe, [sock], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c))
  const stderr = collectStderr(child)
  t.is(await waitForExit(child, 20_000), 0, stderr())
  const lines = out.trimEnd().split('\n')
  t.is(lines[0], 'regions 9')
  t.true(lines.includes('region 0 size 0x100000 flags 0x3 mmap no'), out)
  t.true(lines.includes('region 7 size 0x100 flags 0x3 mmap no'), out)
  t.true(lines.includes('irq 0 count 1 flags 0x7'), out)
  t.true(lines.includes('irq 1 count 1 flags 0x9'), out)
  t.is(lines.at(-1), 'bar0[0x0] 0x010000ed')
})
