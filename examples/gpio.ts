/**
 * A small 16-in/16-out GPIO card in the spirit of libvfio-user's
 * `gpio-pci-idio-16` sample (an ACCES PCI-IDIO-16 look-alike): PCI 494f:0dc8,
 * one 256-byte I/O BAR (BAR2), INTA.
 *
 * BAR2 registers (byte-wide; wider accesses cover consecutive registers):
 *
 * | offset | name       | access | meaning                                        |
 * |--------|------------|--------|------------------------------------------------|
 * | 0x0    | OUT_LO     | RW     | outputs 0-7                                    |
 * | 0x1    | OUT_HI     | RW     | outputs 8-15                                   |
 * | 0x4    | IN_LO      | RO     | inputs 0-7                                     |
 * | 0x5    | IN_HI      | RO     | inputs 8-15                                    |
 * | 0x6    | IRQ_ENABLE | RW     | bit 0: interrupt when the inputs change        |
 * | 0x7    | IRQ_STATUS | RO     | bit 0: inputs changed; reading clears it       |
 *
 * Everything else reads 0xff and ignores writes.
 *
 * The inputs change over time: every `periodMs` they advance to the next value
 * of a 16-bit counter (as if a pulse generator were wired to the pins), and
 * `setInputs(value)` drives them by hand (e.g. from a test). A change sets
 * IRQ_STATUS and, when enabled, raises INTx until IRQ_STATUS is read.
 *
 * `npx emudev serve --script examples/gpio.ts --sock /tmp/gpio.sock` serves it.
 */
import { PciDevice } from '../src/index'

export const GPIO_VENDOR_ID = 0x494f
export const GPIO_DEVICE_ID = 0x0dc8
export const GPIO_BAR = 2
export const GPIO_BAR_SIZE = 256

export const REG_OUT_LO = 0x0
export const REG_OUT_HI = 0x1
export const REG_IN_LO = 0x4
export const REG_IN_HI = 0x5
export const REG_IRQ_ENABLE = 0x6
export const REG_IRQ_STATUS = 0x7

export interface GpioOptions {
  /** How often the inputs advance (default 100 ms; 0: only `setInputs` changes them). */
  periodMs?: number
  name?: string
}

/** The GPIO card: a `PciDevice` with its pin state. */
export class GpioDevice extends PciDevice {
  outputs = 0
  inputs = 0
  irqEnable = 0
  irqStatus = 0
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
    this.irqStatus |= 1
    if ((this.irqEnable & 1) !== 0 && this.listening) this.setIntx(true)
  }

  override async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
    return super.close()
  }

  #register(offset: number): number {
    switch (offset) {
      case REG_OUT_LO:
        return this.outputs & 0xff
      case REG_OUT_HI:
        return this.outputs >>> 8
      case REG_IN_LO:
        return this.inputs & 0xff
      case REG_IN_HI:
        return this.inputs >>> 8
      case REG_IRQ_ENABLE:
        return this.irqEnable
      case REG_IRQ_STATUS: {
        const v = this.irqStatus
        this.irqStatus = 0
        this.setIntx(false)
        return v
      }
      default:
        return 0xff
    }
  }

  #read(bar: number, offset: number, size: number): Buffer {
    if (bar !== GPIO_BAR) throw new Error(`gpio has no BAR${bar}`)
    const out = Buffer.alloc(size)
    for (let i = 0; i < size; i++) out[i] = this.#register(offset + i)
    return out
  }

  #write(bar: number, offset: number, data: Buffer): void {
    if (bar !== GPIO_BAR) throw new Error(`gpio has no BAR${bar}`)
    data.forEach((byte, i) => {
      switch (offset + i) {
        case REG_OUT_LO:
          this.outputs = (this.outputs & 0xff00) | byte
          break
        case REG_OUT_HI:
          this.outputs = (this.outputs & 0x00ff) | (byte << 8)
          break
        case REG_IRQ_ENABLE:
          this.irqEnable = byte & 1
          break
        default:
        // Inputs, status and holes are read-only.
      }
    })
  }

  #reset(): void {
    this.outputs = 0
    this.irqEnable = 0
    this.irqStatus = 0
  }
}

/** `emudev serve --script` serves what the default export returns. */
export default function createGpio(): GpioDevice {
  return new GpioDevice()
}
