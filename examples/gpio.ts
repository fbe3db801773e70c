/**
 * A 16-in/16-out GPIO card with the programming model of the ACCES
 * PCI-IDIO-16, as Linux's in-tree `gpio-pci-idio-16` driver (with
 * `gpio-idio-16` and `gpio-regmap`) uses it: PCI 494f:0dc8, one 256-byte I/O
 * BAR (BAR2), INTA. `npm run test:guest -- gpio` proves that driver binds to
 * it and drives it through GPIO sysfs.
 *
 * BAR2 registers (byte-wide; wider accesses cover consecutive registers):
 *
 * | offset | name       | read                            | write                     |
 * |--------|------------|---------------------------------|---------------------------|
 * | 0x0    | OUT0_7     | outputs 0-7                     | outputs 0-7               |
 * | 0x1    | IN0_7      | inputs 0-7                      | clear the interrupt       |
 * | 0x2    | IRQ_CTL    | enables the interrupt (reads 0) | disables the interrupt    |
 * | 0x3    | FILTER_CTL | activates input filters (0)     | deactivates input filters |
 * | 0x4    | OUT8_15    | outputs 8-15                    | outputs 8-15              |
 * | 0x5    | IN8_15     | inputs 8-15                     | ignored                   |
 * | 0x6    | IRQ_STATUS | bit 2: change-of-state pending  | ignored                   |
 *
 * Everything else reads 0xff and ignores writes. The side effects ride on the
 * access, not on the value: any read of IRQ_CTL enables the interrupt, any
 * write to IN0_7 clears it.
 *
 * The inputs change over time: every `periodMs` they advance to the next value
 * of a 16-bit counter (as if a pulse generator were wired to the pins), and
 * `setInputs(value)` drives them by hand (e.g. from a test); with `loopback`
 * outputs drive inputs. A change while
 * the interrupt is enabled latches IRQ_STATUS bit 2 and raises INTx, which
 * stays up until a write to IN0_7 clears it or a write to IRQ_CTL disables
 * the interrupt.
 *
 * `npx emudev serve --script examples/gpio.ts --sock /tmp/gpio.sock` serves it.
 */
import { PciDevice } from '../src/index'

export const GPIO_VENDOR_ID = 0x494f
export const GPIO_DEVICE_ID = 0x0dc8
export const GPIO_BAR = 2
export const GPIO_BAR_SIZE = 256

export const REG_OUT0_7 = 0x0
export const REG_IN0_7 = 0x1
export const REG_IRQ_CTL = 0x2
export const REG_FILTER_CTL = 0x3
export const REG_OUT8_15 = 0x4
export const REG_IN8_15 = 0x5
export const REG_IRQ_STATUS = 0x6

/** IRQ_STATUS: a change-of-state interrupt is pending. */
export const IRQ_STATUS_PENDING = 0x4

/** How many output values `outputHistory` keeps (the oldest go first). */
export const OUTPUT_HISTORY_MAX = 1024

export interface GpioOptions {
  /** How often the inputs advance (default 100 ms; 0: only `setInputs` changes them). */
  periodMs?: number
  /** The input pins at start (16 bits, default 0). */
  inputs?: number
  /**
   * Loopback wiring (16-bit mask, default 0): output pin n of the mask also
   * drives input pin n, which reads as its `inputs` level XOR the output, as
   * if a test fixture were wired between the two connectors.
   */
  loopback?: number
  name?: string
}

/** What the card counted since it was made. */
export interface GpioCounters {
  /** Writes to OUT0_7 or OUT8_15. */
  outputWrites: number
  /** Reads of IN0_7 or IN8_15. */
  inputReads: number
  /** Reads of IRQ_CTL (interrupt enabled). */
  irqEnables: number
  /** Writes to IRQ_CTL (interrupt disabled). */
  irqDisables: number
  /** Writes to IN0_7 (interrupt cleared). */
  irqClears: number
  /** Rising edges of INTx. */
  irqsRaised: number
  /** Writes to FILTER_CTL (filters off). */
  filterWrites: number
  /** Accesses outside the registers (read as 0xff, writes dropped). */
  holeAccesses: number
}

/** The GPIO card: a `PciDevice` with its pin state. */
export class GpioDevice extends PciDevice {
  /** Output pins 0-15 as the guest last wrote them. */
  outputs = 0
  /** Input pins 0-15. */
  inputs = 0
  irqEnabled = false
  irqPending = false
  filtersActive = false
  /** Every value the outputs took, in order (at most {@link OUTPUT_HISTORY_MAX}). */
  readonly outputHistory: number[] = []
  readonly counters: GpioCounters = {
    outputWrites: 0,
    inputReads: 0,
    irqEnables: 0,
    irqDisables: 0,
    irqClears: 0,
    irqsRaised: 0,
    filterWrites: 0,
    holeAccesses: 0,
  }
  readonly loopback: number
  #line = false
  #timer: NodeJS.Timeout | undefined

  constructor(options: GpioOptions = {}) {
    // The handlers need the instance; they only run once it exists.
    let self: GpioDevice | undefined
    const me = (): GpioDevice => {
      if (self === undefined) throw new Error('gpio: not constructed yet')
      return self
    }
    super({
      name: options.name ?? 'gpio_idio16',
      ids: { vendorId: GPIO_VENDOR_ID, deviceId: GPIO_DEVICE_ID, classCode: 0xff0000 },
      bars: [{ index: GPIO_BAR, size: GPIO_BAR_SIZE, kind: 'io' }],
      irqs: { intx: 'a' },
      handlers: {
        read: (bar, offset, size) => me().#read(bar, offset, size),
        write: (bar, offset, _size, _value, data) => me().#write(bar, offset, data),
        reset: () => me().#reset(),
      },
    })
    self = this
    this.inputs = (options.inputs ?? 0) & 0xffff
    this.loopback = (options.loopback ?? 0) & 0xffff
    const period = options.periodMs ?? 100
    if (period > 0) {
      this.#timer = setInterval(() => this.setInputs((this.inputs + 1) & 0xffff), period)
      // The device keeps Node alive while it listens; the pulse generator alone does not.
      this.#timer.unref()
    }
  }

  /** Drives the input pins (16 bits). */
  setInputs(value: number): void {
    const next = value & 0xffff
    if (next === this.inputs) return
    this.inputs = next
    if (this.irqEnabled) this.irqPending = true
    this.#updateLine()
  }

  override async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
    return super.close()
  }

  /** INTx follows "pending and enabled". */
  #updateLine(): void {
    const level = this.irqPending && this.irqEnabled
    if (level === this.#line) return
    this.#line = level
    if (level) this.counters.irqsRaised++
    if (this.listening) this.setIntx(level)
  }

  #setOutputs(value: number): void {
    this.counters.outputWrites++
    const changed = (this.outputs ^ value) & this.loopback
    this.outputs = value & 0xffff
    if (changed !== 0) this.setInputs(this.inputs ^ changed)
    this.outputHistory.push(this.outputs)
    if (this.outputHistory.length > OUTPUT_HISTORY_MAX) this.outputHistory.shift()
  }

  #readRegister(offset: number): number {
    switch (offset) {
      case REG_OUT0_7:
        return this.outputs & 0xff
      case REG_OUT8_15:
        return this.outputs >>> 8
      case REG_IN0_7:
        this.counters.inputReads++
        return this.inputs & 0xff
      case REG_IN8_15:
        this.counters.inputReads++
        return this.inputs >>> 8
      case REG_IRQ_CTL:
        this.counters.irqEnables++
        this.irqEnabled = true
        this.#updateLine()
        return 0
      case REG_FILTER_CTL:
        this.filtersActive = true
        return 0
      case REG_IRQ_STATUS:
        return this.irqPending ? IRQ_STATUS_PENDING : 0
      default:
        this.counters.holeAccesses++
        return 0xff
    }
  }

  #writeRegister(offset: number, byte: number): void {
    switch (offset) {
      case REG_OUT0_7:
        this.#setOutputs((this.outputs & 0xff00) | byte)
        break
      case REG_OUT8_15:
        this.#setOutputs((this.outputs & 0x00ff) | (byte << 8))
        break
      case REG_IN0_7:
        this.counters.irqClears++
        this.irqPending = false
        this.#updateLine()
        break
      case REG_IRQ_CTL:
        this.counters.irqDisables++
        this.irqEnabled = false
        this.#updateLine()
        break
      case REG_FILTER_CTL:
        this.counters.filterWrites++
        this.filtersActive = false
        break
      case REG_IN8_15:
      case REG_IRQ_STATUS:
        break
      default:
        this.counters.holeAccesses++
    }
  }

  #read(bar: number, offset: number, size: number): Buffer {
    if (bar !== GPIO_BAR) throw new Error(`gpio has no BAR${bar}`)
    const out = Buffer.alloc(size)
    for (let i = 0; i < size; i++) out[i] = this.#readRegister(offset + i)
    return out
  }

  #write(bar: number, offset: number, data: Buffer): void {
    if (bar !== GPIO_BAR) throw new Error(`gpio has no BAR${bar}`)
    data.forEach((byte, i) => this.#writeRegister(offset + i, byte))
  }

  #reset(): void {
    // The pins outside stay as they are; the card's own state starts over.
    this.outputs = 0
    this.irqEnabled = false
    this.irqPending = false
    this.filtersActive = false
    this.#updateLine()
  }
}

/** `emudev serve --script` serves what the default export returns. */
export default function createGpio(): GpioDevice {
  return new GpioDevice()
}
