/**
 * PCI devices written in TypeScript, served over vfio-user.
 *
 * ```ts
 * const device = new PciDevice({
 *   ids: { vendorId: 0x1234, deviceId: 0x0001 },
 *   bars: [{ index: 0, size: 4096 }],
 *   irqs: { msi: { vectors: 1 } },
 *   handlers: {
 *     read: (bar, offset, size) => (offset === 0 ? 0xc0ffee : 0),
 *     write: (bar, offset, size, value) => { ... },
 *   },
 * })
 * await device.listen('/tmp/dev.sock')
 * device.on('connected', () => console.log('a VMM attached'))
 * ...
 * await device.close()
 * ```
 *
 * The PCI model is native (`crates/pci`): config space with its read-only,
 * read-write and write-1-to-clear bits, BAR sizing, the PM, MSI, MSI-X and PCI
 * Express capabilities, the MSI-X table and PBA, and BARs backed by shared
 * memory the client may mmap. Trapped BAR accesses call `handlers.read` /
 * `handlers.write` **synchronously**: the vfio-user reply waits for the
 * handler's return value. A handler that throws, returns a value of the
 * wrong type or size, or takes longer than `handlerTimeoutMs` makes the
 * client's request fail with EIO; the device keeps serving and emits
 * `'handlerError'`.
 *
 * Threading: the vfio-user server runs on a native thread and calls the
 * handlers on the JavaScript thread. Handlers may use everything on the
 * device (`irq`, `dma`, `config`, ...) while they run. They must not wait for
 * the device's own client on the same thread: use the asynchronous
 * `VfioUserClient` (or another process) to talk to a device served here.
 *
 * Lifetime: a listening device keeps Node alive, like a `net.Server`, until
 * `close()` (or `unref()`). `close()` is asynchronous: it stops the server
 * thread off the JavaScript thread and releases the native callback.
 */
import { native } from './native'
import { TypedEmitter, type EventArgs } from './emitter'
import type { DmaMapping, IrqVectorState, NativeDeviceSpec, PciDeviceStats, PciState } from '../index.js'

/** The native class this module wraps. */
export type NativePciDevice = InstanceType<typeof native.NativePciDevice>

/** VFIO IRQ index of INTx. */
export const IRQ_INTX = 0
/** VFIO IRQ index of MSI. */
export const IRQ_MSI = 1
/** VFIO IRQ index of MSI-X. */
export const IRQ_MSIX = 2
/** VFIO IRQ index of the error interrupt. */
export const IRQ_ERR = 3
/** VFIO IRQ index of the device-request interrupt. */
export const IRQ_REQ = 4
/** VFIO region index of the expansion ROM. */
export const ROM_REGION = 6
/** VFIO region index of PCI config space. */
export const CONFIG_REGION = 7

/** The PCI identity of a device. */
export interface PciIds {
  vendorId: number
  deviceId: number
  /** Default 0. */
  subsystemVendorId?: number
  /** Default 0. */
  subsystemId?: number
  /** 24-bit class code (base class, sub-class, prog-if); default 0xff0000. */
  classCode?: number
  /** Default 0. */
  revision?: number
}

/** One BAR. */
export interface BarSpec {
  /** First BAR slot: 0-5 (0-4 for a 64-bit BAR). */
  index: number
  /** A power of two: at least 16 for memory, 4 to 256 for I/O. */
  size: number | bigint
  /** Default `'mem32'`. */
  kind?: 'mem32' | 'mem64' | 'io'
  /** Prefetchable memory (default false). */
  prefetchable?: boolean
  /**
   * Back the BAR with shared memory the client may mmap (the size must be a
   * multiple of the page size). Accesses to it never reach the handlers; the
   * device reads and writes it with `device.bar(index)`.
   */
  mmap?: boolean
}

/** Interrupt capabilities. */
export interface IrqSpec {
  /** INTx pin; default `'a'`. */
  intx?: 'a' | 'b' | 'c' | 'd' | 'none'
  /** An MSI capability. */
  msi?: { vectors: number; perVectorMask?: boolean; address64?: boolean; offset?: number }
  /** An MSI-X capability; table and PBA live in (memory) BARs of the spec. */
  msix?: {
    vectors: number
    tableBar: number
    tableOffset: number
    pbaBar: number
    pbaOffset: number
    offset?: number
  }
  /** Offer the ERR interrupt index (default true). */
  err?: boolean
  /** Offer the REQ interrupt index (default true). */
  req?: boolean
}

/**
 * What a read handler may return: a number or bigint (little-endian, at most
 * 8 bytes; negative values are taken as two's complement, so `~x` works) or
 * the bytes themselves (exactly `size` of them).
 */
export type ReadValue = number | bigint | Uint8Array

/** The device's behaviour. `this` is the handlers object. */
export interface DeviceHandlers {
  /** A trapped read of `size` bytes at `offset` in BAR `bar`. */
  read(bar: number, offset: number, size: number): ReadValue
  /**
   * A trapped write. `value` is the written bytes as a little-endian integer:
   * a number up to 4 bytes (and for 5 and 6), a bigint for 7 and 8, `0n` for
   * longer writes; `data` always holds the bytes.
   */
  write(bar: number, offset: number, size: number, value: number | bigint, data: Buffer): void
  /** `DEVICE_RESET`, after config space and the MSI-X table were reset. */
  reset?(): void
  /**
   * Config space writes, instead of the PCI model's default handling. The
   * handler applies the write with `device.config.write(offset, data)` and
   * does what the device does on top (the default also re-signals an asserted
   * INTx line the write unmasked; a handler that takes over does that itself).
   */
  configWrite?(offset: number, data: Buffer): void
}

/** Everything a `PciDevice` is made of. */
export interface PciDeviceSpec {
  /** For messages (default `'pci'`). */
  name?: string
  ids: PciIds
  /** 256-byte (default) or 4096-byte config space with a PCI Express capability. */
  config?: 'conventional' | 'express'
  bars: BarSpec[]
  /** Default: INTA, no MSI or MSI-X. */
  irqs?: IrqSpec
  /** Add a power management capability (default false). */
  pm?: boolean
  handlers: DeviceHandlers
  /** How long a trapped access may wait for its handler (default 5000 ms). */
  handlerTimeoutMs?: number
}

/** A DMA map the client added or removed. */
export interface DmaMapEvent {
  iova: bigint
  size: bigint
  /** READ = 1, WRITE = 2. */
  prot: number
  fileOffset: bigint
}

/** A handler call that failed (the client got EIO). */
export interface HandlerErrorEvent {
  op: 'read' | 'write' | 'reset' | 'configWrite'
  bar: number | undefined
  offset: number
  size: number
  /** What the handler threw, or a description of what went wrong. */
  error: unknown
}

/** The events of a `PciDevice`. */
export interface PciDeviceEvents extends Record<string, unknown> {
  /** A client connected. */
  connected: void
  /** The client went away (its DMA maps and IRQ eventfds are gone; device state is kept). */
  disconnected: void
  dmaMapped: DmaMapEvent
  dmaUnmapped: DmaMapEvent
  /** The client reset the device (after `handlers.reset`). */
  reset: void
  /** The client changed the eventfds or masks of an IRQ index. */
  irqsChanged: { index: number }
  handlerError: HandlerErrorEvent
  /** A listener threw. */
  error: unknown
}

/** What `irq()` did. */
export type IrqOutcome = 'delivered' | 'latched' | 'unbound'
/** What `fireMsi()` / `fireMsix()` did. */
export type MsiOutcome = 'delivered' | 'pending' | 'disabled' | 'unbound'
/** What `setIntx()` did. */
export type IntxOutcome = 'signalled' | 'latched' | 'suppressed' | 'unchanged' | 'lowered' | 'unbound'

// The dispatcher's op codes (crates/node/src/dispatch.rs).
const OP_READ = 0
const OP_WRITE = 1
const OP_RESET = 2
const OP_CONFIG_WRITE = 3
const OP_CONNECTED = 4
const OP_DISCONNECTED = 5
const OP_DMA_MAPPED = 6
const OP_DMA_UNMAPPED = 7
const OP_IRQS_CHANGED = 8
const OP_HANDLER_ERROR = 9

/** The events the native side sends only when asked to. */
const EVENT_OPS: ReadonlyArray<[keyof PciDeviceEvents, number]> = [
  ['reset', OP_RESET],
  ['connected', OP_CONNECTED],
  ['disconnected', OP_DISCONNECTED],
  ['dmaMapped', OP_DMA_MAPPED],
  ['dmaUnmapped', OP_DMA_UNMAPPED],
  ['irqsChanged', OP_IRQS_CHANGED],
]

const OP_NAMES: Record<number, HandlerErrorEvent['op']> = {
  [OP_READ]: 'read',
  [OP_WRITE]: 'write',
  [OP_RESET]: 'reset',
  [OP_CONFIG_WRITE]: 'configWrite',
}

/** Devices that listen: kept reachable (and the process alive) until closed. */
const listening = new Set<PciDevice>()

/** The longest delay a timer takes; the keep-alive timer never fires in practice. */
const KEEP_ALIVE_MS = 2 ** 31 - 1

/** The bytes of a scalar write whose value the native side passed as a number or bigint. */
function scalarBytes(size: number, value: number | bigint): Buffer {
  const b = Buffer.allocUnsafe(size)
  if (typeof value === 'bigint') b.writeBigUInt64LE(value)
  else b.writeUIntLE(value, 0, size)
  return b
}

/** The little-endian value of written bytes, as `DeviceHandlers.write` documents it. */
function valueOf(data: Buffer): number | bigint {
  if (data.length === 0) return 0
  if (data.length <= 6) return data.readUIntLE(0, data.length)
  if (data.length === 8) return data.readBigUInt64LE(0)
  if (data.length === 7) return BigInt(data.readUIntLE(0, 6)) | (BigInt(data[6] ?? 0) << 48n)
  return 0n
}

function toBigInt(n: number | bigint, what: string): bigint {
  if (typeof n === 'bigint') return n
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${what} must be a non-negative integer, got ${n}`)
  return BigInt(n)
}

/** A PCI device whose trapped BAR accesses are handled in TypeScript. */
export class PciDevice extends TypedEmitter<PciDeviceEvents> {
  /** The name from the spec. */
  readonly name: string
  readonly #handlers: DeviceHandlers
  readonly #native: NativePciDevice
  #keepAlive: NodeJS.Timeout | undefined
  #ref = true
  #closing: Promise<void> | undefined

  /** Client memory, by IOVA, through the DMA table of the connected client. */
  readonly dma: {
    /** Copies `length` bytes out of client memory (`ERR_VFU_EFAULT` if unmapped). */
    read(iova: bigint | number, length: number): Buffer
    /** Copies `data` into client memory. */
    write(iova: bigint | number, data: Uint8Array): void
    /** The client's DMA maps now. */
    mappings(): DmaMapping[]
  }

  /** PCI config space through the PCI model. */
  readonly config: {
    read(offset: number, length: number): Buffer
    readU8(offset: number): number
    readU16(offset: number): number
    readU32(offset: number): number
    /** Applies a write as the guest's would be (see `DeviceHandlers.configWrite`). */
    write(offset: number, data: Uint8Array): void
    /** Command register and interrupt enables. */
    state(): PciState
    /** Sets the status register's interrupt bit (for devices that drive INTx with `irq`). */
    setInterruptStatus(asserted: boolean): void
  }

  constructor(spec: PciDeviceSpec) {
    super()
    this.name = spec.name ?? 'pci'
    this.#handlers = spec.handlers
    const nativeSpec: NativeDeviceSpec = {
      name: this.name,
      ids: spec.ids,
      bars: spec.bars,
      handlesReset: typeof spec.handlers.reset === 'function',
      handlesConfigWrite: typeof spec.handlers.configWrite === 'function',
    }
    if (spec.config !== undefined) nativeSpec.config = spec.config
    if (spec.irqs !== undefined) nativeSpec.irqs = spec.irqs
    if (spec.pm !== undefined) nativeSpec.pm = spec.pm
    if (spec.handlerTimeoutMs !== undefined) nativeSpec.handlerTimeoutMs = spec.handlerTimeoutMs
    this.#native = new native.NativePciDevice(nativeSpec, (op, a, b, c, value, data) =>
      this.#dispatch(op, a, b, c, value, data),
    )
    this.#syncEventMask()
    const n = this.#native
    this.dma = {
      read: (iova, length) => n.dmaRead(toBigInt(iova, 'iova'), length),
      write: (iova, data) => n.dmaWrite(toBigInt(iova, 'iova'), Buffer.from(data.buffer, data.byteOffset, data.byteLength)),
      mappings: () => n.dmaMappings(),
    }
    this.config = {
      read: (offset, length) => n.configRead(offset, length),
      readU8: (offset) => n.configRead(offset, 1).readUInt8(0),
      readU16: (offset) => n.configRead(offset, 2).readUInt16LE(0),
      readU32: (offset) => n.configRead(offset, 4).readUInt32LE(0),
      write: (offset, data) => n.configWrite(offset, Buffer.from(data.buffer, data.byteOffset, data.byteLength)),
      state: () => n.pciState(),
      setInterruptStatus: (asserted) => n.setInterruptStatus(asserted),
    }
  }

  override on<K extends keyof PciDeviceEvents>(event: K, listener: (...args: EventArgs<PciDeviceEvents[K]>) => void): this {
    super.on(event, listener)
    this.#syncEventMask()
    return this
  }

  override off<K extends keyof PciDeviceEvents>(event: K, listener: (...args: EventArgs<PciDeviceEvents[K]>) => void): this {
    super.off(event, listener)
    this.#syncEventMask()
    return this
  }

  /** Asks the native side for the events someone listens to, and no others (each costs a wake-up). */
  #syncEventMask(): void {
    // `on` runs during `super()` only if a subclass adds listeners there, before #native exists.
    if (this.#native === undefined) return
    let mask = 0
    for (const [event, op] of EVENT_OPS) if (this.listenerCount(event) > 0) mask |= 1 << op
    this.#native.setEventMask(mask)
  }

  /** The socket path while listening, else null. */
  get path(): string | null {
    return this.#native.path
  }

  /** Whether the device is serving a socket. */
  get listening(): boolean {
    return this.#native.path !== null
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#native.closed
  }

  /**
   * Serves the device on the UNIX socket at `path` (mode 0600). Rejects with
   * `ERR_EMUDEV_SOCKET_IN_USE` when a live server listens there,
   * `ERR_EMUDEV_NOT_A_SOCKET`, or `ERR_VFU_<ERRNO>`.
   */
  async listen(path: string): Promise<this> {
    this.#native.listen(path)
    listening.add(this)
    this.#keepAlive = setInterval(() => {}, KEEP_ALIVE_MS)
    if (!this.#ref) this.#keepAlive.unref()
    return this
  }

  /** Keeps Node alive while listening (the default). */
  ref(): this {
    this.#ref = true
    this.#keepAlive?.ref()
    return this
  }

  /** Lets Node exit while the device still listens (call `close()` before exiting all the same). */
  unref(): this {
    this.#ref = false
    this.#keepAlive?.unref()
    return this
  }

  /**
   * Signals vector `vector` of IRQ `index` through the IRQ table (the eventfd
   * the client bound), whatever config space says. See `fireMsi`, `fireMsix`
   * and `setIntx` for delivery that follows the capabilities.
   */
  irq(index: number, vector = 0): IrqOutcome {
    return this.#native.irq(index, vector)
  }

  /** The IRQ table's view of a vector (null: no such vector). */
  irqState(index: number, vector = 0): IrqVectorState | null {
    return this.#native.irqState(index, vector)
  }

  /** Fires an MSI vector through the MSI capability (enable, masks, pending bits). */
  fireMsi(vector = 0): MsiOutcome {
    return this.#native.fireMsi(vector)
  }

  /** Fires an MSI-X vector through the MSI-X table. */
  fireMsix(vector: number): MsiOutcome {
    return this.#native.fireMsix(vector)
  }

  /** Sets the INTx level (signalled on a rising edge the guest allows). */
  setIntx(level: boolean): IntxOutcome {
    return this.#native.setIntx(level)
  }

  /** The shared memory of a BAR declared with `mmap: true`. */
  bar(index: number): { read(offset: number, length: number): Buffer; write(offset: number, data: Uint8Array): void } {
    const n = this.#native
    return {
      read: (offset, length) => n.barRead(index, offset, length),
      write: (offset, data) => n.barWrite(index, offset, Buffer.from(data.buffer, data.byteOffset, data.byteLength)),
    }
  }

  /** Server and handler counters. */
  stats(): PciDeviceStats {
    return this.#native.stats()
  }

  /**
   * Stops serving: a handler call in progress fails, the client is
   * disconnected, the server thread is joined (off the JavaScript thread),
   * the socket file is removed and the native callback released. Safe to
   * call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= this.#native.close().finally(() => {
      if (this.#keepAlive !== undefined) clearInterval(this.#keepAlive)
      this.#keepAlive = undefined
      listening.delete(this)
    })
    return this.#closing
  }

  #dispatch(
    op: number,
    a: number,
    b: number,
    c: number,
    value: number | bigint | null,
    data: Buffer | null,
  ): number | bigint | Buffer | undefined {
    switch (op) {
      case OP_READ:
        try {
          const v = this.#handlers.read(a, b, c)
          if (typeof v === 'object' && v !== null && !Buffer.isBuffer(v)) {
            if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength)
            if (typeof (v as { then?: unknown }).then === 'function') {
              throw new TypeError(`${this.name}: read handlers must return their value synchronously, not a promise`)
            }
          }
          return v as number | bigint | Buffer
        } catch (err) {
          this.#handlerFailed('read', a, b, c, err)
          throw err
        }
      case OP_WRITE: {
        const bytes = data ?? scalarBytes(c, value ?? 0)
        try {
          this.#handlers.write(a, b, c, value ?? valueOf(bytes), bytes)
        } catch (err) {
          this.#handlerFailed('write', a, b, c, err)
          throw err
        }
        return undefined
      }
      case OP_RESET:
        try {
          this.#handlers.reset?.()
        } catch (err) {
          this.#handlerFailed('reset', undefined, 0, 0, err)
          throw err
        }
        this.emit('reset')
        return undefined
      case OP_CONFIG_WRITE:
        try {
          this.#handlers.configWrite?.(b, data ?? Buffer.alloc(0))
        } catch (err) {
          this.#handlerFailed('configWrite', undefined, b, c, err)
          throw err
        }
        return undefined
      case OP_CONNECTED:
        this.emit('connected')
        return undefined
      case OP_DISCONNECTED:
        this.emit('disconnected')
        return undefined
      case OP_DMA_MAPPED:
      case OP_DMA_UNMAPPED: {
        const d = data ?? Buffer.alloc(24)
        const event: DmaMapEvent = {
          iova: d.readBigUInt64LE(0),
          size: d.readBigUInt64LE(8),
          prot: a,
          fileOffset: d.readBigUInt64LE(16),
        }
        this.emit(op === OP_DMA_MAPPED ? 'dmaMapped' : 'dmaUnmapped', event)
        return undefined
      }
      case OP_IRQS_CHANGED:
        this.emit('irqsChanged', { index: a })
        return undefined
      case OP_HANDLER_ERROR: {
        const reason = (data ?? Buffer.alloc(0)).toString('utf8')
        const error = Object.assign(new Error(`${this.name}: ${reason}`), { code: 'ERR_EMUDEV_HANDLER' })
        this.#handlerFailed(OP_NAMES[a] ?? 'read', undefined, b, c, error)
        return undefined
      }
      default:
        return undefined
    }
  }

  #handlerFailed(op: HandlerErrorEvent['op'], bar: number | undefined, offset: number, size: number, error: unknown): void {
    if (this.emit('handlerError', { op, bar, offset, size, error })) return
    const what = error instanceof Error ? error.message : String(error)
    process.emitWarning(`${this.name}: ${op} handler at offset ${offset} (${size} bytes) failed; the client got EIO: ${what}`, {
      code: 'EMUDEV_HANDLER_ERROR',
    })
  }
}
