/**
 * `IavfPort`: the iavf client driver (`iavf_client`) brings an Intel AVF
 * virtual function behind a vfio-user socket to link-up.
 *
 * ```ts
 * const port = new IavfPort('/tmp/sock1', { queues: 4 })
 * port.on('step', (s) => console.log(s.step, s.micros, s.detail))
 * port.on('link', (l) => console.log('link', l.up ? 'up' : 'down', l.speedMbps))
 * const { link, mac, steps } = await port.start()
 * console.log(port.link, port.mac, await port.stats())
 * await port.send([frame])                           // TX queue 0
 * for await (const f of port.packets()) { ... }       // RX queue 0, until close() or abort
 * await port.forward({ mode: 'io', durationMs: 5000 }) // testpmd-style engine, native speed
 * await port.reset()                                  // VIRTCHNL_OP_RESET_VF and up again
 * await port.close()
 * ```
 *
 * The driver is native (`emudev-iavf`'s `IavfDriver`) and does all its work
 * off the JavaScript thread: requests run on the libuv pool, one at a time in
 * the order they were made, and the PF's events (link changes) arrive from a
 * native watcher of the admin queue's interrupt. `'step'` events for a
 * `start()` or `reset()` are all emitted before its promise resolves. Nothing
 * here keeps Node alive except a pending request.
 */
import { native } from './native'
import { TypedEmitter } from './emitter'
import { pollFrames } from './poll'
import type {
  IavfForwardOptions,
  IavfForwardStats,
  IavfPortEvent,
  IavfPortOptions,
  IavfPortStats,
  IavfStartResult,
} from '../index.js'

export type { IavfForwardOptions, IavfForwardStats }

/** Options of {@link IavfPort.receive} and {@link IavfPort.packets}. */
export interface ReceiveOptions {
  /** RX queue (default 0). */
  queue?: number
  /** Most frames per call (default 32). */
  max?: number
  /** Wait up to this long for the first frame (default 0: return at once). */
  timeoutMs?: number
}

/** Options of {@link IavfPort.packets}. */
export interface PacketsOptions {
  /** RX queue (default 0). */
  queue?: number
  /** Ends the iteration when aborted. */
  signal?: AbortSignal
}

/** The native class this module wraps. */
export type NativeIavfPort = InstanceType<typeof native.NativeIavfPort>

/** The link as the PF reported it. */
export interface IavfLink {
  up: boolean
  /** Speed in Mbps, or null if the PF reported none it knows. */
  speedMbps: number | null
}

/** A `'link'` event: the PF's LINK_CHANGE. */
export interface IavfLinkEvent extends IavfLink {
  /** The port's MAC. */
  mac: string
}

/** One bring-up step done. */
export interface IavfStep {
  /** The step (`'DEVICE_RESET'`, `'admin queue'`, `'VIRTCHNL_OP_VERSION'`, ..., `'link'`). */
  step: string
  /** Its duration in microseconds. */
  micros: number
  /** What it found, one line. */
  detail: string
}

/** A `'step'` event. */
export interface IavfStepEvent extends IavfStep {
  /** Which `start()`/`reset()` it belongs to (1 for the first). */
  run: number
}

/** What `start()` and `reset()` resolve with. */
export interface IavfPortStart {
  /** The link after bring-up. */
  link: IavfLink
  /** The port's MAC (`aa:bb:cc:dd:ee:ff`). */
  mac: string
  /** Every step, in order. */
  steps: IavfStep[]
}

/** The events of an `IavfPort`. */
export interface IavfPortEvents extends Record<string, unknown> {
  /** The PF reported a link change (the first one ends `start()`). */
  link: IavfLinkEvent
  /** A bring-up step finished. */
  step: IavfStepEvent
  /** The PF is about to reset the VF. */
  'reset-impending': void
  /** The PF driver is closing. */
  'pf-close': void
  /** Another PF event. */
  event: { code: number }
  /** The admin-queue watcher failed (e.g. the server went away), or a listener threw. */
  error: unknown
}

export type { IavfPortOptions, IavfPortStats }

/** The `code` of an error for a port closed before it connected. */
export const PORT_CLOSED_CODE = 'ERR_EMUDEV_CLOSED'

/** An error raised by this module (not the native addon), with a stable `code`. */
export class IavfPortError extends Error {
  readonly code: string
  constructor(message: string, code: string) {
    super(message)
    this.name = 'IavfPortError'
    this.code = code
  }
}

function toLink(l: { up: boolean; speedMbps?: number | null }): IavfLink {
  return { up: l.up, speedMbps: l.speedMbps ?? null }
}

/** The iavf client driver on one vfio-user socket (see the module documentation). */
export class IavfPort extends TypedEmitter<IavfPortEvents> {
  readonly #path: string
  readonly #options: IavfPortOptions
  #native: NativeIavfPort | undefined
  #connecting: Promise<NativeIavfPort> | undefined
  #closing: Promise<void> | undefined
  #closed = false
  /** Step events emitted per run still in progress. */
  readonly #emitted = new Map<number, number>()
  /** Runs are serialized natively, so every step of a run up to this one has been emitted. */
  #lastFinishedRun = 0

  /**
   * A port for the VF served at `path`; nothing happens until `start()` (or
   * use {@link IavfPort.connect} to connect now). Options are checked when
   * the port connects (`ERR_EMUDEV_INVALID_ARG`).
   */
  constructor(path: string, options?: IavfPortOptions) {
    super()
    this.#path = path
    this.#options = { ...options }
  }

  /**
   * Connects to the vfio-user socket at `path` now (the VF is brought up by
   * `start()`). Rejects with `ERR_VFU_ENOENT` / `ERR_VFU_ECONNREFUSED` when
   * nobody serves it, `ERR_EMUDEV_INVALID_ARG` for bad options.
   */
  static async connect(path: string, options?: IavfPortOptions): Promise<IavfPort> {
    const port = new IavfPort(path, options)
    await port.#connect()
    return port
  }

  /** The socket path. */
  get path(): string {
    return this.#path
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closed
  }

  /** The queue pairs `start()` brings up. */
  get queues(): number {
    return this.#native?.queues ?? this.#options.queues ?? 1
  }

  /** The link as last reported, or null before the first link event. */
  get link(): IavfLink | null {
    const l = this.#native?.link
    return l === undefined || l === null ? null : toLink(l)
  }

  /** The port's MAC (`aa:bb:cc:dd:ee:ff`), or null before `start()` negotiated it. */
  get mac(): string | null {
    return this.#native?.mac ?? null
  }

  /** `'down'` (not started, reset, closed), `'ready'` (negotiated) or `'running'` (queues enabled). */
  get state(): 'down' | 'ready' | 'running' {
    return this.#native?.state ?? 'down'
  }

  /**
   * Connects if needed, then brings the VF up to link-up, emitting a
   * `'step'` event per step and the PF's `'link'` event. Rejects with
   * `ERR_EMUDEV_TIMEOUT`, `ERR_EMUDEV_IAVF_REFUSED` (the PF refused an op:
   * the message names it and the status), `ERR_EMUDEV_IAVF_PROTOCOL`,
   * `ERR_VFU_<ERRNO>`, or `ERR_EMUDEV_CLOSED`.
   */
  async start(): Promise<IavfPortStart> {
    const n = await this.#connect()
    return this.#finish(await n.start())
  }

  /**
   * VIRTCHNL_OP_RESET_VF, then the whole bring-up again with the same
   * options. Rejects with `ERR_EMUDEV_NOT_READY` before `start()`.
   */
  async reset(): Promise<IavfPortStart> {
    const n = await this.#connect()
    return this.#finish(await n.reset())
  }

  /** The VSI's counters (GET_STATS). Rejects with `ERR_EMUDEV_NOT_READY` before `start()`. */
  async stats(): Promise<IavfPortStats> {
    const n = await this.#connect()
    return n.stats()
  }

  /**
   * Sends `frames` (whole Ethernet frames, without FCS) on TX queue `queue`
   * (default 0). Resolves with how many were queued: fewer than given when
   * the ring is full. Rejects with `ERR_EMUDEV_NOT_READY` before `start()`.
   */
  async send(frames: readonly Buffer[], queue = 0): Promise<number> {
    const n = await this.#connect()
    return n.send([...frames], queue)
  }

  /**
   * Received frames from RX queue `queue` (default 0), at most `max`;
   * waits up to `timeoutMs` for the first one (the port's other requests
   * wait meanwhile: use {@link IavfPort.packets} to receive while sending).
   * Resolves with an empty array when none came.
   */
  async receive(options: ReceiveOptions = {}): Promise<Buffer[]> {
    const n = await this.#connect()
    return n.receive(options.queue ?? 0, options.max ?? 32, options.timeoutMs ?? 0)
  }

  /**
   * Every frame received on queue `queue`, as it comes, until the port is
   * closed or `signal` aborts. It looks without waiting natively (so that
   * `send()` and the other requests are never held up behind it) and, while
   * nothing comes, sleeps between looks from 1 ms doubling up to 16 ms.
   */
  packets(options: PacketsOptions = {}): AsyncGenerator<Buffer, void, undefined> {
    const queue = options.queue ?? 0
    return pollFrames(
      () => this.receive({ queue, max: 64 }),
      () => this.#closed || options.signal?.aborted === true,
      () => this.#closed,
    )
  }

  /** The frames of queue 0 (see {@link IavfPort.packets}). */
  [Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    return this.packets()
  }

  /**
   * Runs a testpmd forwarding engine natively on every queue pair (`io`,
   * `macswap`, `rxonly`, `txonly`; `txFirst` bursts of a generated
   * 198.18.0.1 -> 198.19.0.1 UDP frame first) until `durationMs` passes,
   * {@link IavfPort.stopForward} or `close()`. Resolves with its counters;
   * {@link IavfPort.forwardStats} reads them while it runs.
   */
  async forward(options: IavfForwardOptions = {}): Promise<IavfForwardStats> {
    const n = await this.#connect()
    return n.forward(options)
  }

  /** Stops a running {@link IavfPort.forward} (it resolves right after). */
  stopForward(): void {
    this.#native?.stopForward()
  }

  /** The running (or last) forward's counters, or null before the first. */
  forwardStats(): IavfForwardStats | null {
    return this.#native?.forwardStats() ?? null
  }

  /**
   * Shuts the VF down (queues disabled, admin queue off, DMA unmapped) and
   * disconnects. Always resolves; safe to call more than once.
   */
  close(): Promise<void> {
    this.#closed = true
    this.#closing ??= (async () => {
      if (this.#connecting !== undefined) {
        try {
          await this.#connecting
        } catch {
          // Never connected: nothing to close.
        }
      }
      await this.#native?.close()
    })()
    return this.#closing
  }

  #connect(): Promise<NativeIavfPort> {
    if (this.#closed) return Promise.reject(new IavfPortError('IavfPort is closed', PORT_CLOSED_CODE))
    this.#connecting ??= (async () => {
      const n = await native.NativeIavfPort.connect(this.#path, this.#options, (ev) => this.#onEvent(ev))
      this.#native = n
      if (this.#closed) {
        await n.close()
        throw new IavfPortError('IavfPort was closed while connecting', PORT_CLOSED_CODE)
      }
      return n
    })()
    return this.#connecting
  }

  /** Emits the steps of `r` its events have not delivered yet, then resolves with it. */
  #finish(r: IavfStartResult): IavfPortStart {
    const done = this.#emitted.get(r.run) ?? 0
    this.#emitted.delete(r.run)
    this.#lastFinishedRun = Math.max(this.#lastFinishedRun, r.run)
    for (const s of r.steps.slice(done)) this.emit('step', { run: r.run, step: s.step, micros: s.micros, detail: s.detail })
    return {
      link: toLink(r.link),
      mac: r.mac,
      steps: r.steps.map((s) => ({ step: s.step, micros: s.micros, detail: s.detail })),
    }
  }

  #onEvent(ev: IavfPortEvent): void {
    switch (ev.type) {
      case 'step': {
        const run = ev.run ?? 0
        if (run <= this.#lastFinishedRun) return // already emitted from the result
        this.#emitted.set(run, (this.#emitted.get(run) ?? 0) + 1)
        this.emit('step', { run, step: ev.step ?? '', micros: ev.micros ?? 0, detail: ev.detail ?? '' })
        return
      }
      case 'link':
        this.emit('link', { up: ev.up ?? false, speedMbps: ev.speedMbps ?? null, mac: ev.mac ?? '' })
        return
      case 'reset-impending':
        this.emit('reset-impending')
        return
      case 'pf-close':
        this.emit('pf-close')
        return
      case 'event':
        this.emit('event', { code: ev.code ?? 0 })
        return
      case 'error':
        this.emit('error', new IavfPortError(ev.detail ?? 'admin queue watcher failed', 'ERR_EMUDEV_IAVF_WATCH'))
        return
    }
  }
}
