/**
 * QEMU's `edu` device (docs/specs/edu.rst) written in TypeScript on the
 * `PciDevice` API, behaving exactly like the native one in `crates/edu`:
 *
 * - PCI 1234:11e8, subsystem 1af4:1100, revision 0x10, class 0x00ff00,
 *   conventional config space, INTA, BAR0 (1 MiB, 32-bit memory, trapped),
 *   one 64-bit MSI vector at config offset 0x40, one ERR and one REQ vector;
 * - BAR0: id (0x010000ed), liveness (reads the complement of the last
 *   write), factorial (computed inside the write), status (bit 7: interrupt
 *   when a factorial is done), interrupt status/raise/ack, and a 4 KiB DMA
 *   engine at EDU address 0x40000 (src/dst/count/cmd at 0x80-0x98);
 * - 4-byte accesses everywhere, 8-byte ones from 0x80 on; other sizes or
 *   misaligned accesses read all-ones, write nothing, and are counted;
 * - interrupts go out as MSI when the guest enabled MSI and the client bound
 *   an MSI eventfd, else as INTx (a level: signalled on the rising edge and
 *   again on an ack that leaves bits set);
 * - a DMA with a bad count or range, or to unmapped memory, copies nothing, is
 *   counted, and still completes (and interrupts) like a good one.
 *
 * `npx emudev serve --script examples/edu.ts --sock /tmp/edu-ts.sock` serves it.
 */
import { PciDevice, IRQ_INTX, IRQ_MSI, type PciDeviceSpec } from '../src/index'

export const EDU_VENDOR_ID = 0x1234
export const EDU_DEVICE_ID = 0x11e8
export const EDU_ID_VALUE = 0x010000ed
export const EDU_BAR0_SIZE = 0x10_0000
export const EDU_MSI_CAP_OFFSET = 0x40
export const EDU_DMA_BUF_ADDR = 0x4_0000n
export const EDU_DMA_BUF_SIZE = 0x1000

export const REG_ID = 0x00
export const REG_LIVENESS = 0x04
export const REG_FACTORIAL = 0x08
export const REG_STATUS = 0x20
export const REG_IRQ_STATUS = 0x24
export const REG_IRQ_RAISE = 0x60
export const REG_IRQ_ACK = 0x64
export const REG_DMA_SRC = 0x80
export const REG_DMA_DST = 0x88
export const REG_DMA_COUNT = 0x90
export const REG_DMA_CMD = 0x98
/** First register that also takes 8-byte accesses. */
const DMA_REGS_START = 0x80

const STATUS_COMPUTING = 0x01
const STATUS_IRQ_FACT = 0x80
const IRQ_FACT = 0x001
const IRQ_DMA = 0x100
const DMA_CMD_START = 0x1n
const DMA_CMD_TO_RAM = 0x2n
const DMA_CMD_IRQ = 0x4n

const U64 = (1n << 64n) - 1n

/** What the device did, with the same names as the native `EduStats`. */
export interface EduStats {
  mmioReads: number
  mmioWrites: number
  dmaTransfers: number
  dmaErrors: number
  irqsRaised: number
  irqsUndelivered: number
  badAccesses: number
}

/** `n!` modulo 2^32 (0 from 34 on: the product holds 32 factors of two by then). */
export function factorial(n: number): number {
  if (n >= 34) return 0
  let r = 1
  for (let i = 2; i <= n; i++) r = Math.imul(r, i)
  return r >>> 0
}

/** The edu register file and engines; `device` is the PciDevice it drives. */
export class EduModel {
  liveness = 0
  factorial = 0
  status = 0
  irqStatus = 0
  dmaSrc = 0n
  dmaDst = 0n
  dmaCount = 0n
  dmaCmd = 0n
  readonly dmaBuf = Buffer.alloc(EDU_DMA_BUF_SIZE)
  readonly stats: EduStats = {
    mmioReads: 0,
    mmioWrites: 0,
    dmaTransfers: 0,
    dmaErrors: 0,
    irqsRaised: 0,
    irqsUndelivered: 0,
    badAccesses: 0,
  }
  #device: PciDevice | undefined

  attach(device: PciDevice): void {
    this.#device = device
  }

  get device(): PciDevice {
    if (this.#device === undefined) throw new Error('edu: not attached to a device')
    return this.#device
  }

  static accessOk(offset: number, size: number): boolean {
    const fits = offset + size <= EDU_BAR0_SIZE
    const sizeOk = size === 4 || (size === 8 && offset >= DMA_REGS_START)
    return fits && sizeOk && offset % size === 0
  }

  read(bar: number, offset: number, size: number): number | bigint | Buffer {
    if (bar !== 0) throw new Error(`edu has no BAR${bar}`)
    this.stats.mmioReads++
    if (!EduModel.accessOk(offset, size)) {
      this.stats.badAccesses++
      return Buffer.alloc(size, 0xff)
    }
    if (size === 4) {
      switch (offset) {
        case REG_ID:
          return EDU_ID_VALUE
        case REG_LIVENESS:
          return this.liveness
        case REG_FACTORIAL:
          return this.factorial
        case REG_STATUS:
          return this.status
        case REG_IRQ_STATUS:
          return this.irqStatus
      }
    }
    const wide = this.#wideRegister(offset)
    if (wide === undefined) return size === 4 ? 0xffffffff : U64
    return size === 4 ? Number(BigInt.asUintN(32, wide)) : wide
  }

  #wideRegister(offset: number): bigint | undefined {
    switch (offset) {
      case REG_DMA_SRC:
        return this.dmaSrc
      case REG_DMA_DST:
        return this.dmaDst
      case REG_DMA_COUNT:
        return this.dmaCount
      case REG_DMA_CMD:
        return this.dmaCmd
      default:
        return undefined
    }
  }

  write(bar: number, offset: number, size: number, value: number | bigint): void {
    if (bar !== 0) throw new Error(`edu has no BAR${bar}`)
    this.stats.mmioWrites++
    if (!EduModel.accessOk(offset, size)) {
      this.stats.badAccesses++
      return
    }
    const wide = typeof value === 'bigint' ? value : BigInt(value)
    // Registers below 0x80 are 32 bits wide.
    const v32 = typeof value === 'number' ? value >>> 0 : Number(BigInt.asUintN(32, value))
    switch (offset) {
      case REG_LIVENESS:
        this.liveness = ~v32 >>> 0
        break
      case REG_FACTORIAL:
        this.#startFactorial(v32)
        break
      case REG_STATUS:
        this.status = ((this.status & ~STATUS_IRQ_FACT) | (v32 & STATUS_IRQ_FACT)) >>> 0
        break
      case REG_IRQ_RAISE:
        this.#raise(v32)
        break
      case REG_IRQ_ACK:
        this.#ack(v32)
        break
      case REG_DMA_SRC:
        this.dmaSrc = wide
        break
      case REG_DMA_DST:
        this.dmaDst = wide
        break
      case REG_DMA_COUNT:
        this.dmaCount = wide
        break
      case REG_DMA_CMD:
        this.dmaCmd = wide
        if ((wide & DMA_CMD_START) !== 0n) this.#runDma()
        break
      default:
      // Read-only registers and holes: writes are dropped.
    }
  }

  /** Power-on registers and buffer (config space was reset natively); counters are kept. */
  reset(): void {
    this.liveness = 0
    this.factorial = 0
    this.status = 0
    this.irqStatus = 0
    this.dmaSrc = 0n
    this.dmaDst = 0n
    this.dmaCount = 0n
    this.dmaCmd = 0n
    this.dmaBuf.fill(0)
  }

  /**
   * A guest config write: applied by the PCI model, then INTx is signalled if
   * the write unmasked an asserted line (INTx disable cleared, or MSI turned
   * off with interrupt bits set). edu's own rule: its INTx also carries
   * interrupts while MSI is enabled without an eventfd.
   */
  configWrite(offset: number, data: Buffer): void {
    const before = this.#intxDeliverable()
    this.device.config.write(offset, data)
    this.#syncIntxStatus()
    if (!before && this.#intxDeliverable()) this.#signal(IRQ_INTX)
  }

  #startFactorial(n: number): void {
    if ((this.status & STATUS_COMPUTING) !== 0) return
    this.status |= STATUS_COMPUTING
    this.factorial = factorial(n)
    this.status &= ~STATUS_COMPUTING
    if ((this.status & STATUS_IRQ_FACT) !== 0) this.#raise(IRQ_FACT)
  }

  #runDma(): void {
    if (this.#dmaTransfer()) this.stats.dmaTransfers++
    else this.stats.dmaErrors++
    this.dmaCmd &= ~DMA_CMD_START
    if ((this.dmaCmd & DMA_CMD_IRQ) !== 0n) this.#raise(IRQ_DMA)
  }

  /** The programmed transfer; false (nothing copied) for a bad count or range or a failed access. */
  #dmaTransfer(): boolean {
    const count = this.dmaCount
    if (count === 0n || count > BigInt(EDU_DMA_BUF_SIZE)) return false
    const toRam = (this.dmaCmd & DMA_CMD_TO_RAM) !== 0n
    const [eduAddr, iova] = toRam ? [this.dmaSrc, this.dmaDst] : [this.dmaDst, this.dmaSrc]
    const start = eduAddr - EDU_DMA_BUF_ADDR
    if (start < 0n || start + count > BigInt(EDU_DMA_BUF_SIZE)) return false
    if (iova + count > U64) return false
    const s = Number(start)
    const n = Number(count)
    try {
      if (toRam) {
        this.device.dma.write(iova, this.dmaBuf.subarray(s, s + n))
      } else {
        // Read first, so a failed read leaves the EDU buffer alone.
        this.device.dma.read(iova, n).copy(this.dmaBuf, s)
      }
      return true
    } catch {
      return false
    }
  }

  #msiEnabled(): boolean {
    return this.device.config.state().msiEnabled
  }

  /** Interrupts go out as MSI: enabled by the guest, and an eventfd to carry them. */
  #msiActive(msiEnabled = this.#msiEnabled()): boolean {
    return msiEnabled && this.device.irqState(IRQ_MSI, 0)?.hasEventfd === true
  }

  #intxDeliverable(): boolean {
    if (this.irqStatus === 0) return false
    const st = this.device.config.state()
    return !st.intxDisabled && !this.#msiActive(st.msiEnabled)
  }

  /** Keeps the config status INTERRUPT bit in step with the INTx line. */
  #syncIntxStatus(msiEnabled = this.#msiEnabled()): void {
    this.device.config.setInterruptStatus(this.irqStatus !== 0 && !msiEnabled)
  }

  #raise(bits: number): void {
    if (bits === 0) return
    const was = this.irqStatus
    this.irqStatus = (this.irqStatus | bits) >>> 0
    const msiEnabled = this.#msiEnabled()
    this.#syncIntxStatus(msiEnabled)
    if (this.#msiActive(msiEnabled)) {
      // MSI is an edge: every raise sends a message.
      this.#signal(IRQ_MSI)
    } else if (was === 0) {
      // INTx is a level: only the rising edge is signalled.
      this.#signalIntx()
    }
  }

  #ack(bits: number): void {
    this.irqStatus = (this.irqStatus & ~bits) >>> 0
    const msiEnabled = this.#msiEnabled()
    this.#syncIntxStatus(msiEnabled)
    // The level is still up: tell the client again.
    if (this.irqStatus !== 0 && !this.#msiActive(msiEnabled)) this.#signalIntx()
  }

  #signalIntx(): void {
    if (this.device.config.state().intxDisabled) {
      this.stats.irqsRaised++
      this.stats.irqsUndelivered++
      return
    }
    this.#signal(IRQ_INTX)
  }

  #signal(index: number): void {
    this.stats.irqsRaised++
    if (this.device.irq(index, 0) === 'unbound') this.stats.irqsUndelivered++
  }
}

/** The spec of an edu device driven by `model`. */
export function eduSpec(model: EduModel, name = 'emu_edu_ts'): PciDeviceSpec {
  return {
    name,
    ids: {
      vendorId: EDU_VENDOR_ID,
      deviceId: EDU_DEVICE_ID,
      subsystemVendorId: 0x1af4,
      subsystemId: 0x1100,
      revision: 0x10,
      classCode: 0x00ff00,
    },
    config: 'conventional',
    bars: [{ index: 0, size: EDU_BAR0_SIZE, kind: 'mem32' }],
    irqs: { intx: 'a', msi: { vectors: 1, offset: EDU_MSI_CAP_OFFSET } },
    handlers: {
      read: (bar, offset, size) => model.read(bar, offset, size),
      write: (bar, offset, size, value) => model.write(bar, offset, size, value),
      reset: () => model.reset(),
      configWrite: (offset, data) => model.configWrite(offset, data),
    },
  }
}

/** An edu `PciDevice`, with its model at hand (`device.model.stats`). */
export class EduDevice extends PciDevice {
  readonly model: EduModel

  constructor(name?: string) {
    const model = new EduModel()
    super(eduSpec(model, name))
    this.model = model
    model.attach(this)
  }
}

/** `emudev serve --script` serves what the default export returns. */
export default function createEdu(): EduDevice {
  return new EduDevice()
}
