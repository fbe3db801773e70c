// One client scenario for an edu device, run unchanged against the native edu
// (crates/edu) and the TypeScript one (examples/edu.ts). It asserts the
// expected value of every step and returns everything it observed, so the
// two runs can also be compared with each other as a whole.
import type { ExecutionContext } from 'ava'

import { CONFIG_REGION, IRQ_INTX, IRQ_MSI, VfioUserClient, type EduStats } from '../src/index'
import { sleep } from './helpers'

const BAR0 = 0
const REG_ID = 0x00
const REG_LIVENESS = 0x04
const REG_FACTORIAL = 0x08
const REG_STATUS = 0x20
const REG_IRQ_STATUS = 0x24
const REG_IRQ_RAISE = 0x60
const REG_IRQ_ACK = 0x64
const REG_DMA_SRC = 0x80
const REG_DMA_DST = 0x88
const REG_DMA_COUNT = 0x90
const REG_DMA_CMD = 0x98
const DMA_START = 1n
const DMA_TO_RAM = 2n
const DMA_IRQ = 4n
const EDU_BUF = 0x4_0000n
const MSI_FLAGS = 0x42
const PCI_COMMAND = 0x04
const PCI_STATUS = 0x06
const STATUS_INTERRUPT = 0x08
const COMMAND_INTX_DISABLE = 0x400

/** n! modulo 2^32, computed independently of both devices. */
function factorialMod32(n: number): number {
  let r = 1n
  for (let i = 2n; i <= BigInt(n); i++) r = (r * i) % 2n ** 32n
  return Number(r)
}

/** How many interrupts arrived on `index` since the last look (0 if none within `ms`). */
async function irqsSince(client: VfioUserClient, index: number, ms = 60): Promise<number> {
  await sleep(ms)
  return client.waitIrq(index, 0, 1).catch((e: { code?: string }) => {
    if (e.code === 'ERR_EMUDEV_TIMEOUT') return 0
    throw e
  })
}

async function dma(client: VfioUserClient, src: bigint, dst: bigint, count: bigint, cmd: bigint): Promise<bigint> {
  await client.writeU64(BAR0, REG_DMA_SRC, src)
  await client.writeU64(BAR0, REG_DMA_DST, dst)
  await client.writeU64(BAR0, REG_DMA_COUNT, count)
  await client.writeU64(BAR0, REG_DMA_CMD, cmd | DMA_START)
  return client.readU64(BAR0, REG_DMA_CMD)
}

function pattern(len: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff))
}

/**
 * Drives an edu device at `sock`; `stats()` reads the device's own counters.
 * Returns the record of every observation.
 */
export async function eduScenario(t: ExecutionContext, sock: string, stats: () => EduStats): Promise<Record<string, unknown>> {
  const rec: Record<string, unknown> = {}
  const client = await VfioUserClient.connect(sock)
  try {
    // Identity and layout.
    rec.info = client.info
    t.deepEqual(client.info, { flags: 3, numRegions: 9, numIrqs: 5 })
    rec.regions = client.regions.map((r) => [r.index, r.flags, r.size, r.mappable])
    t.deepEqual(client.region(0), {
      index: 0,
      flags: 3,
      size: 0x10_0000n,
      readable: true,
      writable: true,
      mappable: false,
      sparseAreas: [],
    })
    t.is(client.region(7)?.size, 256n)
    const irqInfo = []
    for (let i = 0; i < 5; i++) irqInfo.push(await client.irqInfo(i))
    rec.irqInfo = irqInfo
    t.deepEqual(irqInfo, [
      { flags: 7, count: 1 },
      { flags: 9, count: 1 },
      { flags: 0, count: 0 },
      { flags: 1, count: 1 },
      { flags: 1, count: 1 },
    ])
    const config = await client.regionRead(CONFIG_REGION, 0, 256)
    rec.config = config.toString('hex')
    t.is(config.readUInt32LE(0), 0x11e8_1234, 'vendor and device id')
    t.is(config.readUInt32LE(8) >>> 8, 0x00ff00, 'class code')
    t.is(config.readUInt8(8), 0x10, 'revision')
    t.is(config.readUInt32LE(0x2c), 0x1100_1af4, 'subsystem')
    t.is(config.readUInt8(0x34), 0x40, 'capability pointer')
    t.is(config.readUInt8(0x40), 0x05, 'MSI capability')
    t.is(config.readUInt8(0x3d), 1, 'INTA')

    // Registers.
    rec.id = await client.readU32(BAR0, REG_ID)
    t.is(rec.id, 0x010000ed)
    const liveness = []
    for (const x of [0x12345678, 0, 0xffffffff]) {
      await client.writeU32(BAR0, REG_LIVENESS, x)
      liveness.push(await client.readU32(BAR0, REG_LIVENESS))
    }
    rec.liveness = liveness
    t.deepEqual(liveness, [0xedcba987, 0xffffffff, 0])
    const factorials = []
    for (const n of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 20, 33, 34, 0xffffffff]) {
      await client.writeU32(BAR0, REG_FACTORIAL, n)
      const got = await client.readU32(BAR0, REG_FACTORIAL)
      t.is(got, n > 33 ? 0 : factorialMod32(n), `${n}!`)
      factorials.push(got)
    }
    rec.factorials = factorials
    t.deepEqual(factorials.slice(0, 13), [1, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800, 39916800, 479001600])
    await client.writeU32(BAR0, REG_STATUS, 0xff)
    rec.status = await client.readU32(BAR0, REG_STATUS)
    t.is(rec.status, 0x80, 'only the interrupt-on-factorial bit is writable')
    await client.writeU32(BAR0, REG_STATUS, 0)

    // Accesses edu does not take: all-ones, nothing written, counted.
    const bad = [
      (await client.regionRead(BAR0, REG_ID, 2)).toString('hex'),
      (await client.regionRead(BAR0, REG_STATUS, 8)).toString('hex'),
      (await client.regionRead(BAR0, 0x02, 4)).toString('hex'),
      (await client.regionRead(BAR0, 0x84, 4)).toString('hex'),
    ]
    rec.bad = bad
    t.deepEqual(bad, ['ffff', 'ffffffffffffffff', 'ffffffff', 'ffffffff'])
    await client.writeU32(BAR0, REG_LIVENESS, 0x1)
    await client.regionWrite(BAR0, REG_LIVENESS, Buffer.from([0xaa, 0xbb]))
    t.is(await client.readU32(BAR0, REG_LIVENESS), 0xfffffffe, 'a 2-byte write is ignored')
    await client.writeU32(BAR0, REG_ID, 0)
    t.is(await client.readU32(BAR0, REG_ID), 0x010000ed, 'the id register is read-only')

    // INTx: a level, signalled on the rising edge and again on an ack that leaves bits set.
    await client.enableIrqs(IRQ_INTX, 1)
    const intx: unknown[] = []
    await client.writeU32(BAR0, REG_IRQ_RAISE, 0x1)
    intx.push(await irqsSince(client, IRQ_INTX))
    intx.push((await client.regionRead(CONFIG_REGION, PCI_STATUS, 2)).readUInt16LE(0) & STATUS_INTERRUPT)
    await client.writeU32(BAR0, REG_IRQ_RAISE, 0x2)
    intx.push(await irqsSince(client, IRQ_INTX))
    intx.push(await client.readU32(BAR0, REG_IRQ_STATUS))
    await client.writeU32(BAR0, REG_IRQ_ACK, 0x1)
    intx.push(await irqsSince(client, IRQ_INTX))
    await client.writeU32(BAR0, REG_IRQ_ACK, 0x2)
    intx.push(await irqsSince(client, IRQ_INTX))
    intx.push((await client.regionRead(CONFIG_REGION, PCI_STATUS, 2)).readUInt16LE(0) & STATUS_INTERRUPT)
    rec.intx = intx
    t.deepEqual(intx, [1, STATUS_INTERRUPT, 0, 0x3, 1, 0, 0])

    // INTx disabled in the command register: raised but not delivered.
    await client.regionWrite(CONFIG_REGION, PCI_COMMAND, Buffer.from([0x00, COMMAND_INTX_DISABLE >> 8]))
    await client.writeU32(BAR0, REG_IRQ_RAISE, 0x1)
    const disabled = [await irqsSince(client, IRQ_INTX)]
    // Re-enabling it with the line up signals it (edu's config-write rule).
    await client.regionWrite(CONFIG_REGION, PCI_COMMAND, Buffer.from([0x00, 0x00]))
    disabled.push(await irqsSince(client, IRQ_INTX))
    await client.writeU32(BAR0, REG_IRQ_ACK, 0x1)
    rec.intxDisabled = disabled
    t.deepEqual(disabled, [0, 1])

    // MSI, enabled through the PCI model's capability.
    await client.enableIrqs(IRQ_MSI, 1)
    const flags = await client.regionRead(CONFIG_REGION, MSI_FLAGS, 2)
    await client.regionWrite(CONFIG_REGION, MSI_FLAGS, Buffer.from([flags[0]! | 1, flags[1]!]))
    const msi: unknown[] = [(await client.regionRead(CONFIG_REGION, MSI_FLAGS, 2)).readUInt16LE(0) & 1]
    await client.writeU32(BAR0, REG_IRQ_RAISE, 0x1)
    msi.push(await irqsSince(client, IRQ_MSI))
    await client.writeU32(BAR0, REG_IRQ_RAISE, 0x4)
    msi.push(await irqsSince(client, IRQ_MSI), await irqsSince(client, IRQ_INTX, 1))
    msi.push((await client.regionRead(CONFIG_REGION, PCI_STATUS, 2)).readUInt16LE(0) & STATUS_INTERRUPT)
    // Turning MSI off with bits set hands the line to INTx.
    await client.regionWrite(CONFIG_REGION, MSI_FLAGS, flags)
    msi.push(await irqsSince(client, IRQ_INTX))
    msi.push((await client.regionRead(CONFIG_REGION, PCI_STATUS, 2)).readUInt16LE(0) & STATUS_INTERRUPT)
    await client.writeU32(BAR0, REG_IRQ_ACK, 0x5)
    await client.regionWrite(CONFIG_REGION, MSI_FLAGS, Buffer.from([flags[0]! | 1, flags[1]!]))
    // A factorial with the status interrupt bit set raises IRQ_FACT (MSI).
    await client.writeU32(BAR0, REG_STATUS, 0x80)
    await client.writeU32(BAR0, REG_FACTORIAL, 5)
    msi.push(await irqsSince(client, IRQ_MSI), await client.readU32(BAR0, REG_IRQ_STATUS))
    await client.writeU32(BAR0, REG_IRQ_ACK, 0x1)
    await client.writeU32(BAR0, REG_STATUS, 0)
    rec.msi = msi
    t.deepEqual(msi, [1, 1, 1, 0, 0, 1, STATUS_INTERRUPT, 1, 0x1])

    // DMA through shared and message-only memory: RAM -> EDU -> RAM.
    const dmaRec: unknown[] = []
    for (const shareFd of [true, false]) {
      const buf = await client.allocDma(8192, { shareFd })
      const data = pattern(4096, shareFd ? 7 : 9)
      buf.write(0, data)
      dmaRec.push(await dma(client, buf.iova, EDU_BUF, 4096n, 0n))
      dmaRec.push(await dma(client, EDU_BUF, buf.iova + 4096n, 4096n, DMA_TO_RAM | DMA_IRQ))
      dmaRec.push(await irqsSince(client, IRQ_MSI), await client.readU32(BAR0, REG_IRQ_STATUS))
      await client.writeU32(BAR0, REG_IRQ_ACK, 0x100)
      t.true(buf.read(4096, 4096).equals(data), `DMA round trip (shareFd ${shareFd})`)
      // A partial transfer into the middle of the buffer.
      dmaRec.push(await dma(client, buf.iova + 8n, EDU_BUF + 0x800n, 16n, 0n))
      dmaRec.push(await dma(client, EDU_BUF + 0x800n, buf.iova + 4096n + 100n, 16n, DMA_TO_RAM))
      t.true(buf.read(4096 + 100, 16).equals(data.subarray(8, 24)))
    }
    rec.dma = dmaRec
    t.deepEqual(dmaRec, [0n, 6n, 1, 0x100, 0n, 2n, 0n, 6n, 1, 0x100, 0n, 2n])

    // DMA the device must refuse: nothing copied, counted, and it still completes (and interrupts).
    const before = stats().dmaErrors
    const ram = await client.allocDma(4096)
    ram.write(0, Buffer.alloc(4096, 0x5a))
    const refused = [
      await dma(client, EDU_BUF, ram.iova, 0n, DMA_TO_RAM),
      await dma(client, EDU_BUF, ram.iova, 4097n, DMA_TO_RAM),
      await dma(client, EDU_BUF - 1n, ram.iova, 16n, DMA_TO_RAM),
      await dma(client, EDU_BUF + 0xff8n, ram.iova, 16n, DMA_TO_RAM),
      await dma(client, ram.iova, EDU_BUF + 0x1000n, 1n, 0n),
      await dma(client, 0x9000_0000n, EDU_BUF, 16n, DMA_IRQ),
      await dma(client, 0xffff_ffff_ffff_fff0n, EDU_BUF, 0x20n, 0n),
    ]
    refused.push(BigInt(await irqsSince(client, IRQ_MSI)))
    await client.writeU32(BAR0, REG_IRQ_ACK, 0x100)
    rec.refused = refused
    t.deepEqual(refused, [2n, 2n, 2n, 2n, 0n, 4n, 0n, 1n])
    t.is(stats().dmaErrors - before, 7)
    t.true(ram.read(0, 4096).equals(Buffer.alloc(4096, 0x5a)), 'client memory untouched')
    // The EDU buffer still holds what the last good transfer put there.
    await dma(client, EDU_BUF, ram.iova, 4096n, DMA_TO_RAM)
    t.true(ram.read(0, 16).equals(pattern(4096, 9).subarray(0, 16)))

    // Reset: registers, buffer and config space back to power-on; counters kept.
    await client.writeU32(BAR0, REG_LIVENESS, 0x1234)
    await client.reset()
    rec.afterReset = [
      await client.readU32(BAR0, REG_LIVENESS),
      await client.readU32(BAR0, REG_FACTORIAL),
      await client.readU64(BAR0, REG_DMA_SRC),
      (await client.regionRead(CONFIG_REGION, MSI_FLAGS, 2)).readUInt16LE(0) & 1,
    ]
    t.deepEqual(rec.afterReset, [0, 0, 0n, 0])
    await dma(client, EDU_BUF, ram.iova, 16n, DMA_TO_RAM)
    t.true(ram.read(0, 16).equals(Buffer.alloc(16)), 'the EDU buffer was cleared')
  } finally {
    await client.close()
  }
  // Counters (the native names): the same accesses, the same counts.
  await sleep(20)
  rec.stats = { ...stats() }
  return rec
}
