/**
 * An asynchronous vfio-user client.
 *
 * ```ts
 * const client = await VfioUserClient.connect('/tmp/edu.sock')
 * console.log(client.info, client.regions)
 * await client.writeU32(0, 0x04, 0x12345678)
 * const v = await client.readU32(0, 0x04)
 * client.on('irq', ({ index, vector, count }) => ...)
 * await client.enableIrqs(IRQ_MSI, 1)
 * const dma = await client.allocDma(4096)          // shared memory the device can DMA to
 * const [bar2] = await client.mapRegion(2)           // zero-copy Buffer over an mmapped BAR
 * await client.close()
 * ```
 *
 * Every request runs on the libuv thread pool, so the JavaScript thread stays
 * free: a device served by this same process (a `PciDevice`) can answer.
 * Requests run one at a time in the order they were made, even when several
 * are pending. Interrupts arrive as `'irq'` events from a native poller
 * thread; `waitIrq` waits for one. Nothing here keeps Node alive except a
 * pending request or a `waitIrq` with its timer.
 */
import { native } from './native'
import { TypedEmitter } from './emitter'
import type { ConnectOptions, DeviceInfo, DmaBuffer, IrqInfo, MappedArea, RegionDesc } from '../index.js'

/** The native class this module wraps. */
export type NativeAsyncClient = InstanceType<typeof native.NativeAsyncClient>

/** One interrupt: `count` signals on vector `vector` of IRQ `index` since the last event. */
export interface IrqEvent {
  index: number
  vector: number
  count: number
}

/** The events of a `VfioUserClient`. */
export interface ClientEvents extends Record<string, unknown> {
  irq: IrqEvent
  /** A listener threw. */
  error: unknown
}

/** Options of `allocDma`. */
export interface AllocDmaOptions {
  /** Where the device sees the memory (default: the next free page-aligned IOVA from 1 MiB). */
  iova?: bigint
  /** Pass the memory's fd to the server (default true); without, it is reached by DMA_READ/DMA_WRITE. */
  shareFd?: boolean
}

/** An error raised by this module (not the native addon), with a stable `code`. */
export class ClientError extends Error {
  readonly code: string
  constructor(message: string, code: string) {
    super(message)
    this.name = 'ClientError'
    this.code = code
  }
}

const PAGE = 4096n
const FIRST_IOVA = 0x10_0000n

function toBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
}

interface Waiter {
  resolve: (count: number) => void
  reject: (err: unknown) => void
  timer: NodeJS.Timeout
}

/** A vfio-user client (see the module documentation). */
export class VfioUserClient extends TypedEmitter<ClientEvents> {
  readonly #native: NativeAsyncClient
  readonly #info: DeviceInfo
  readonly #regions: RegionDesc[]
  #nextIova = FIRST_IOVA
  readonly #pending = new Map<string, number>()
  readonly #waiters = new Map<string, Waiter[]>()
  #closing: Promise<void> | undefined

  private constructor(nativeClient: NativeAsyncClient) {
    super()
    this.#native = nativeClient
    this.#info = nativeClient.deviceInfo()
    this.#regions = nativeClient.regions()
  }

  /**
   * Connects to the vfio-user server at `path` and reads the device and
   * region info. Rejects with `ERR_VFU_ENOENT` (no socket),
   * `ERR_VFU_ECONNREFUSED` (nobody listening) or `ERR_VFU_EAGAIN` (no answer
   * within `timeoutMs`).
   */
  static async connect(path: string, options?: ConnectOptions): Promise<VfioUserClient> {
    const sink: { client?: VfioUserClient } = {}
    const n = await native.NativeAsyncClient.connect(path, options ?? null, (index, vector, count) => {
      if (sink.client !== undefined) sink.client.#onIrq(index, vector, count)
    })
    sink.client = new VfioUserClient(n)
    return sink.client
  }

  /** The socket path. */
  get path(): string {
    return this.#native.path
  }

  /** Whether a twin socket was negotiated. */
  get twinSocket(): boolean {
    return this.#native.twinSocket
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#native.closed
  }

  /** `DEVICE_GET_INFO`, read at connect time. */
  get info(): DeviceInfo {
    return { ...this.#info }
  }

  /** Every region's info, read at connect time. */
  get regions(): RegionDesc[] {
    return this.#regions.map((r) => ({ ...r, sparseAreas: [...r.sparseAreas] }))
  }

  /** One region's info. */
  region(index: number): RegionDesc | undefined {
    return this.regions[index]
  }

  /** `DEVICE_GET_IRQ_INFO`. */
  async irqInfo(index: number): Promise<IrqInfo> {
    return this.#native.irqInfo(index)
  }

  /** Reads `length` bytes of region `index` at `offset`. */
  async regionRead(index: number, offset: number, length: number): Promise<Buffer> {
    return this.#native.regionRead(index, offset, length)
  }

  /** Writes `data` to region `index` at `offset`. */
  async regionWrite(index: number, offset: number, data: Uint8Array): Promise<void> {
    return this.#native.regionWrite(index, offset, toBuffer(data))
  }

  async readU8(index: number, offset: number): Promise<number> {
    return (await this.regionRead(index, offset, 1)).readUInt8(0)
  }

  async readU16(index: number, offset: number): Promise<number> {
    return (await this.regionRead(index, offset, 2)).readUInt16LE(0)
  }

  async readU32(index: number, offset: number): Promise<number> {
    return this.#native.readU32(index, offset)
  }

  async readU64(index: number, offset: number): Promise<bigint> {
    return this.#native.readU64(index, offset)
  }

  async writeU8(index: number, offset: number, value: number): Promise<void> {
    const b = Buffer.alloc(1)
    b.writeUInt8(value)
    return this.regionWrite(index, offset, b)
  }

  async writeU16(index: number, offset: number, value: number): Promise<void> {
    const b = Buffer.alloc(2)
    b.writeUInt16LE(value)
    return this.regionWrite(index, offset, b)
  }

  async writeU32(index: number, offset: number, value: number): Promise<void> {
    return this.#native.writeU32(index, offset, value)
  }

  async writeU64(index: number, offset: number, value: bigint): Promise<void> {
    return this.#native.writeU64(index, offset, value)
  }

  /**
   * Maps every mappable area of region `index` and resolves with a zero-copy
   * `Buffer` per area: reads see what the device writes, writes reach the
   * device at once. The mapping lives as long as the `Buffer`. Rejects with
   * `ERR_VFU_EINVAL` when the region cannot be mmapped and `ERR_VFU_EACCES`
   * when it is read-only.
   */
  async mapRegion(index: number): Promise<MappedArea[]> {
    return this.#native.mapRegion(index)
  }

  /**
   * Allocates `size` bytes (rounded up to whole pages) of zeroed shared
   * memory and DMA-maps it for the device.
   */
  async allocDma(size: number, options: AllocDmaOptions = {}): Promise<DmaBuffer> {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new ClientError(`size must be a positive integer, got ${size}`, 'ERR_EMUDEV_INVALID_ARG')
    }
    const pages = (BigInt(size) + PAGE - 1n) / PAGE
    const iova = options.iova ?? this.#nextIova
    const end = iova + pages * PAGE
    const buf = await this.#native.allocDma(iova, Number(pages * PAGE), options.shareFd ?? true)
    if (end > this.#nextIova) this.#nextIova = end
    return buf
  }

  /** Binds `count` eventfds to vectors `0..count` of IRQ `index`; their signals become `'irq'` events. */
  async enableIrqs(index: number, count = 1): Promise<void> {
    return this.#native.enableIrqs(index, count)
  }

  /** Unbinds every vector of IRQ `index`. */
  async disableIrqs(index: number): Promise<void> {
    return this.#native.disableIrqs(index)
  }

  /**
   * Resolves with the number of interrupts on vector `vector` of IRQ `index`
   * since the last `waitIrq` for it (waiting for the next one if there were
   * none). Rejects with `ERR_EMUDEV_TIMEOUT` after `timeoutMs` and
   * `ERR_EMUDEV_CLOSED` if the client closes.
   */
  waitIrq(index: number, vector: number, timeoutMs: number): Promise<number> {
    const key = `${index}:${vector}`
    const pending = this.#pending.get(key) ?? 0
    if (pending > 0) {
      this.#pending.delete(key)
      return Promise.resolve(pending)
    }
    if (this.closed) return Promise.reject(new ClientError('the client is closed', 'ERR_EMUDEV_CLOSED'))
    return new Promise<number>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          const list = this.#waiters.get(key)
          const i = list?.indexOf(waiter) ?? -1
          if (list !== undefined && i >= 0) list.splice(i, 1)
          reject(new ClientError(`no interrupt on IRQ ${index} vector ${vector} within ${timeoutMs} ms`, 'ERR_EMUDEV_TIMEOUT'))
        }, timeoutMs),
      }
      const list = this.#waiters.get(key) ?? []
      list.push(waiter)
      this.#waiters.set(key, list)
    })
  }

  /** `DEVICE_RESET`. */
  async reset(): Promise<void> {
    return this.#native.reset()
  }

  /**
   * Disconnects: the server drops this client's DMA maps and eventfds, DMA
   * memory is freed (mapped region Buffers stay valid), pending requests and
   * `waitIrq` calls reject with `ERR_EMUDEV_CLOSED`. Safe to call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= this.#native.close().finally(() => {
      for (const list of this.#waiters.values()) {
        for (const w of list) {
          clearTimeout(w.timer)
          w.reject(new ClientError('the client was closed', 'ERR_EMUDEV_CLOSED'))
        }
      }
      this.#waiters.clear()
    })
    return this.#closing
  }

  #onIrq(index: number, vector: number, count: number): void {
    const key = `${index}:${vector}`
    const waiter = this.#waiters.get(key)?.shift()
    if (waiter !== undefined) {
      clearTimeout(waiter.timer)
      waiter.resolve(count)
    } else {
      this.#pending.set(key, (this.#pending.get(key) ?? 0) + count)
    }
    this.emit('irq', { index, vector, count })
  }
}
